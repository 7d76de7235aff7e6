"""`elmjax simulate PROGRAM.py [...] [--terrain NAME] [--seconds S] [--json] [--gif FILE]`.

Runs the programs in the sandbox exactly as `elmjax exec` does, then simulates every walker that
came back with the same evaluation as an ELM run (`Sodarace.evaluate`). One JSON object per
program on stdout: exec's object plus `fitness`, `dx` (centre-of-mass travel along x, units),
`valid` and `bone_error`; a walker that exploded is `{"ok": false, "error": {"kind": "invalid",
...}}`. Exit status 0 when every program ran and simulated, 1 otherwise. `--gif FILE` animates
the first program's run. The sandbox runs before JAX is imported.
"""

from __future__ import annotations

import argparse
import json
import sys

from elmjax.sandbox import Limits
from elmjax.sandbox.cli import run_walker_files


def simulate_command(args: argparse.Namespace) -> int:
    """Handler of `elmjax simulate`; returns the exit status."""
    seconds = 10.0 if args.seconds is None else args.seconds
    terrain_name = getattr(args, "terrain", "flat") or "flat"
    from elmjax.sodarace.terrain import TERRAINS

    problem = None
    if not (0.0 < seconds <= 600.0):
        problem = f"--seconds must be in (0, 600], got {seconds}"
    elif terrain_name.lower().replace("-", "_") not in TERRAINS:
        problem = f"unknown terrain {terrain_name!r}; choose one of {sorted(TERRAINS)}"
    if problem is not None:
        print(json.dumps({"ok": False, "error": {"kind": "invalid", "message": problem}}))
        return 1

    outputs, walkers = run_walker_files(args.programs, Limits())

    if walkers:
        from elmjax.sodarace.env import Sodarace
        from elmjax.sodarace.physics import SimParams

        params = SimParams(seconds=seconds)
        env = Sodarace(terrain=terrain_name, params=params)
        order = sorted(walkers)
        ev = env.evaluate([walkers[k] for k in order])
        for n, k in enumerate(order):
            path = args.programs[k]
            if ev.valid[n]:
                outputs[k] = {
                    **outputs[k],
                    "fitness": float(ev.fitness[n]),
                    "dx": float(ev.extras["dx"][n]),
                    "bone_error": float(ev.extras["bone_error"][n]),
                    "terrain": env.terrain.name,
                    "seconds": seconds,
                }
            else:
                outputs[k] = {
                    "program": path,
                    "ok": False,
                    "error": {"kind": "invalid", "message": ev.error[n] or "invalid"},
                }
        if args.gif:
            from elmjax.viz.walker_gif import render_gif

            first = order[0]
            render_gif(
                walkers[first],
                args.gif,
                terrain=terrain_name,
                seconds=seconds,
                params=params,
                title=str(args.programs[first]).rsplit("/", 1)[-1],
            )

    for out in outputs:
        sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if all(out["ok"] for out in outputs) else 1
