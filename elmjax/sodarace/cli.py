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
from typing import Any

from elmjax.sandbox import Limits, run_programs
from elmjax.sandbox.cli import WALKER_CHECK, WALKER_INJECT, _read


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

    limits = Limits()
    outputs: list[dict[str, Any] | None] = [None] * len(args.programs)
    sources, slots = [], []
    for k, path in enumerate(args.programs):
        text, why = _read(path, limits.max_source_bytes)
        if why is not None:
            outputs[k] = {
                "program": path,
                "ok": False,
                "error": {"kind": "invalid", "message": why},
            }
        else:
            sources.append(text)
            slots.append(k)
    walkers: dict[int, dict[str, Any]] = {}
    if sources:
        try:
            results = run_programs(
                sources, "make_walker", WALKER_CHECK, limits=limits, inject=WALKER_INJECT
            )
        except Exception as exc:  # the sandbox itself failed, not a program
            results = None
            message = f"sandbox failed: {type(exc).__name__}: {exc}"[:400]
        for n, k in enumerate(slots):
            path = args.programs[k]
            if results is None:
                outputs[k] = {
                    "program": path,
                    "ok": False,
                    "error": {"kind": "crashed", "message": message},
                }
            elif results[n].ok:
                walkers[k] = results[n].value
            else:
                outputs[k] = {"program": path, "ok": False, "error": results[n].error.to_dict()}

    if walkers:
        from elmjax.sodarace.env import Sodarace
        from elmjax.sodarace.physics import SimParams

        params = SimParams(seconds=seconds)
        env = Sodarace(terrain=terrain_name, params=params)
        order = sorted(walkers)
        ev = env.evaluate([walkers[k] for k in order])
        for n, k in enumerate(order):
            value, path = walkers[k], args.programs[k]
            if ev.valid[n]:
                outputs[k] = {
                    "program": path,
                    "ok": True,
                    "joints": len(value["joints"]),
                    "muscles": len(value["muscles"]),
                    "descriptor": value["descriptor"],
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
