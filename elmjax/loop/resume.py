"""The archive window, and exact resume from the store journal and the last checkpoint.

**Window.** Generation k selects parents from A_{k-1-lag}, so the loop keeps the archives after
the last `lag + 1` generations (and the texts of their elites, the parents to come). A
checkpoint (every `checkpoint_every` generations, on SIGINT/SIGTERM and at the end) saves
exactly that window.

**Resume.** The program store is the journal. `--resume` loads the last checkpoint, replays the
archive inserts of the generations the store committed after it (`elmjax.run_dir.rebuild_window`;
insert is deterministic and the store keeps fitness and descriptor bit-exact), drops the
uncommitted rows of a generation cut off mid-way (the store does that when it opens), trims
metrics.jsonl to the committed generations, and the loop recomputes the cut-off generation:
nothing lost, nothing duplicated (docs/architecture.md, "Store journal").
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmjax import run_dir
from elmjax.config import ConfigError, RunConfig, dump_config, parse_override
from elmjax.loop.processes import is_launch_key

#: config keys `--resume` may override: they change when a run stops or how it is shown, never
#: what a generation computes (the pipeline schedule does not change results either).
RESUMABLE_KEYS = (
    "budget",
    "time_limit",
    "pipeline",
    "checkpoint_every",
    "keep_checkpoints",
    "report",
    "report_top",
    "progress",
)


def resume_config(out: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The config of the run in `out`, with `overrides` (`key=value`, `RESUMABLE_KEYS` only)
    applied and written back to its config.yaml."""
    config = run_dir.load_run_config(out)
    if overrides:
        parsed = dict(parse_override(o) for o in overrides)
        for key in parsed:
            if key not in RESUMABLE_KEYS and not is_launch_key(key):
                raise ConfigError(
                    key,
                    "cannot change when resuming (it would change the run); "
                    f"resumable keys: {', '.join(RESUMABLE_KEYS)}",
                )
        config = config.replace(parsed)
    problem = spent_limit(out, config)
    if problem is not None:
        raise problem
    if overrides:
        dump_config(config, Path(out) / run_dir.CONFIG)
    return config


def spent_limit(out: str | Path, config: RunConfig) -> ConfigError | None:
    """A ConfigError saying how much of the budget or time limit the run in `out` has already
    used, when resuming it with `config` would stop before doing anything; else None.

    Both limits count the whole run, earlier sessions included: `--set time_limit=1m` on a run
    that has run 2 minutes means "stop at 1 minute", which has passed. The message says what
    was used and which value would continue the run."""
    from elmjax.loop.progress import clock

    rows = run_dir.read_metrics(out)
    if not rows:
        return None
    last = rows[-1]
    used = int(last.get("evaluations", 0))
    elapsed = float(last.get("elapsed", 0.0))
    if used >= config.budget:
        return ConfigError(
            "budget",
            f"already spent: {out} has evaluated {used:,} candidates and its budget is "
            f"{config.budget:,} evaluations (the budget counts the whole run). To continue, "
            f"give a larger total, e.g. --set budget={used + max(config.budget, 1000)}",
        )
    if config.time_limit is not None and elapsed >= config.time_limit:
        more = max(config.time_limit, 60.0)
        return ConfigError(
            "time_limit",
            f"already spent: {out} has run for {clock(elapsed)} and its time limit is "
            f"{clock(config.time_limit)} (the limit counts the whole run, earlier sessions "
            f"included). To run {clock(more)} more: --set time_limit={math.ceil(elapsed + more)}s",
        )
    return None


class ArchiveWindow:
    """The live archive, the archives later generations select from, and their elites' texts."""

    def __init__(self, store: Any, lag: int, archive: Any, window: dict[int, Any]):
        self.store = store
        self.lag = lag
        self.archive = archive  # after the last committed generation
        self.window = window  # generation -> archive after it (the last lag + 1)
        self.texts: dict[int, str] = {}  # program id -> text, for elites of the window

    @classmethod
    def fresh(cls, store: Any, spec: Any, lag: int) -> ArchiveWindow:
        from elmjax import qd

        return cls(store, lag, qd.init(spec), {})

    @classmethod
    def restore(
        cls, store: Any, checkpoints: Any, spec: Any, lag: int
    ) -> tuple[ArchiveWindow, int]:
        """The window of a killed run (last checkpoint + store replay), and the next generation."""
        from elmjax import qd

        if store.recovered:
            print(
                f"elmjax: generation(s) {store.recovered} were cut off; recomputing",
                file=sys.stderr,
            )
        window, next_generation = run_dir.rebuild_window(store, checkpoints, spec, lag)
        archive = window[max(window)] if window else qd.init(spec)
        state = cls(store, lag, archive, window)
        state.refresh_texts()
        return state, next_generation

    def parents(self, archive_generation: int) -> tuple[Any, dict[int, str]]:
        """The archive after `archive_generation` and the texts of its elites."""
        archive = self.window[archive_generation]
        ids = np.asarray(archive.program_id)
        return archive, {int(i): self.texts[int(i)] for i in ids[ids >= 0]}

    def remember(self, generation: int) -> None:
        """Keep A_generation in the window of archives later generations select from."""
        self.window[generation] = self.archive
        for g in [g for g in self.window if g < generation - self.lag]:
            del self.window[g]

    def refresh_texts(self) -> None:
        """Program texts of every elite in the window (parents of the generations to come)."""
        needed: set[int] = set()
        for archive in self.window.values():
            ids = np.asarray(archive.program_id)
            needed.update(int(i) for i in ids[ids >= 0])
        missing = needed - self.texts.keys()
        if missing:
            self.texts.update(self.store.texts(sorted(missing)))
        self.texts = {i: self.texts[i] for i in needed}

    def checkpoint(self, checkpoints: Any, generation: int) -> None:
        """Save A_{generation-lag}..A_generation (the oldest known one stands in before A_0)."""
        archives = [
            self.window.get(g, self.window[min(self.window)])
            for g in range(generation - self.lag, generation + 1)
        ]
        checkpoints.save(generation, archives)


def restore_metrics(out: Path) -> dict[str, Any] | None:
    """Trim metrics.jsonl to the committed generations; the last row (None before any)."""
    rows = run_dir.MetricsLog.restore(out, out / run_dir.STORE)
    return rows[-1] if rows else None
