"""Stage 1 of the ELM paper at this machine's scale: what each seed x operator finds.

The paper (Lehman et al. 2022, section 4) runs MAP-Elites from each of four seed programs
(Square, Radial, CPPN-Fixed, CPPN-Mutable) with a mutation operator (GP, the diff model, a plain
code model prompted for a new version) and compares niches filled and QD score against
evaluations; then fine-tunes the diff model on the diffs that entered the archive and runs again.

    python experiments/stage1.py run --arm gp                 # 4 seeds x 3 random seeds
    python experiments/stage1.py run --arm diff --budget 2000 # a reduced budget (labelled)
    python experiments/stage1.py run --arm prompt             # SmolLM2, 1,000 evaluations
    python experiments/stage1.py improve                      # fine-tune elm-tiny on accepted diffs
    python experiments/stage1.py run --arm diff_ft            # ... and run again with it
    python experiments/stage1.py report                       # curves, archives, tables

Every run is a normal run directory `OUT/ARM-SEED-sN` made by `elmjax evolve` (one subprocess per
run, so a crash or a kill loses at most that run's last generation). The script is incremental:
a run that reached its budget is skipped, a run that stopped early is continued with
`elmjax evolve --resume` (exactly: a resumed run equals an uninterrupted one), so the arms can be
run in pieces, on different days, and `report` draws whatever is there. Budgets: 10,000
evaluations per gp / diff run and 1,000 for the SmolLM2 prompt arm (the clarification of issue
16); `--budget` runs an arm at another budget and every table labels the budget each run had.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "experiments" / "configs"
SEEDS = ("square", "radial", "cppn_fixed", "cppn_mutable")
RANDOM_SEEDS = (0, 1, 2)
#: arm -> (config file, operator, model). `diff_ft` uses the model `improve` writes.
ARMS = {
    "gp": ("stage1.yaml", "gp", None),
    "diff": ("stage1.yaml", "diff", "elm-tiny"),
    "prompt": ("stage1_prompt.yaml", "prompt", "smollm2-135m"),
    "diff_ft": ("stage1.yaml", "diff", "{out}/models/elm-tiny-ft"),
}
#: the budget of each arm by the clarification of issue 16.
BUDGETS = {"gp": 10_000, "diff": 10_000, "prompt": 1_000, "diff_ft": 10_000}


@dataclass(frozen=True)
class Run:
    arm: str
    seed: str
    random_seed: int
    out: Path

    @property
    def path(self) -> Path:
        return self.out / f"{self.arm}-{self.seed}-s{self.random_seed}"


def last_row(path: Path) -> dict | None:
    metrics = path / "metrics.jsonl"
    if not metrics.exists():
        return None
    rows = [line for line in metrics.read_text().splitlines() if line.strip()]
    for line in reversed(rows):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def budget_of(path: Path) -> int | None:
    """The budget a run directory was made with (its config.yaml)."""
    import yaml

    cfg = path / "config.yaml"
    if not cfg.exists():
        return None
    return int(yaml.safe_load(cfg.read_text()).get("budget", 0))


def is_finished(path: Path, budget: int) -> bool:
    row = last_row(path)
    return row is not None and int(row.get("evaluations", 0)) >= budget


def evolve_command(run: Run, budget: int) -> list[str]:
    config, operator, model = ARMS[run.arm]
    cmd = [sys.executable, "-m", "elmjax.cli", "evolve"]
    if (run.path / "config.yaml").exists() and last_row(run.path) is not None:
        # continue exactly; `budget` is one of the keys --resume may change
        return cmd + ["--resume", str(run.path), "--set", f"budget={budget}"]
    cmd += ["--config", str(CONFIGS / config), "--out", str(run.path), "--force"]
    cmd += ["--operator", operator, "--seed-program", run.seed]
    cmd += ["--set", f"seed={run.random_seed}", "--set", f"budget={budget}"]
    if model is not None:
        cmd += ["--model", model.format(out=run.out)]
    return cmd


def execute(run: Run, budget: int, nice: int) -> tuple[Run, int, float]:
    if is_finished(run.path, budget):
        print(f"[stage1] {run.path.name}: finished ({budget:,} evaluations), skipped", flush=True)
        return run, 0, 0.0
    cmd = evolve_command(run, budget)
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    run.out.mkdir(parents=True, exist_ok=True)
    log = run.out / f"{run.path.name}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(f"[stage1] {run.path.name}: {' '.join(cmd[-12:])}", flush=True)
    t0 = time.monotonic()
    with log.open("a") as handle:
        rc = subprocess.call(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.monotonic() - t0
    row = last_row(run.path) or {}
    print(
        f"[stage1] {run.path.name}: exit {rc}, {row.get('evaluations', 0):,} evaluations, "
        f"{row.get('num_filled', 0)} niches, {seconds:.0f} s (log {log})",
        flush=True,
    )
    return run, rc, seconds


def run_arm(args: argparse.Namespace) -> int:
    out = Path(args.out)
    budget = args.budget or BUDGETS[args.arm]
    if args.arm == "diff_ft" and not (out / "models" / "elm-tiny-ft" / "config.json").exists():
        print("[stage1] diff_ft needs the fine-tuned model: run `stage1.py improve` first")
        return 2
    # random seed first, so a partial arm covers every seed program
    runs = [Run(args.arm, seed, rs, out) for rs in args.random_seeds for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda r: execute(r, budget, args.nice), runs))
    failed = [r.path.name for r, rc, _ in results if rc not in (0,)]
    if failed:
        print(f"[stage1] runs that exited non-zero: {', '.join(failed)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or continue) one arm's runs; finished runs are skipped")
    p.add_argument("--arm", choices=sorted(ARMS), required=True)
    p.add_argument(
        "--budget", type=int, default=None, help="evaluations per run (default: the arm's)"
    )
    p.add_argument("--seeds", type=lambda s: tuple(s.split(",")), default=SEEDS)
    p.add_argument(
        "--random-seeds", type=lambda s: tuple(int(x) for x in s.split(",")), default=RANDOM_SEEDS
    )
    p.add_argument("--out", default=str(ROOT / "runs" / "stage1"))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--nice", type=int, default=10, help="nice level of each run (0: none)")
    p = sub.add_parser("improve", help="fine-tune the diff model on the diffs that entered")
    p.add_argument("--out", default=str(ROOT / "runs" / "stage1"))
    p = sub.add_parser("report", help="curves, archives and tables of every run there is")
    p.add_argument("--out", default=str(ROOT / "runs" / "stage1"))
    p.add_argument("--figures", default=str(ROOT / "experiments" / "figures" / "stage1"))
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_arm(args)
    if args.command == "improve":
        from stage1_improve import improve  # noqa: PLC0415  (experiments/ is not a package)

        return improve(args)
    from stage1_report import report  # noqa: PLC0415

    return report(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
