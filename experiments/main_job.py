"""The main job side by side: `elmjax evolve` with its defaults, with the LM and with GP.

    python experiments/main_job.py --minutes 10 --out runs/main_job [--json PATH] [--png PATH]

Runs `elmjax evolve` twice, one after the other so each has the machine to itself: the defaults
(the `diff` operator on the embedded `elm-tiny`), and the same config with `--operator gp`; each
for `--minutes` of wall clock (`--set time_limit=`). Then it reads both runs' `metrics.jsonl`
and reports

- at equal evaluations (the fair comparison of mutation operators: how much each evaluation
  buys): cells filled, QD score, valid share and cells per evaluation of both runs at the LM
  run's last evaluation count (GP's curve read at the same count), and the curves of cells
  against evaluations (`--png`);
- at equal wall clock (what a user gets in the same time): the same figures at the time limit.

Extra `--set key=value` pairs go to both runs. Start-up (model load, compilation) is inside
the time limit, as it is for a user; the report is not written (`--set report=false`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"lm": [], "gp": ["--operator", "gp"]}


def run_arm(name: str, out: Path, minutes: float, extra: list[str]) -> float:
    """One `elmjax evolve` run; returns its wall time."""
    cmd = [sys.executable, "-m", "elmjax.cli", "evolve", "--out", str(out), "--force",
           *ARMS[name], "--set", f"time_limit={minutes}m", "--set", "report=false",
           "--set", "progress=never"]  # fmt: skip
    for kv in extra:
        cmd += ["--set", kv]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - t0


def curve(out: Path) -> list[dict]:
    rows = []
    with open(out / "metrics.jsonl") as f:
        for line in f:
            if line.strip():
                m = json.loads(line)
                rows.append(
                    {
                        "evaluations": m["evaluations"],
                        "cells": m["num_filled"],
                        "qd_score": m["qd_score"],
                        "valid_total": m.get("valid_rate_total"),
                        "elapsed": m["elapsed"],
                    }
                )
    return rows


def at_evaluations(rows: list[dict], evaluations: int) -> dict:
    """The last row at or before `evaluations` (curves are step functions of evaluations)."""
    before = [r for r in rows if r["evaluations"] <= evaluations]
    return before[-1] if before else rows[0]


def summary(row: dict) -> dict:
    return {
        "evaluations": row["evaluations"],
        "cells": row["cells"],
        "qd_score": row["qd_score"],
        "valid_pct": None if row["valid_total"] is None else 100 * row["valid_total"],
        "cells_per_evaluation": row["cells"] / max(row["evaluations"], 1),
        "elapsed_s": row["elapsed"],
    }


def compare(curves: dict[str, list[dict]]) -> dict:
    lm, gp = curves["lm"], curves["gp"]
    n = lm[-1]["evaluations"]
    equal_evals = {"lm": summary(lm[-1]), "gp": summary(at_evaluations(gp, n))}
    equal_wall = {"lm": summary(lm[-1]), "gp": summary(gp[-1])}
    ratios = {
        "cells_per_eval_lm_vs_gp": equal_evals["lm"]["cells_per_evaluation"]
        / max(equal_evals["gp"]["cells_per_evaluation"], 1e-9),
        "cells_same_wall_lm_vs_gp": equal_wall["lm"]["cells"] / max(equal_wall["gp"]["cells"], 1),
    }
    return {"equal_evaluations": equal_evals, "equal_wall_clock": equal_wall, "ratios": ratios}


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in curves.items():
        label = {"lm": "diff (elm-tiny)", "gp": "gp"}[name]
        axes[0].plot([r["evaluations"] for r in rows], [r["cells"] for r in rows], label=label)
        axes[1].plot([r["elapsed"] for r in rows], [r["cells"] for r in rows], label=label)
    axes[0].set(xlabel="evaluations", ylabel="cells filled", title="at equal evaluations")
    axes[1].set(xlabel="wall clock (s)", ylabel="cells filled", title="at equal wall clock")
    lm_evals = curves["lm"][-1]["evaluations"]
    axes[0].set_xlim(0, max(lm_evals * 1.5, 10))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def table(result: dict) -> str:
    lines = [
        "| comparison | operator | evaluations | cells | QD score | valid % | cells / evaluation |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, title in (("equal_evaluations", "equal evaluations"),
                       ("equal_wall_clock", "equal wall clock")):  # fmt: skip
        for arm, s in result[key].items():
            valid = "n/a" if s["valid_pct"] is None else f"{s['valid_pct']:.1f}"
            lines.append(
                f"| {title} | {'diff (elm-tiny)' if arm == 'lm' else 'gp'} | {s['evaluations']} "
                f"| {s['cells']} | {s['qd_score']:.1f} | {valid} | "
                f"{s['cells_per_evaluation']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="wall clock per run")
    p.add_argument("--out", default=str(ROOT / "runs" / "main_job"))
    p.add_argument("--arms", default="lm,gp")
    p.add_argument("--json", default=None)
    p.add_argument("--png", default=None)
    p.add_argument("--reuse", action="store_true", help="read existing runs, do not rerun")
    p.add_argument("--set", dest="extra", action="append", default=[])
    args = p.parse_args(argv)
    out = Path(args.out)
    load = os.getloadavg()
    walls = {}
    for arm in args.arms.split(","):
        if not args.reuse:
            walls[arm] = run_arm(arm, out / arm, args.minutes, args.extra)
    curves = {arm: curve(out / arm) for arm in ("lm", "gp")}
    result = compare(curves)
    result.update(
        command=" ".join(["python", "experiments/main_job.py", *(argv or sys.argv[1:])]),
        date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        load_average_start=load,
        load_average_end=os.getloadavg(),
        wall_seconds=walls,
        curves=curves,
    )
    print(table(result))
    print(json.dumps(result["ratios"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.png:
        plot(curves, Path(args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
