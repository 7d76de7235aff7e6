"""What a person watching a run sees: a live bar on a terminal, a plain line every ~10 s otherwise.

Display only: nothing here changes what a run computes, which is why `progress` is one of the
keys `--resume` may change.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from elmjax.config import RunConfig


class Progress:
    """Live bar (rich) on a terminal; a plain line every ~10 s otherwise."""

    def __init__(self, config: RunConfig, elm: Any = None):
        self.config = config
        self.elm = elm
        mode = config.progress
        self.live = mode == "always" or (mode == "auto" and sys.stderr.isatty())
        self.quiet = mode == "never"
        self._last_print = 0.0
        self._bar = None
        self._first_evals: int | None = None
        self._t0 = time.perf_counter()

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]ELM[/]"),
                BarColumn(),
                TextColumn("{task.fields[evals]} evals"),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                console=Console(stderr=True),
                refresh_per_second=2,
            )
            self._bar.__enter__()
            # The bar shows whichever budget ends the run first: evaluations or wall clock.
            self._task = self._bar.add_task(
                "elm", total=1.0, evals="0", stats="starting...", eta="?"
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, row: dict[str, Any]) -> None:
        evals = row["evaluations"]
        now = time.perf_counter()
        if self._first_evals is None:
            self._first_evals, self._t0 = evals, now
        rate = (evals - self._first_evals) / max(now - self._t0, 1e-9)
        remaining = max(0, self.config.budget - evals) / rate if rate > 0 else float("inf")
        if self.config.time_limit is not None:
            remaining = min(remaining, max(0.0, self.config.time_limit - row["elapsed"]))
        eta = (
            "?" if not math.isfinite(remaining) else time.strftime("%M:%S", time.gmtime(remaining))
        )
        if remaining >= 3600 and math.isfinite(remaining):
            eta = f"{remaining / 3600:.1f}h"
        best = row["max_fitness"]
        stats = (
            f"cov {row['coverage']:.1%} | QD {row['qd_score']:.1f} | "
            f"max {best if math.isfinite(best) else float('nan'):.2f} | "
            f"valid {row['valid_rate']:.0%} | {rate:.1f} evals/s"
        )
        if self._bar is not None:
            done = evals / self.config.budget
            if self.config.time_limit is not None:
                done = max(done, row["elapsed"] / self.config.time_limit)
            self._bar.update(
                self._task,
                completed=min(done, 1.0),
                evals=f"{evals}/{self.config.budget}",
                stats=stats,
                eta=eta,
            )
        elif not self.quiet and (now - self._last_print > 10 or evals >= self.config.budget):
            self._last_print = now
            print(
                f"elmjax: gen {row['generation']} | {evals}/{self.config.budget} evals | {stats}"
                f" | ETA {eta}",
                file=sys.stderr,
                flush=True,
            )


def make_progress(config: RunConfig, elm: Any = None) -> Progress:
    return Progress(config, elm)
