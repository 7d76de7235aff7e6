"""What a person watching a run sees: a live display on a terminal, a plain line every ~10 s
otherwise.

The bar measures whichever limit will end the run first: the wall clock when a time limit comes
before the evaluation budget at the current rate (the default run: 10 minutes against a budget
it never reaches), evaluations otherwise. The figures under it are the run's, not the last
generation's: cells filled so far of the grid's total, QD score, best fitness, and the valid
share of every candidate so far (one generation's rate jumps between 3% and 12%). Lines are cut
at " | " to fit the terminal, so the display stays whole at 80 columns.

Display only: nothing here changes what a run computes, which is why `progress` is one of the
keys `--resume` may change.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from elmjax.config import RunConfig

#: the bar's width bounds, in columns.
BAR_MIN, BAR_MAX = 10, 40


def clock(seconds: float) -> str:
    """`4:05`, `1:02:03`; `?` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass(frozen=True)
class Snapshot:
    """What the display knows at one moment."""

    elapsed: float  # wall-clock seconds of the run, earlier sessions included
    evaluations: int = 0
    rate: float = 0.0  # evaluations per second in this session (0: not known yet)
    row: dict[str, Any] | None = None  # the last generation's metrics row


def progress_state(config: RunConfig, snap: Snapshot) -> tuple[str, float, str, float]:
    """(mode, fraction done, what the bar counts, seconds left): mode is "time" when the time
    limit ends the run before the budget at the current rate (or while the rate is unknown),
    "evaluations" otherwise."""
    budget = config.budget
    limit = config.time_limit
    left_budget = max(0, budget - snap.evaluations)
    eta_budget = left_budget / snap.rate if snap.rate > 0 else math.inf
    eta_time = max(0.0, limit - snap.elapsed) if limit is not None else math.inf
    if limit is not None and eta_time <= eta_budget:
        text = f"{clock(snap.elapsed)} of {clock(limit)}"
        return "time", min(1.0, snap.elapsed / limit), text, eta_time
    text = f"{snap.evaluations:,} of {budget:,} evals"
    return "evaluations", min(1.0, snap.evaluations / budget), text, eta_budget


def stats_parts(snap: Snapshot) -> list[str]:
    """The run's cumulative figures, one short part each."""
    row = snap.row
    if row is None:
        return ["starting: evaluating the seed programs"]
    total = row.get("num_cells") or 0
    filled = int(row.get("num_filled", 0))
    cells = f"{filled:,} of {total:,} cells ({filled / total:.1%})" if total else f"{filled} cells"
    best = row.get("max_fitness", math.nan)
    valid = row.get("valid_rate_total", math.nan)
    parts = [
        cells,
        f"QD {row.get('qd_score', 0.0):,.1f}",
        f"best {best:.1f}" if math.isfinite(best) else "best -",
        f"valid {valid:.1%} so far" if math.isfinite(valid) else "valid -",
        f"{snap.evaluations:,} evals, gen {row.get('generation', 0)}",
    ]
    if snap.rate > 0:
        parts.append(f"{snap.rate:.1f} evals/s")
    if row.get("num_clipped"):
        parts.append(f"{row['num_clipped']} beyond the grid")
    return parts


def fit(parts: list[str], width: int, indent: str = "  ") -> list[str]:
    """Join `parts` with " | " into lines of at most `width` columns (a part longer than a line
    gets a line of its own)."""
    lines: list[str] = []
    line = ""
    for part in parts:
        candidate = f"{line} | {part}" if line else indent + part
        if line and len(candidate) > width:
            lines.append(line)
            candidate = indent + part
        line = candidate
    if line:
        lines.append(line)
    return lines


def display_lines(config: RunConfig, snap: Snapshot, width: int) -> list[str]:
    """The live display: a bar line and the figures, each at most `width` columns."""
    _, done, text, left = progress_state(config, snap)
    tail = f" {done:4.0%}  {text}  ETA {clock(left)}"
    bar_width = max(BAR_MIN, min(BAR_MAX, width - len("ELM ") - len(tail)))
    filled = int(round(done * bar_width))
    bar = "█" * filled + "░" * (bar_width - filled)
    first = f"ELM {bar}{tail}"
    if len(first) > width:  # a very narrow terminal: the bar goes first
        first = tail.strip()
    return [first, *fit(stats_parts(snap), width)]


def plain_line(config: RunConfig, snap: Snapshot) -> str:
    """One log line (no terminal): progress and the same figures."""
    _, done, text, left = progress_state(config, snap)
    return f"elmjax: {done:.0%} ({text}, ETA {clock(left)}) | " + " | ".join(stats_parts(snap))


class Progress:
    """Live display (rich) on a terminal; a plain line every ~10 s otherwise."""

    def __init__(self, config: RunConfig, elm: Any = None):
        self.config = config
        self.elm = elm
        mode = config.progress
        self.live = mode == "always" or (mode == "auto" and sys.stderr.isatty())
        self.quiet = mode == "never"
        self._last_print = 0.0
        self._live = None
        self._console = None
        self._first: tuple[int, float] | None = None
        self._row: dict[str, Any] | None = None
        self._row_elapsed = (0.0, time.perf_counter())
        self._evaluations = 0
        self._rate = 0.0

    def _elapsed(self) -> float:
        elapsed = getattr(self.elm, "_elapsed", None)
        if callable(elapsed):
            try:
                return float(elapsed())
            except AttributeError:  # the run has not started its clock yet
                pass
        at, since = self._row_elapsed
        return at + time.perf_counter() - since

    def snapshot(self) -> Snapshot:
        return Snapshot(self._elapsed(), self._evaluations, self._rate, self._row)

    def _render(self) -> Any:
        from rich.text import Text

        # One column spare: a line exactly as wide as the terminal wraps on some terminals.
        width = (self._console.width if self._console is not None else 80) - 1
        return Text("\n".join(display_lines(self.config, self.snapshot(), width)))

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(stderr=True)
            self._live = Live(
                get_renderable=self._render,
                console=self._console,
                refresh_per_second=2,
                transient=False,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, row: dict[str, Any]) -> None:
        now = time.perf_counter()
        evals = int(row["evaluations"])
        if self._first is None:  # rate from the first generation seen on (compiles excluded)
            self._first = (evals, now)
        first_evals, t0 = self._first
        self._rate = (evals - first_evals) / (now - t0) if now > t0 else 0.0
        self._row = row
        self._evaluations = evals
        self._row_elapsed = (float(row.get("elapsed", 0.0)), now)
        if self._live is not None:
            self._live.refresh()
        elif not self.quiet and (now - self._last_print > 10 or evals >= self.config.budget):
            self._last_print = now
            print(plain_line(self.config, self.snapshot()), file=sys.stderr, flush=True)


def make_progress(config: RunConfig, elm: Any = None) -> Progress:
    return Progress(config, elm)
