"""Checkpoints of the search state: archive, RNG key, generation, and anything else, via orbax.

Each checkpoint is one orbax `CheckpointManager` step (step = generation) with three items:
`state` (the archive and the raw RNG key data: arrays, bit-exact), `tree` (an optional pytree of
arrays, e.g. LM parameters or optimizer state) and `meta` (JSON: the generation, whether the key
is a typed key, and whatever the caller adds, e.g. the LM's name and sha256).

Why this cannot corrupt the last good checkpoint: orbax writes a step into a temporary directory
and renames it into place only when every file is written and finalised; `latest_generation` and
`restore` only see finalised steps, and a temporary directory left by a killed writer is ignored
(and removed by the next `Checkpointer` on the same directory). Only `max_to_keep` finalised steps
are kept, and the oldest is deleted only after a newer one is finalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from elmjax.qd.archive import Archive


@dataclass
class Checkpoint:
    """A restored checkpoint."""

    generation: int
    archive: Archive
    key: jax.Array
    meta: dict[str, Any]
    tree: Any = None


def _multi_process() -> bool:
    """In a multi-process run only process 0 checkpoints, and orbax would take its
    single-device arrays for shards of a global array: it saves and restores host (numpy)
    arrays then, bit for bit the same values."""
    return jax.process_count() > 1


def _abstract(tree: Any) -> Any:
    if _multi_process():
        return jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), tree)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def _savable(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree) if _multi_process() else tree


class Checkpointer:
    """Save / restore the search state under `directory`, keeping the last `max_to_keep`."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=False,
                cleanup_tmp_directories=True,
                # Saves block until finalised: the loop records "checkpoint at generation k"
                # only once it is really on disk.
                enable_async_checkpointing=False,
                # In a multi-process run only process 0 checkpoints (the archive is replicated
                # and identical everywhere): orbax must not wait for the other processes.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    primary_host=jax.process_index(), active_processes={jax.process_index()}
                )
                if jax.process_count() > 1
                else ocp.options.MultiprocessingOptions(),
            ),
        )

    def save(
        self,
        generation: int,
        archive: Archive,
        key: jax.Array,
        meta: dict[str, Any] | None = None,
        tree: Any = None,
    ) -> None:
        """Write generation `generation`'s checkpoint (overwrites nothing; blocks until done)."""
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        key_data = jax.random.key_data(key) if typed else key
        info = dict(meta or {})
        info.update(
            generation=int(generation),
            typed_key=bool(typed),
            key_shape=list(np.shape(key_data)),
            has_tree=tree is not None,
        )
        items = {
            "state": ocp.args.StandardSave(_savable({"archive": archive, "key": key_data})),
            "meta": ocp.args.JsonSave(info),
        }
        if tree is not None:
            items["tree"] = ocp.args.StandardSave(_savable(tree))
        self._manager.save(int(generation), args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def generations(self) -> list[int]:
        """Finalised checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def latest_generation(self) -> int | None:
        return self._manager.latest_step()

    def restore(
        self,
        template: Archive,
        generation: int | None = None,
        tree_template: Any = None,
    ) -> Checkpoint:
        """Restore `generation` (default: the latest finalised one).

        `template` is an archive of the same spec and shapes (e.g. `qd.init(spec)`): it gives
        the pytree structure and the static spec. `tree_template` does the same for `tree`.
        """
        step = self.latest_generation() if generation is None else int(generation)
        if step is None:
            raise FileNotFoundError(f"no finalised checkpoint under {self.directory}")
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]
        items = {"meta": ocp.args.JsonRestore()}
        state_target = {
            "archive": _abstract(template),
            "key": _abstract(np.zeros(tuple(meta["key_shape"]), np.uint32)),
        }
        items["state"] = ocp.args.StandardRestore(state_target)
        if meta.get("has_tree"):
            items["tree"] = ocp.args.StandardRestore(
                None if tree_template is None else _abstract(tree_template)
            )
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = out["state"]
        archive = jax.tree.map(jax.numpy.asarray, state["archive"])
        key = jax.numpy.asarray(state["key"])
        if meta["typed_key"]:
            key = jax.random.wrap_key_data(key)
        return Checkpoint(
            generation=int(meta["generation"]),
            archive=archive,
            key=key,
            meta=meta,
            tree=jax.tree.map(jax.numpy.asarray, out["tree"]) if meta.get("has_tree") else None,
        )

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
