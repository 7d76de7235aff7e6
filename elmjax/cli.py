"""The `elmjax` command: a thin layer over the Python API (docs/architecture.md,
"Command line").

Each subcommand imports its implementation only when it runs, so `elmjax exec` (sandbox only)
never pays for importing JAX.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence

from elmjax.config import OPERATORS, TERRAIN_NAMES, keys_help, normal_terrain

#: seed programs by name (`elmjax.sodarace.seeds`; a test keeps these equal).
SEED_NAMES = ("square", "radial", "cppn_fixed", "cppn_mutable", "wheel", "galloper", "runner")
#: built-in model names (`elmjax.lm.registry.BUILTIN`; a test keeps these equal). Both are
#: listed here because the parser must not import JAX (`elmjax exec` stays light).
BUILTIN_MODELS = ("elm-tiny", "smollm2-135m")

#: subcommand -> "module:function" taking the parsed args and returning an exit code.
HANDLERS = {
    "exec": "elmjax.sandbox.cli:exec_command",
    "simulate": "elmjax.sodarace.cli:simulate_command",
    "evolve": "elmjax.loop.cli:evolve_command",
    "report": "elmjax.viz.report:report_command",
    "models": "elmjax.lm.cli:models_command",
    "rl": "elmjax.rl.cli:rl_command",
    "finetune": "elmjax.finetune.cli:finetune_command",
}


def seed_program(value: str) -> str:
    """argparse type of --seed-program: a seed's name or an existing .py file."""
    if value in SEED_NAMES or (value.endswith(".py") and os.path.isfile(value)):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is neither a seed ({', '.join(SEED_NAMES)}) nor an existing .py file"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elmjax", description="Evolution through Large Models, in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    seeds = ", ".join(SEED_NAMES)
    p = sub.add_parser(
        "exec",
        help="run walker programs in the sandbox; one JSON object per program",
        description="Run walker programs in the sandbox (no simulation) and print one JSON "
        "object per program: joints, muscles and descriptor, or a typed error. Exit status 1 "
        "when any program is rejected.",
    )
    p.add_argument(
        "programs",
        nargs="*",
        metavar="PROGRAM",
        help=f"a .py file defining make_walker(), or a seed's name ({seeds})",
    )
    p.add_argument("--json", action="store_true", help="print JSON (the default output)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall-clock seconds per program (default 5)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (default: one per core; 1 runs the programs in one worker)",
    )
    p.add_argument(
        "--isolation",
        action="store_true",
        help="also print the sandbox's OS isolation layers (active/unavailable) on stderr",
    )

    p = sub.add_parser(
        "simulate",
        help="sandbox and simulate walkers: how far each goes",
        description="Run walker programs in the sandbox, then simulate each walker as an ELM "
        "run scores it. Prints readable lines per program (JSON with --json).",
        epilog="examples: elmjax simulate square galloper; "
        "elmjax simulate my_walker.py --terrain hills --gif walk.gif",
    )
    p.add_argument(
        "programs",
        nargs="+",
        metavar="PROGRAM",
        help=f"a .py file defining make_walker(), or a seed's name ({seeds})",
    )
    p.add_argument(
        "--terrain",
        default="flat",
        type=normal_terrain,
        choices=TERRAIN_NAMES,
        help="ground to walk on (default: flat)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="S",
        help="simulated seconds, in (0, 600] (default 10, as in an ELM run)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per program on stdout")
    p.add_argument(
        "--gif",
        default=None,
        metavar="FILE",
        help="write an animated GIF of the first program's run (real time, scale bar, legend)",
    )
    p.add_argument(
        "--physics",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a simulator parameter (any SimParams field, e.g. substeps=12); repeatable",
    )

    models = ", ".join(BUILTIN_MODELS)
    p = sub.add_parser(
        "evolve",
        help="run ELM (MAP-Elites with an LM mutation operator)",
        description=textwrap.fill(
            "Run ELM: MAP-Elites over walker programs, a code language model as the mutation "
            "operator. Writes a run directory (config.yaml, programs.sqlite, checkpoints, "
            "metrics.jsonl, report/index.html). Ctrl-C stops cleanly; --resume continues "
            "exactly.",
            78,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys for --set KEY=VALUE, with their defaults (a YAML --config file\n"
        "uses the same keys, sections nested; durations: 90s, 10m, 1h):\n\n"
        + keys_help(78)
        + "\n\nexamples:\n  elmjax evolve --out runs/default\n"
        "  elmjax evolve --out runs/gp --operator gp --set time_limit=2m\n"
        "  elmjax evolve --resume runs/gp --set time_limit=20m  (a total, not extra time)",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML config (default: experiments/configs/default.yaml, the README's main job)",
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="run directory (default: runs/elm-DATE-TIME)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable; keys below)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a stopped or killed run exactly (--set may then change only budget, "
        "time_limit and display keys)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help=f"the LM: {models} (built in; see `elmjax models list`), a model directory, a "
        ".gguf file or a hub id org/name (= --set mutation.model=MODEL)",
    )
    p.add_argument(
        "--operator",
        default=None,
        choices=OPERATORS,
        help="mutation operator: diff (the paper's diff model), prompt, gp (the no-LM "
        "baseline) or crossover (= --set mutation.operator=...)",
    )
    p.add_argument(
        "--seed-program",
        action="append",
        default=None,
        type=seed_program,
        metavar="SEED",
        help=f"a seed program (repeatable): {seeds}, or a .py file (default: square)",
    )
    p.add_argument(
        "--force", action="store_true", help="overwrite a run directory holding another run"
    )

    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report/index.html",
        description="(Re)write a run's HTML report: heatmaps, curves, walker GIFs, elites with "
        "their diff against the parent, lineage and operator statistics. Works on a finished, "
        "stopped or killed run.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (`elmjax evolve --out`)")

    p = sub.add_parser("models", help="list, inspect and convert language models")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="{list,info,convert}")
    msub.add_parser("list", help="built-in models and whether they are available here")
    model_help = f"a built-in name ({', '.join(BUILTIN_MODELS)}), a model directory, a .gguf "
    model_help += "file or a hub id org/name"
    q = msub.add_parser("info", help="parameters, vocabulary and config of a model")
    q.add_argument("name", metavar="MODEL", help=model_help)
    q = msub.add_parser("convert", help="save a model as an elmjax model directory")
    q.add_argument("name", metavar="MODEL", help=model_help)
    q.add_argument("--out", default=None, metavar="DIR", help="where to write it")

    p = sub.add_parser(
        "rl",
        help="stage 3: train a terrain-conditioned program writer with PPO",
        description="Stage 3 of ELM: the stage-2 model behind a learned terrain soft prompt, "
        "trained with PPO on the distance its programs' walkers travel on each terrain (the "
        "sandbox and simulator of `evolve`). Writes RUN_DIR/eval.json (terrain x conditioning "
        "matrices before and after), metrics, TensorBoard, checkpoints and pictures.",
        epilog="examples:\n  elmjax rl --model MODEL_DIR --terrains left_wall,right_wall,tunnel "
        "--out runs/rl --steps 20\n  elmjax rl --resume runs/rl --steps 40  (a total)\n"
        "config keys for --set: see elmjax/rl/config.py (samples_per_terrain, kl_coef, "
        "learning_rate, max_new_tokens, eval_samples, stage1_run, ...)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None, metavar="MODEL_DIR", help="a stage-2 model bundle")
    p.add_argument(
        "--terrains",
        default=None,
        metavar="A,B,C",
        help=f"conditioning terrains, in matrix order ({', '.join(TERRAIN_NAMES)}); the "
        "paper's sets: left_wall,right_wall,tunnel and left_wall,right_wall,bumpy",
    )
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory to create")
    p.add_argument(
        "--steps", type=int, default=None, metavar="N", help="PPO steps in total (default 20)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config key (repeatable)"
    )
    p.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue a run to --steps in total"
    )
    p.add_argument("--force", action="store_true", help="overwrite a directory holding a run")

    p = sub.add_parser(
        "finetune",
        help="stage 2: train a model on the programs ELM runs found, and evaluate it",
        description=textwrap.fill(
            "Stage 2 of ELM: build a dataset from the runs' program stores (programs within a "
            "cut-off of their niche's best fitness, de-duplicated by syntax tree, 5% held out), "
            "train a model that writes a whole walker program from a short prompt, and evaluate "
            "it (held-out loss; samples into a fresh archive: niches, QD score, valid and novel "
            "shares; completions of Wheel, Galloper and Runner). MODEL_DIR is a model directory "
            "(`elmjax evolve --model MODEL_DIR`) with eval.json and MODEL_CARD.md. Rerun the "
            "same command to continue a stopped job (exit status 3: training stopped at "
            "--set time_limit before its last step; 2: refused, with the reason).",
            78,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="keys for --set KEY=VALUE (elmjax.finetune.FinetuneConfig): within (0.5), "
        "holdout,\nconditioned, exclude_lineages, seq_len, base (scratch | MODEL), lora_rank, "
        "steps,\nbatch_size, lr, seed, time_limit, samples, ood_samples, temperature, ...\n\n"
        "examples:\n  elmjax finetune runs/gp-* --out models/stage2 --steps 600\n"
        "  elmjax finetune runs/gp-* --out models/stage2-cond --set conditioned=true\n"
        "  elmjax finetune runs/gp-* --out models/smol-lora --set base=smollm2-135m "
        "--set lora_rank=8\n  elmjax finetune --eval models/stage2 --samples 256",
    )
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories (`evolve --out`)")
    p.add_argument("--out", default=None, metavar="MODEL_DIR", help="where the model goes")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="training steps (600)")
    p.add_argument("--samples", type=int, default=None, metavar="N", help="programs sampled (1024)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a job key (repeatable)"
    )
    p.add_argument(
        "--eval", default=None, metavar="MODEL_DIR", help="re-run the evaluation of a model"
    )
    p.add_argument("--force", action="store_true", help="replace a MODEL_DIR holding another model")
    p.add_argument(
        "--dataset-only",
        action="store_true",
        help="print the dataset's figures (programs, duplicates, held out, niches) and stop",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, function = HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module), function)
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
