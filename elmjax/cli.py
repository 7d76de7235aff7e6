"""The `elmjax` command: a thin layer over the Python API (docs/architecture.md,
"Command line").

Each subcommand imports its implementation only when it runs, so `elmjax exec` (sandbox only)
never pays for importing JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> "module:function" taking the parsed args and returning an exit code.
HANDLERS = {
    "exec": "elmjax.sandbox.cli:exec_command",
    "simulate": "elmjax.sodarace.cli:simulate_command",
    "evolve": "elmjax.loop.cli:evolve_command",
    "report": "elmjax.viz.report:report_command",
    "models": "elmjax.lm.cli:models_command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elmjax", description="Evolution through Large Models, in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("exec", help="run programs in the sandbox; one JSON object per program")
    p.add_argument("programs", nargs="+", help="program files defining make_walker()")
    p.add_argument("--json", action="store_true", help="print JSON (the default output)")
    p.add_argument("--timeout", type=float, default=None, help="wall-clock seconds per program")

    p = sub.add_parser("simulate", help="sandbox + simulate walkers; JSON per program")
    p.add_argument("programs", nargs="+")
    p.add_argument("--terrain", default="flat")
    p.add_argument("--seconds", type=float, default=None, help="simulated seconds (default 10)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--gif", default=None, help="write an animation of the run (one program)")

    p = sub.add_parser("evolve", help="run ELM (MAP-Elites with an LM mutation operator)")
    p.add_argument(
        "--config", default=None, help="YAML config (default: experiments/configs/default.yaml)"
    )
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    p.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue a killed run exactly"
    )
    p.add_argument("--model", default=None)
    p.add_argument("--operator", default=None)
    p.add_argument("--seed-program", action="append", default=None)
    p.add_argument(
        "--force", action="store_true", help="overwrite a run directory holding another run"
    )

    p = sub.add_parser("report", help="write RUN_DIR/report/index.html")
    p.add_argument("run_dir")

    p = sub.add_parser("models", help="list, inspect and convert language models")
    msub = p.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list")
    q = msub.add_parser("info")
    q.add_argument("name")
    q = msub.add_parser("convert")
    q.add_argument("name")
    q.add_argument("--out", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, function = HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module), function)
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
