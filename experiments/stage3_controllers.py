"""Closed-loop controllers for an evolved body (issue 17, "beyond the paper").

Takes the best walker of a stage-1 run (`elmjax evolve` run directory: its best valid program,
rerun through the sandbox) or a seed, and compares on flat ground and each terrain the distance
of its own open-loop muscles with a controller trained by Brax's PPO and one trained by APG
(`elmjax.rl.controllers`). Writes a JSON table.

    nice -n 10 python experiments/stage3_controllers.py --run RUN_DIR \
        --terrains flat,left_wall,right_wall,tunnel,bumpy --json experiments/figures/stage3_controllers.json
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time

from elmjax.evaluation import sandbox_programs
from elmjax.rl.controllers import ControllerBudget, compare
from elmjax.sodarace.env import Sodarace
from elmjax.sodarace.seeds import load_seed


def best_program(run: str) -> tuple[int, float, str]:
    db = sqlite3.connect(f"file:{os.path.join(run, 'programs.sqlite')}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT program_id, fitness, text FROM programs WHERE valid = 1 "
            "ORDER BY fitness DESC, program_id LIMIT 1"
        ).fetchone()
    finally:
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default=None, help="an evolve run dir (default: use --seed)")
    ap.add_argument("--seed-program", default="galloper")
    ap.add_argument("--terrains", default="flat,left_wall,right_wall,tunnel,bumpy")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--ppo-timesteps", type=int, default=20_000)
    ap.add_argument("--apg-updates", type=int, default=10)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    if args.run:
        pid, fitness, text = best_program(args.run)
        source = {"run": args.run, "program_id": pid, "stage1_fitness": fitness}
    else:
        text = load_seed(args.seed_program)
        source = {"seed": args.seed_program}
    res = sandbox_programs([text], Sodarace(), [0])[0]
    if not res.ok:
        raise SystemExit(f"the body's program does not run: {res.error}")
    budget = ControllerBudget(
        seconds=args.seconds, ppo_timesteps=args.ppo_timesteps, apg_updates=args.apg_updates
    )
    t0 = time.time()

    def write(rows: list) -> None:
        out = {
            "body": source,
            "joints": len(res.value["joints"]),
            "muscles": len(res.value["muscles"]),
            "budget": budget.__dict__,
            "rows": rows,
            "wall_seconds": time.time() - t0,
            "load_average": os.getloadavg(),
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(json.dumps(rows[-1]), flush=True)

    compare(res.value, args.terrains.split(","), budget, on_row=write)


if __name__ == "__main__":
    main()
