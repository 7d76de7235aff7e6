"""`elmjax evolve`: a thin layer over `ELM(config, out).run()` and `ELM.resume(run_dir)`.

Parses the config (YAML file, `--set key=value`, shortcuts), runs, prints a one-line summary and
where the report is, and maps how the run ended to the exit code: 0 done (budget or time
limit), 1 a bad config or run directory, 130 interrupted, 3 disk full.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from elmjax import run_dir
from elmjax.config import ConfigError, RunConfig, load_config
from elmjax.distributed import DistributedError, PeerLost
from elmjax.loop.records import RunResult, SeedError
from elmjax.loop.resume import RESUMABLE_KEYS
from elmjax.loop.run import ELM

#: exit codes of `elmjax evolve`.
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_DISK_FULL, EXIT_PEER_LOST = 0, 1, 130, 3, 4


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's config: YAML file (default config if none), then --set, then the shortcuts."""
    overrides = list(args.set or [])
    if args.model:
        overrides.append(f"mutation.model={args.model}")
    if args.operator:
        overrides.append(f"mutation.operator={args.operator}")
    config_path = args.config
    if config_path is None:
        default = default_config_path()
        config_path = default if default.exists() else None
    config = load_config(config_path, overrides)
    if args.seed_program:
        config = config.replace({"seed_programs": list(args.seed_program)})
    return config


#: how a run ended, as the last line says it.
STATUS_TEXT = {
    "done": "finished: budget spent",
    "time_limit": "stopped at the time limit",
    "interrupted": "interrupted",
    "disk_full": "stopped: disk full",
}


def plural(n: int, noun: str) -> str:
    """ "1 generation", "28 generations", "1,265 evaluations"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def end_of_run_line(result: RunResult) -> str:
    """ "elmjax: stopped at the time limit after 865 evaluations (28 generations, 10:00):
    7 of 1,728 cells (0.4%), QD score 312.4, best fitness 91.2"."""
    from elmjax.loop.progress import clock
    from elmjax.qd.metrics import coverage_text, row_cells

    m = result.metrics
    line = (
        f"elmjax: {STATUS_TEXT.get(result.status, result.status)} after "
        f"{plural(result.evaluations, 'evaluation')} ({plural(result.generations, 'generation')}"
    )
    elapsed = result.elapsed if result.elapsed is not None else m.get("elapsed")
    line += f", {clock(elapsed)})" if elapsed is not None else ")"
    if m:
        line += (
            f": {coverage_text(int(m['num_filled']), row_cells(m))}, "
            f"QD score {m['qd_score']:,.1f}, best fitness {m['max_fitness']:.1f}"
        )
        if m.get("num_clipped"):
            line += (
                f"; {m['num_clipped']} elite(s) beyond the grid's range, filed in the edge "
                "cells (listed in the report)"
            )
    return line


def peer_lost(err: PeerLost, out: object) -> None:
    """Another process of the run died: say so and leave now, without JAX's shutdown barrier
    (which would wait for the dead process, then abort)."""
    print(
        f"elmjax evolve: {err}. Everything committed is on disk in process 0's run directory; "
        f"start every process again with --resume {out} (same --set distributed.* keys)",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PEER_LOST)


def default_config_path() -> Path:
    return Path(__file__).resolve().parents[2] / "experiments" / "configs" / "default.yaml"


def evolve_command(args: argparse.Namespace) -> int:
    """`elmjax evolve`: parse the config, run, print where the report is."""
    try:
        if args.resume:
            if args.config or args.model or args.operator or args.seed_program or args.out:
                print(
                    "elmjax evolve: --resume continues a run with its own config.yaml; "
                    "drop --config/--out/--model/--operator/--seed-program (--set may change "
                    f"only {', '.join(RESUMABLE_KEYS)})",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            elm = ELM.resume(args.resume, args.set or ())
        else:
            config = config_from_args(args)
            elm = ELM(config, args.out, force=args.force)
    except (ConfigError, run_dir.RunDirError, DistributedError) as err:
        print(f"elmjax evolve: {err}", file=sys.stderr)
        return EXIT_ERROR
    except PeerLost as err:
        peer_lost(err, args.resume or args.out)
    from elmjax.lm.registry import ModelNotFound

    elm.detach_on_interrupt = True
    try:
        result = elm.run()
    except (ConfigError, SeedError, ModelNotFound, DistributedError) as err:
        print(f"elmjax evolve: {err}", file=sys.stderr)
        return EXIT_ERROR
    except PeerLost as err:
        peer_lost(err, elm.out)
    except BaseException:
        if not elm.cluster.multi:
            raise
        # Leave at once: the other processes then see this one gone at their next exchange
        # (PeerLost) instead of waiting for it until JAX's timeouts.
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(EXIT_ERROR)
    print(end_of_run_line(result), file=sys.stderr)
    report = result.run_dir / run_dir.REPORT / "index.html"
    if report.exists():
        print(f"elmjax: report: {report}", file=sys.stderr)
    if result.status in ("interrupted", "disk_full"):
        print(f"elmjax: continue with: elmjax evolve --resume {result.run_dir}", file=sys.stderr)
    code = {
        "done": EXIT_OK,
        "time_limit": EXIT_OK,
        "interrupted": EXIT_INTERRUPTED,
        "disk_full": EXIT_DISK_FULL,
    }[result.status]
    if elm.abandoned_alive():
        # A generation was still decoding when the user interrupted: everything of the run is
        # on disk and closed; leave now rather than wait for it (or let JAX abort at teardown).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
