"""`elmjax rl`: train a terrain-conditioned program writer with PPO (stage 3 of ELM).

A thin layer over `elmjax.rl.run`: builds the config from the options, prints a refusal as one
clear line (exit 2), and a finished run's matrices as a short table.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

ERROR_EXIT = 2


def rl_command(args: argparse.Namespace) -> int:
    from elmjax.config_values import ConfigError
    from elmjax.rl.config import apply_overrides, build_config
    from elmjax.rl.model_io import RLSetupError
    from elmjax.rl.run import resume, start

    try:
        if args.resume:
            report = resume(args.resume, args.steps, args.set)
        else:
            if not args.model or not args.terrains or not args.out:
                raise RLSetupError("a new run needs --model, --terrains and --out (or --resume)")
            values: dict[str, Any] = {"model": args.model, "terrains": args.terrains}
            if args.steps is not None:
                values["steps"] = args.steps
            config = build_config(apply_overrides(values, args.set))
            report = start(args.out, config, force=args.force)
    except (ConfigError, RLSetupError) as err:
        print(f"elmjax rl: error: {err}", file=sys.stderr)
        return ERROR_EXIT
    print(summary(report))
    return 0


def summary(report: dict[str, Any]) -> str:
    """The matrices as text: rows = conditioning, columns = terrain."""
    names = report["terrains"]
    width = max(12, *(len(n) + 2 for n in names))
    lines = []
    for key in ("before", "after"):
        lines.append(f"{key} (step {0 if key == 'before' else report['step']}): mean distance")
        lines.append(" " * width + "".join(f"{n:>{width}}" for n in names))
        for name, row in zip(names, report[key]):
            lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}.2f}" for v in row))
    lines.append(json.dumps({k: report[k] for k in ("specialises", "beats_single_walker")}))
    return "\n".join(lines)
