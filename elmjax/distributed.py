"""Several processes, one run: `jax.distributed` set-up and the host-side exchange between them.

A multi-process run is the same program on every process (`elmjax evolve ... --set
distributed.coordinator=HOST:PORT --set distributed.num_processes=N --set
distributed.process_id=I`; on a TPU pod or under SLURM the keys may stay unset and JAX detects
the cluster). Each process samples, applies, sandboxes and simulates its own shard of every
generation on its own devices and CPUs; the shards' finished records are then gathered, so every
process inserts the same batch into its own replicated archive (bit-identical everywhere), and
process 0 alone writes the run directory (docs/architecture.md, "Multi-host").

The exchange is small host data (records of one generation, a stop decision, the restored
window on resume), sent as pickled bytes through JAX's own collectives
(`multihost_utils.process_allgather`: gloo on CPU, NCCL/ICI on accelerators), so no second
transport needs opening between hosts. Pickles only ever come from the processes of the same
run, never from an untrusted program (sandbox results are plain data checked in the worker).

Failure modes JAX has and what this module turns them into:

* a coordinator port already taken makes JAX crash process 0 (a segfault): `initialize` probes
  the address first and raises `DistributedError` naming it;
* a JAX computation before `initialize` makes JAX refuse: re-raised as `DistributedError` that
  says what to do;
* a peer that dies makes the next collective fail (or JAX's heartbeat, `heartbeat_timeout`
  seconds later, abort the process): `exchange` raises `PeerLost`, and the command line leaves
  at once with exit code 4 and a message saying how to resume.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class DistributedError(RuntimeError):
    """A multi-process launch that cannot work (bad address, port in use, JAX used too early,
    processes that disagree on the run)."""


class PeerLost(RuntimeError):
    """Another process of the run died or stopped answering."""


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in the run: its index and the number of processes."""

    process_id: int = 0
    num_processes: int = 1

    @property
    def leader(self) -> bool:
        """Process 0: the one that writes the run directory."""
        return self.process_id == 0

    @property
    def multi(self) -> bool:
        return self.num_processes > 1

    def shard(self, n: int) -> tuple[int, int]:
        """This process's slice [lo, hi) of n items: contiguous, sizes differ by at most one,
        the lower processes taking the remainder (so the order of a gathered batch is the order
        of the batch)."""
        base, extra = divmod(n, self.num_processes)
        p = self.process_id
        lo = p * base + min(p, extra)
        return lo, lo + base + (1 if p < extra else 0)


SINGLE = Cluster()

#: seconds the processes wait for each other when they exit (process 0 writes the report).
SHUTDOWN_TIMEOUT = 600


def cluster_detected() -> bool:
    """A launch JAX auto-detects: several SLURM tasks, or a multi-host TPU slice."""
    tasks = os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS")
    if tasks and tasks.isdigit() and int(tasks) > 1 and os.environ.get("SLURM_STEP_ID"):
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def check_port_free(address: str) -> None:
    """Raise `DistributedError` when HOST:PORT cannot be bound here (JAX would crash on it)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as err:
            raise DistributedError(
                f"cannot bind the coordinator address {address} ({err.strerror or err}): "
                "the port is in use (another run?) or the host is not an address of this "
                "machine; choose a free port with --set distributed.coordinator=HOST:PORT"
            ) from None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout: int = 30,
    initialization_timeout: int = 120,
) -> Cluster:
    """Join the run's processes (`jax.distributed.initialize`) and say where this one stands.

    All None and no detected cluster: one process, nothing to join (`SINGLE`). `coordinator`
    "auto": JAX's own cluster detection (TPU pod slices, SLURM, ...). Process 0 binds exactly
    `coordinator` (JAX's default binds every interface). Must run before any JAX computation of
    the process."""
    import jax

    explicit = coordinator not in (None, "auto") and (num_processes or 1) > 1
    if not explicit and coordinator != "auto" and not cluster_detected():
        return SINGLE
    kw: dict[str, Any] = {
        "initialization_timeout": int(initialization_timeout),
        "heartbeat_timeout_seconds": int(heartbeat_timeout),
        # At exit JAX waits for every process: the others wait there while process 0 writes
        # the report. A process that fails leaves at once (`os._exit`), and a dead one is found
        # by the heartbeat, so this bound only matters for a live process that hangs.
        "shutdown_timeout_seconds": SHUTDOWN_TIMEOUT,
    }
    if explicit:
        if process_id == 0:
            check_port_free(coordinator)
        kw.update(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            coordinator_bind_address=coordinator,
        )
    try:
        jax.distributed.initialize(**kw)
    except RuntimeError as err:
        if "before any JAX" in str(err) or "already" in str(err):
            raise DistributedError(
                "JAX was used before the multi-process run could be set up "
                f"({err}); start the run (ELM(...) or `elmjax evolve`) before any other JAX call "
                "of the process"
            ) from None
        raise DistributedError(f"cannot join the multi-process run: {err}") from None
    return Cluster(jax.process_index(), jax.process_count())


def exchange(obj: Any, cluster: Cluster, what: str) -> list[Any]:
    """Every process's `obj`, in process order (a gather to all). `what` names the step in the
    error a dead peer causes."""
    if not cluster.multi:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    try:
        sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64)))
        # a power-of-two length: the gather compiles once per size class, not per generation
        padded = np.zeros(1 << max(12, int(sizes.max() - 1).bit_length()), np.uint8)
        padded[: data.size] = data
        gathered = np.asarray(multihost_utils.process_allgather(padded))
    except Exception as err:  # gloo/NCCL report a vanished peer as a runtime error
        raise PeerLost(
            f"process {cluster.process_id}: lost contact with the other processes during {what} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); a process of the run "
            "died or was stopped"
        ) from None
    sizes = sizes.reshape(-1)
    return [
        pickle.loads(gathered[p, : int(sizes[p])].tobytes()) for p in range(cluster.num_processes)
    ]


def broadcast(obj: Any, cluster: Cluster, what: str) -> Any:
    """Process 0's `obj` on every process (others pass anything; it is not sent)."""
    if not cluster.multi:
        return obj
    return exchange(obj if cluster.leader else None, cluster, what)[0]


def agree(reasons: Sequence[str | None]) -> str | None:
    """The joint stop decision from every process's own reason (None: carry on): the first
    reason in process order, so every process takes the same one."""
    return next((r for r in reasons if r), None)
