"""The archive window of a run: its checkpoints, and the archives rebuilt from them and the store.

The loop selects parents from the archives of the last `lag + 1` generations (the window), so
that is what a checkpoint holds and what resume and the report must get back. This stands
alone because it is the one part of a run directory that handles archive pytrees (orbax
checkpoints, `qd.init`, store replay), with its own invariant (nothing lost, nothing
duplicated between checkpoint and store); the rest of `run_dir` (layout, checks, provenance,
metrics) reads and writes files. `run_dir` re-exports `WindowCheckpoints`, `open_checkpoints` and
`rebuild_window`, and opens a run's window through them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class WindowCheckpoints:
    """Checkpoints of the archive window (`elmjax.qd.checkpoint.Checkpointer`, orbax).

    Generation k's checkpoint holds A_k as the archive and A_{k-lag}..A_{k-1} as the extra tree:
    exactly what the next `lag + 1` generations select parents from.
    """

    def __init__(self, path: Path, keep: int, seed: int = 0):
        import jax

        from elmjax.qd.checkpoint import Checkpointer

        self._checkpointer = Checkpointer(path, max_to_keep=keep)
        self._key = jax.random.PRNGKey(seed)

    def save(self, generation: int, archives: list[Any]) -> None:
        self._checkpointer.save(
            generation,
            archives[-1],
            self._key,
            meta={"window": len(archives)},
            tree=archives[:-1] or None,
        )

    def restore_latest(self, templates: list[Any]) -> tuple[int, list[Any]] | None:
        if self._checkpointer.latest_generation() is None:
            return None
        ckpt = self._checkpointer.restore(templates[-1], tree_template=templates[:-1] or None)
        return ckpt.generation, [*(ckpt.tree or []), ckpt.archive]

    def close(self) -> None:
        self._checkpointer.close()


def open_checkpoints(path: Path, keep: int) -> WindowCheckpoints:
    return WindowCheckpoints(path, keep)


def rebuild_window(store: Any, checkpoints: Any, spec: Any, lag: int) -> tuple[dict[int, Any], int]:
    """Archives after the last `lag + 1` committed generations, and the next generation to run.

    The last checkpoint gives the archives up to its generation; every generation the store
    committed after it is replayed (one insert per generation, in order, bit-exact).
    """
    from elmjax import qd

    window: dict[int, Any] = {}
    restored = checkpoints.restore_latest([qd.init(spec) for _ in range(lag + 1)])
    start = 0
    archive = qd.init(spec)
    if restored is not None:
        last, archives = restored
        for i, saved in enumerate(archives):
            g = last - len(archives) + 1 + i
            if g >= 0:
                window[g] = saved
        archive = window[last]
        start = last + 1
    for g in [g for g in store.committed_generations() if g >= start]:
        archive = store.replay(archive, from_generation=g, to_generation=g)
        window[g] = archive
        for old in [k for k in window if k < g - lag]:
            del window[old]
        start = g + 1
    return window, start
