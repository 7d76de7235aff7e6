"""The processes of one run: joining them, and what process 0 does for the others.

Process 0 (the leader) alone writes the run directory: config.yaml, provenance.json, the
program store, checkpoints, metrics and the report. The others (followers) keep the same
archive in memory (every process inserts the same gathered batch), never touch the directory,
and get from the leader what only its disk holds: the run's config and the restored archive
window on `--resume`. A step that can fail on the leader alone (the directory already holds a
run, a wrong process count) is decided there and the decision is sent to every process, so
they all stop with the same message instead of waiting for a leader that left.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from elmjax import distributed, run_dir
from elmjax.config import LAUNCH_SECTIONS, ConfigError, RunConfig, parse_override
from elmjax.distributed import Cluster, DistributedError

T = TypeVar("T")

#: config keys (and key prefixes) that say how a process is launched: given on every start and
#: resume, free to change on resume, never part of what the run computes.
LAUNCH_KEYS = ("distributed.", "compile_cache")


def is_launch_key(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in LAUNCH_KEYS)


def join(config: RunConfig) -> Cluster:
    """Join the run's processes as `config.distributed` says (one process when unset), then
    turn on the compile cache (`config.compile_cache`)."""
    from elmjax import compile_cache

    d = config.distributed
    cluster = distributed.initialize(
        d.coordinator,
        d.num_processes,
        d.process_id,
        heartbeat_timeout=d.heartbeat_timeout,
        initialization_timeout=d.initialization_timeout,
    )
    compile_cache.enable(config.compile_cache)
    return cluster


def launch_config(overrides: Sequence[str]) -> RunConfig:
    """The defaults with only the launch keys of `overrides` applied (what a follower knows
    before the leader sends it the run's config on resume)."""
    parsed = dict(parse_override(o) for o in overrides)
    return RunConfig().replace({k: v for k, v in parsed.items() if is_launch_key(k)})


def on_leader(cluster: Cluster, fn: Callable[[], T], what: str) -> T:
    """`fn()` on the leader; its result on every process, or its error on every process (a
    follower raises `RunDirError` or `DistributedError` with the leader's message)."""
    if not cluster.multi:
        return fn()
    failure: Exception | None = None
    outcome: tuple[str, Any] = ("ok", None)
    if cluster.leader:
        try:
            outcome = ("ok", fn())
        except (run_dir.RunDirError, ConfigError, DistributedError) as err:
            failure = err
            outcome = (type(err).__name__, str(err))
    kind, value = distributed.broadcast(outcome, cluster, what)
    if failure is not None:
        raise failure
    if kind == "ok":
        return value
    error = run_dir.RunDirError if kind == "RunDirError" else DistributedError
    raise error(f"process 0: {value}")


def check_same_config(cluster: Cluster, config: RunConfig) -> None:
    """Every process must run the same recipe (launch keys aside)."""
    if not cluster.multi:
        return
    mine = {k: v for k, v in config.to_dict().items() if k not in LAUNCH_SECTIONS}
    configs = distributed.exchange(mine, cluster, "the config check")
    for p, other in enumerate(configs):
        if other != configs[0]:
            keys = sorted(
                k for k in set(other) | set(configs[0]) if other.get(k) != configs[0].get(k)
            )
            raise DistributedError(
                f"process {p} was started with a different config than process 0 "
                f"(keys: {', '.join(keys)}); give every process the same --config and --set"
            )


def started_processes(out: Path) -> int:
    """How many processes started the run in `out` (provenance.json; 1 when not recorded)."""
    try:
        info = json.loads((out / run_dir.PROVENANCE).read_text())
    except (OSError, ValueError):
        return 1
    return int(info.get("processes", 1))


def check_process_count(out: Path, cluster: Cluster) -> None:
    """A run resumes with the process count it started with (the launch contract of
    docs/launch.md). The run itself would not change with the count (every random draw is
    keyed by a candidate's index in the whole batch), but provenance.json records one count per
    run, and a resume that silently changed it would misstate how the run was made."""
    started = started_processes(out)
    if started != cluster.num_processes:
        raise DistributedError(
            f"{out} was started with {started} process(es); resume it with {started} "
            f"(--set distributed.num_processes={started}), not {cluster.num_processes}"
        )


def to_host(tree: Any) -> Any:
    """A pytree of device arrays as numpy arrays (bit-exact), to send to other processes."""
    import jax

    return jax.tree.map(np.asarray, tree)


class FollowerStore:
    """What a follower has instead of the program store: the leader stores every record (the
    gathered batch), so a follower writes nothing. Parents' texts reach a follower with the
    records that made them elites, and with the window the leader sends on resume."""

    recovered: list[int] = []

    def write_generation(self, generation: int, records: Any, info: Any = None) -> None:
        del generation, records, info

    def texts(self, program_ids: Iterable[int]) -> dict[int, str]:
        missing = sorted(program_ids)
        raise RuntimeError(
            f"program texts {missing[:5]} are not on this process; only process 0 keeps the store"
        )

    def close(self) -> None:
        pass


class FollowerCheckpoints:
    """Checkpoints are the leader's; a follower saves none."""

    def save(self, generation: int, archives: list[Any]) -> None:
        del generation, archives

    def close(self) -> None:
        pass
