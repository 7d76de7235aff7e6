"""`elmjax simulate PROGRAM [...] [--terrain NAME] [--seconds S] [--physics KEY=VALUE ...]
[--json] [--gif FILE]`.

Runs the programs in the sandbox exactly as `elmjax exec` does, then simulates every walker that
came back with the same evaluation as an ELM run (`Sodarace.evaluate`). A PROGRAM is a file
defining `make_walker()` or a seed's name (`elmjax simulate square`). Without `--json` each
program gets a few readable lines (what it is, how far it went, in units and metres); with
`--json`, one JSON object per program on stdout: exec's object plus `fitness`, `dx`
(centre-of-mass travel along x, units), `valid` and the physical diagnostics
`airborne_fraction`, `peak_speed` (units/s), `bone_error` and `muscle_work` (per unit mass), all
top-level floats. A walker that was simulated and found invalid keeps its diagnostics and gets
`{"ok": false, "error": {"kind": "invalid", "reason": "exploded" | "bone_error" |
"disconnected" | "invalid walker", "message": ...}}`. `--physics KEY=VALUE` (repeatable)
overrides any `SimParams` field (`--physics substeps=12`); `--seconds S` is `--physics
seconds=S`. Exit status 0 when every program ran and simulated, 1 otherwise. `--gif FILE` animates the first program that ran and says on stderr
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
    overrides: dict[str, str] = {}
    for item in getattr(args, "physics", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problem = f"--physics takes KEY=VALUE, got {item!r}"
            break
        overrides[key.strip()] = value.strip()
    if problem is not None:
        pass
    elif not (0.0 < seconds <= 600.0):
        problem = f"--seconds must be in (0, 600], got {seconds}"
    elif normal_terrain(terrain_name) not in TERRAIN_NAMES:
        problem = f"unknown terrain {terrain_name!r}; choose one of: {', '.join(TERRAIN_NAMES)}"
    if problem is not None:
        return _refuse(problem, as_json)

    outputs, walkers = run_walker_files(args.programs, Limits())
    problem = _check_physics(overrides, seconds)  # after the sandbox: it imports JAX
    if problem is not None:
        return _refuse(problem, as_json)

    if walkers:
        from elmjax.sodarace import env as env_lib
        from elmjax.sodarace.params import SimParams, with_overrides

        params = with_overrides(SimParams(seconds=seconds), overrides)
        env = env_lib.Sodarace(terrain=terrain_name, params=params)
        order = sorted(walkers)
        ev = env.evaluate([walkers[k] for k in order])
        for n, k in enumerate(order):
            path = args.programs[k]
            diag = {name: float(ev.extras[name][n]) for name in env_lib.DIAGNOSTICS}
            if ev.valid[n]:
                outputs[k] = {
                    **outputs[k],
                    "fitness": float(ev.fitness[n]),
                    "dx": float(ev.extras["dx"][n]),
                    "valid": True,
                    **diag,
                    "terrain": env.terrain.name,
                    "seconds": params.seconds,
                }
            else:
                message = ev.error[n] or "invalid"
                outputs[k] = {
                    "program": path,
                    "ok": False,
                    "valid": False,
                    **diag,
                    "error": {
                        "kind": "invalid",
                        "reason": message.split(":", 1)[0],
                        "message": message,
                    },
                }
        if args.gif:
            from elmjax.viz.walker_gif import DEFAULT_FPS, render_gif

            first = order[0]
            name = str(args.programs[first]).rsplit("/", 1)[-1]
            written = render_gif(
                walkers[first],
                args.gif,
                terrain=terrain_name,
                seconds=params.seconds,
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
        line = f"{name}: rejected ({error.get('kind', '?')}): {error.get('message', '')}"
        shown = [fmt.format(out[key]) for key, fmt in DIAGNOSTICS if _number(out.get(key))]
        return line + ("\n  " + ", ".join(shown) if shown else "")
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


def _refuse(problem: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": False, "error": {"kind": "invalid", "message": problem}}))
    else:
        print(f"elmjax simulate: {problem}", file=sys.stderr)
    return 1


def _check_physics(overrides: dict[str, str], seconds: float) -> str | None:
    """The problem with `--physics` overrides, or None."""
    if not overrides:
        return None
    from elmjax.sodarace.params import SimParams, with_overrides

    try:
        with_overrides(SimParams(seconds=seconds), overrides)
    except ValueError as e:
        return str(e)
    return None
