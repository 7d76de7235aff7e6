"""Does online fine-tuning help? Runs with and without `mutation.finetune_every` at one budget.

    python experiments/online_finetune.py --budget 257 --seeds 0,1,2 --out runs/online_ft \\
        [--every 2 --delay 1 --steps 10] [--json PATH] [--set key=value ...]

For each seed, two `elmjax evolve` runs with the default config at the same evaluation budget:
`finetune_every: 0` (off) and `finetune_every: N`. Reported per arm (mean over seeds): cells
filled and QD score at the budget, and the valid share and new-cell share of the children of
the generations after the first fine-tuned weights are in use (where the arms can differ), with
the per-generation rates of every run in the JSON, and a table of the per-generation rates
(mean over seeds) on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def run(
    out: Path, seed: int, budget: int, finetune: list[str], extra: list[str], reuse: bool = False
) -> list[dict]:
    """One `elmjax evolve` run (or, with `reuse`, the one already in `out`); its metrics rows."""
    if reuse:
        return read_metrics(out)
    cmd = [sys.executable, "-m", "elmjax.cli", "evolve", "--out", str(out), "--force",
           "--set", f"seed={seed}", "--set", f"budget={budget}", "--set", "time_limit=null",
           "--set", "report=false", "--set", "progress=never"]  # fmt: skip
    for kv in finetune + extra:
        cmd += ["--set", kv]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return read_metrics(out)


def read_metrics(out: Path) -> list[dict]:
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def generation_table(by_generation: dict[str, dict[int, dict[str, float]]], first_used: int) -> str:
    """Markdown: valid share and new cells per valid child of each generation, mean over seeds,
    per arm (generations from `first_used` on use fine-tuned weights in the `on` arm)."""
    arms = list(by_generation)
    gens = sorted({g for rates in by_generation.values() for g in rates})
    head = "| generation | " + " | ".join(f"valid {a} | new/valid {a}" for a in arms) + " |"
    lines = [head, "|---" * (1 + 2 * len(arms)) + "|"]
    for g in gens:
        cells = []
        for a in arms:
            r = by_generation[a].get(g, {})
            cells += [f"{100 * r.get('valid', float('nan')):.1f}%",
                      f"{100 * r.get('new_per_valid', float('nan')):.1f}%"]  # fmt: skip
        mark = " (tuned)" if g >= first_used else ""
        lines.append(f"| {g}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=257)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--delay", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "runs" / "online_ft"))
    p.add_argument("--json", default=None)
    p.add_argument("--set", dest="extra", action="append", default=[])
    p.add_argument("--reuse", action="store_true", help="read the runs in --out, do not rerun")
    args = p.parse_args(argv)
    arms = {
        "off": ["mutation.finetune_every=0"],
        "on": [
            f"mutation.finetune_every={args.every}",
            f"mutation.finetune_delay={args.delay}",
            f"mutation.finetune_steps={args.steps}",
        ],  # fmt: skip
    }
    load = os.getloadavg()
    runs: dict[str, dict[int, list[dict]]] = {arm: {} for arm in arms}
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm, sets in arms.items():  # interleaved: both arms see the same machine
            runs[arm][seed] = run(Path(args.out) / f"{arm}-s{seed}", seed, args.budget, sets,
                                  args.extra, args.reuse)  # fmt: skip
    first_used = args.every + args.delay  # the first generation with fine-tuned weights
    summary = {}
    by_generation: dict[str, dict[int, dict[str, float]]] = {}
    for arm, by_seed in runs.items():
        valid, new = [], []
        table: dict[int, dict[str, list[float]]] = {}
        for rows in by_seed.values():
            for prev, m in zip(rows, rows[1:]):
                n = m["evaluations"] - prev["evaluations"]  # children in this generation
                rates = table.setdefault(m["generation"], {"valid": [], "new_per_valid": []})
                rates["valid"].append(m["valid_rate"])
                if m["valid_rate"]:
                    rates["new_per_valid"].append(m["new_cells"] / (m["valid_rate"] * n))
                if m["generation"] < first_used:
                    continue
                valid.append(m["valid_rate"])
                if m["valid_rate"]:
                    new.append(m["new_cells"] / (m["valid_rate"] * n))
        by_generation[arm] = {
            g: {k: float(np.mean(v)) if v else float("nan") for k, v in rates.items()}
            for g, rates in sorted(table.items())
        }
        summary[arm] = {
            "cells": float(np.mean([rows[-1]["num_filled"] for rows in by_seed.values()])),
            "qd_score": float(np.mean([rows[-1]["qd_score"] for rows in by_seed.values()])),
            "valid_rate_after_first_finetune": float(np.mean(valid)) if valid else None,
            "new_cells_per_valid_after_first_finetune": float(np.mean(new)) if new else None,
            "cells_per_seed": [rows[-1]["num_filled"] for rows in by_seed.values()],
        }
    result = {
        "command": " ".join(["python", "experiments/online_finetune.py", *(argv or sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "summary": summary,
        "per_generation": {
            arm: {
                seed: [
                    {
                        k: m.get(k)
                        for k in (
                            "generation",
                            "valid_rate",
                            "new_cells",
                            "num_filled",
                            "lm_weights",
                        )
                    }
                    for m in rows
                ]  # fmt: skip
                for seed, rows in by_seed.items()
            }
            for arm, by_seed in runs.items()
        },
    }
    result["per_generation_mean"] = by_generation
    print(json.dumps(summary, indent=1))
    print(generation_table(by_generation, first_used))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
