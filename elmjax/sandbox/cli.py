"""`elmjax exec PROGRAM.py [...] --json`: run walker programs in the sandbox, print JSON.

One JSON object per program, in the order given, on stdout:
`{"program": PATH, "ok": true, "joints": n, "muscles": m, "descriptor": {"height", "width",
"mass"}}` or `{"program": PATH, "ok": false, "error": {"kind", "message"}}`. Exit status 0 when
every program ran, 1 when any was rejected. A bad program (or an unreadable file) is a JSON
error object, never a traceback. Imports no JAX.

`--workers N` sets the pool size (`--workers 1` runs a batch's programs in one worker, in
order); `--isolation` writes the OS layers the workers run under (each `active ...`,
`unavailable: why` or `disabled`) to stderr, after any results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from elmjax.sandbox import Limits, run_programs
from elmjax.sandbox.pool import shared_pool

#: What the Sodarace programs get in their globals.
WALKER_INJECT = {"walker_creator": "elmjax.sodarace.walker:walker_creator"}
WALKER_CHECK = "elmjax.sodarace.walker:check_walker"


def exec_command(args: argparse.Namespace) -> int:
    """Handler of `elmjax exec` (see the module docstring); returns the exit status."""
    limits = Limits()
    if args.timeout is not None:
        if not args.timeout > 0:
            print(json.dumps({"ok": False, "error": _error("invalid", "--timeout must be > 0")}))
            return 1
        limits = dataclasses.replace(
            limits, wall_seconds=args.timeout, cpu_seconds=min(limits.cpu_seconds, args.timeout)
        )
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        print(json.dumps({"ok": False, "error": _error("invalid", "--workers must be >= 1")}))
        return 1
    if not args.programs and not getattr(args, "isolation", False):
        print(json.dumps({"ok": False, "error": _error("invalid", "no program files given")}))
        return 1
    wanted = workers if workers is not None else limits.workers
    limits = dataclasses.replace(limits, workers=max(1, min(wanted, len(args.programs) or 1)))

    status = 0
    if args.programs:
        outputs, _ = run_walker_files(args.programs, limits)
        for out in outputs:
            sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        status = 0 if all(out["ok"] for out in outputs) else 1
    if getattr(args, "isolation", False):
        status = max(status, print_isolation(limits))
    return status


def print_isolation(limits: Limits) -> int:
    """Write the workers' isolation layers to stderr, one `layer: state` line each (the pool's
    first worker reports them as it starts). 0, or 1 if the sandbox could not start."""
    try:
        layers = shared_pool(limits, WALKER_CHECK, WALKER_INJECT).isolation
    except Exception as exc:  # the sandbox itself failed (environment), not a program
        sys.stderr.write(f"sandbox isolation: could not start a worker ({type(exc).__name__})\n")
        return 1
    width = max(map(len, layers), default=0)
    for name, state in layers.items():
        sys.stderr.write(f"sandbox isolation: {name:<{width}}  {state}\n")
    sys.stderr.flush()
    return 0


def run_walker_files(
    paths: list[str], limits: Limits
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Run the walker programs in `paths` in the sandbox.

    Returns exec's JSON object for every path, in order, and the checked walker (the paper's
    dict form plus its descriptor) of each program that ran, by position. `elmjax simulate`
    builds on both, so the two commands read, sandbox and report programs the same way.
    """
    outputs: list[dict[str, Any]] = [{} for _ in paths]
    walkers: dict[int, dict[str, Any]] = {}
    sources: list[str] = []
    slots: list[int] = []
    for k, path in enumerate(paths):
        text, problem = _read(path, limits.max_source_bytes)
        if problem is not None:
            outputs[k] = {"program": path, "ok": False, "error": _error("invalid", problem)}
        else:
            sources.append(text)
            slots.append(k)
    if not sources:
        return outputs, walkers
    try:
        results = run_programs(
            sources, "make_walker", WALKER_CHECK, limits=limits, inject=WALKER_INJECT
        )
    except Exception as exc:  # the sandbox itself failed (environment), not a program
        message = f"sandbox failed: {type(exc).__name__}: {exc}"[:400]
        for k in slots:
            outputs[k] = {"program": paths[k], "ok": False, "error": _error("crashed", message)}
        return outputs, walkers
    for result, k in zip(results, slots):
        if result.ok:
            value = walkers[k] = result.value
            outputs[k] = {
                "program": paths[k],
                "ok": True,
                "joints": len(value["joints"]),
                "muscles": len(value["muscles"]),
                "descriptor": value["descriptor"],
            }
        else:
            outputs[k] = {"program": paths[k], "ok": False, "error": result.error.to_dict()}
    return outputs, walkers


def seed_names() -> tuple[str, ...]:
    """The seed programs a command accepts by name (`elmjax simulate square`)."""
    from elmjax.sodarace.seeds import ELM_SEEDS, HAND_DESIGNED

    return ELM_SEEDS + HAND_DESIGNED


def _read(path: str, max_bytes: int) -> tuple[str, str | None]:
    """(text, None), or ("", why the file cannot be used). Reads at most max_bytes + 1 bytes, so
    a huge file is rejected by the sandbox's size rule without being read whole. A seed's name
    that is not also a file here reads that seed."""
    if path in seed_names() and not os.path.exists(path):
        from elmjax.sodarace.seeds import load_seed

        return load_seed(path), None
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return "", f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except FileNotFoundError:
        return "", f"cannot read {path}: no such file (nor a seed: {', '.join(seed_names())})"
    except OSError as exc:
        return "", f"cannot read {path}: {exc.strerror or type(exc).__name__}"


def _error(kind: str, message: str) -> dict[str, str]:
    return {"kind": kind, "message": message}
