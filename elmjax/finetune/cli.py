"""`elmjax finetune`: stage 2 from the command line (a thin layer over `finetune.job`)."""

from __future__ import annotations

import argparse
import sys

from elmjax.config_values import ConfigError, parse_override


def finetune_command(args: argparse.Namespace) -> int:
    from elmjax.finetune.config import config_from_sets
    from elmjax.finetune.dataset import DatasetError
    from elmjax.finetune.job import FinetuneError, evaluate_dir, finetune

    try:
        if args.eval:
            if args.runs or args.out:
                print(
                    "elmjax finetune: --eval MODEL_DIR takes no RUN_DIR or --out", file=sys.stderr
                )
                return 2
            overrides = dict(parse_override(s) for s in args.set)
            if args.samples is not None:
                overrides["samples"] = args.samples
            evaluate_dir(args.eval, overrides=overrides)
            return 0
        if not args.runs or not (args.out or args.dataset_only):
            print(
                "elmjax finetune: give RUN_DIR... and --out MODEL_DIR (or --eval MODEL_DIR)",
                file=sys.stderr,
            )
            return 2
        cfg = config_from_sets(args.set, steps=args.steps, samples=args.samples)
        if args.dataset_only:
            import json

            from elmjax.finetune.dataset import build_dataset

            print(json.dumps(build_dataset(args.runs, cfg).stats, indent=2))
            return 0
        result = finetune(args.runs, args.out, cfg, force=args.force)
    except (DatasetError, FinetuneError, ConfigError) as err:
        print(f"elmjax finetune: {err}", file=sys.stderr)
        return 2
    return 0 if result is not None else 3
