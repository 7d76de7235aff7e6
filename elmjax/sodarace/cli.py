"""`elmjax simulate PROGRAM [...] [--terrain NAME] [--seconds S] [--json] [--gif FILE]`.

Runs the programs in the sandbox exactly as `elmjax exec` does, then simulates every walker that
came back with the same evaluation as an ELM run (`Sodarace.evaluate`). A PROGRAM is a file
defining `make_walker()` or a seed's name (`elmjax simulate square`). Without `--json` each
program gets a few readable lines (what it is, how far it went, in units and metres); with
`--json`, one JSON object per program on stdout: exec's object plus `fitness`, `dx`
(centre-of-mass travel along x, units), `valid` and `bone_error`; a walker that exploded is
`{"ok": false, "error": {"kind": "invalid", ...}}`. Exit status 0 when every program ran and
simulated, 1 otherwise. `--gif FILE` animates the first program that ran and says on stderr
what it wrote. The sandbox runs before JAX is imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from elmjax.config import TERRAIN_NAMES, normal_terrain
from elmjax.sandbox import Limits
from elmjax.sandbox.cli import run_walker_files

#: walker coordinates are "units"; one unit reads as 0.1 m (`elmjax.sodarace.physics`).
UNITS_PER_METRE = 10.0
#: physical diagnostics an evaluation may report, with how to show them (name, format).
DIAGNOSTICS = (
    ("airborne_fraction", "airborne {:.0%} of frames"),
    ("peak_speed", "peak speed {:.1f} units/s"),
    ("bone_error", "bone error {:.2%}"),
    ("muscle_work", "muscle work {:.3g} per unit mass"),
)


def simulate_command(args: argparse.Namespace) -> int:
    """Handler of `elmjax simulate`; returns the exit status."""
    seconds = 10.0 if args.seconds is None else args.seconds
    terrain_name = getattr(args, "terrain", "flat") or "flat"
    as_json = bool(getattr(args, "json", False))

    problem = None
    if not (0.0 < seconds <= 600.0):
        problem = f"--seconds must be in (0, 600], got {seconds}"
    elif normal_terrain(terrain_name) not in TERRAIN_NAMES:
        problem = f"unknown terrain {terrain_name!r}; choose one of: {', '.join(TERRAIN_NAMES)}"
    if problem is not None:
        if as_json:
            print(json.dumps({"ok": False, "error": {"kind": "invalid", "message": problem}}))
        else:
            print(f"elmjax simulate: {problem}", file=sys.stderr)
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
            from elmjax.viz.walker_gif import DEFAULT_FPS, render_gif

            first = order[0]
            name = str(args.programs[first]).rsplit("/", 1)[-1]
            written = render_gif(
                walkers[first],
                args.gif,
                terrain=terrain_name,
                seconds=seconds,
                params=params,
                title=name,
            )
            print(
                f"elmjax simulate: wrote {written} ({name}, {seconds:g} simulated s at "
                f"{DEFAULT_FPS} frames/s, plays in real time)",
                file=sys.stderr,
            )
    elif args.gif:
        print(f"elmjax simulate: no walker ran, so no {args.gif} was written", file=sys.stderr)

    for out in outputs:
        sys.stdout.write((json.dumps(out) if as_json else describe(out)) + "\n")
    sys.stdout.flush()
    return 0 if all(out["ok"] for out in outputs) else 1


def describe(out: dict[str, Any]) -> str:
    """A program's result as a person reads it: what it is, how far it went, what went wrong.

    Shows the physical diagnostics (`DIAGNOSTICS`) that the evaluation reported, if any."""
    name = out.get("program", "?")
    if not out.get("ok"):
        error = out.get("error", {})
        return f"{name}: rejected ({error.get('kind', '?')}): {error.get('message', '')}"
    d = out.get("descriptor", {})
    lines = [f"{name}: {out.get('joints', '?')} joints, {out.get('muscles', '?')} connections"]
    if d:
        lines[0] += (
            f"; height {d.get('height', float('nan')):.1f}, width "
            f"{d.get('width', float('nan')):.1f} units, mass {d.get('mass', float('nan')):.1f}"
        )
    if "dx" in out:
        dx = out["dx"]
        lines.append(
            f"  moved {dx:+.1f} units ({dx / UNITS_PER_METRE:+.2f} m) in {out['seconds']:g} s "
            f"on {out['terrain']} terrain; fitness {out['fitness']:.2f}"
        )
    shown = [fmt.format(out[key]) for key, fmt in DIAGNOSTICS if _number(out.get(key))]
    if shown:
        lines.append("  " + ", ".join(shown))
    return "\n".join(lines)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
