"""A persistent pool of sandbox workers, and `run_programs`, the one call the rest of elmjax uses.

Workers come from multiprocessing's fork server: a fresh interpreter that preloads the worker
module and nothing else, so a worker never inherits JAX (or threads, or locks) from its caller,
and a replacement for a killed worker is one `fork` away. Each worker enters the OS layers of
`isolation.py` and reports them when it says ready (`SandboxPool.isolation`; a missing layer is
logged once). Programs go out in small batches per worker (one pipe round trip per batch);
results come back as soon as each program is done (one framed outcome per program; what has
arrived together travels in one write).

The caller trusts nothing it reads. It never blocks on a worker: it reads only what `poll` says
is there, frames messages itself with a size bound, and gives each program its wall-clock
limit plus a grace period (the worker's template enforces the limit itself) before it kills the
worker. Every reply is decoded (`wire.py`: MessagePack, plain types only) and validated against the schema of the environment that
owns `check` (`schemas.py`). A worker that breaks the protocol (a malformed or oversized frame,
a reply for a program it is not running) is killed and its program gets `crashed`; a program's
process that sends a malformed or out-of-schema value only makes that program `crashed`. The
rest of a killed worker's batch goes to another worker. Results are returned in input order.
One worker's end of this (starting it, framing and checking its messages) is `channel.py`.
"""

from __future__ import annotations

import atexit
import collections
import logging
import math
import os
import select
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing import connection as mp_connection
from typing import Any

from elmjax.sandbox.channel import (  # noqa: F401  (re-exported: pool.SEND_TIMEOUT_SECONDS)
    SEND_TIMEOUT_SECONDS,
    Worker,
    job_limits,
    outcome_of,
    ready_layers,
    spawn,
    template_of,
)
from elmjax.sandbox.isolation import LAYERS, unprivileged_ids
from elmjax.sandbox.replies import settle
from elmjax.sandbox.results import ExecResult, Limits
from elmjax.sandbox.schemas import has_schema, schema_for
from elmjax.sandbox.spawning import start_forkserver
from elmjax.sandbox.worker import REPLY_OVERHEAD_BYTES, resolve

#: Seconds a new worker may take to start and lock down before the pool gives up on it.
STARTUP_SECONDS = 60.0
#: Consecutive workers that may die before saying ready before the pool raises (a broken
#: environment, not a bad program).
MAX_FAILED_STARTS = 3
#: Most programs sent to a worker at once (a program process may serve several batches of the
#: same job, up to `worker.MAX_PROGRAMS_PER_PROCESS` programs, so small batches cost no fork).
MAX_BATCH = 64
#: Seconds past a program's wall-clock limit before the caller, rather than the worker's
#: template (which enforces the limit itself), gives up on the worker and kills it.
WALL_GRACE_SECONDS = 2.0

_log = logging.getLogger("elmjax.sandbox")
_WARNED: set[str] = set()
_Worker = Worker  # the name the pool's tests build a stand-in worker with


def _ref(obj: Any, what: str) -> str:
    """A 'module:qualname' string the worker can import, for a module-level object or a ref."""
    if isinstance(obj, str):
        if ":" not in obj:
            raise ValueError(f"{what} must be 'module:attr', got {obj!r}")
        resolve(obj)  # fail here, in the caller, on a typo
        return obj
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    ref = f"{module}:{qualname}"
    if not module or "<" in qualname or module == "__main__":
        raise ValueError(f"{what} must be a module-level function of an importable module")
    if resolve(ref) is not obj:
        raise ValueError(f"{what} {ref} does not resolve to the object given")
    return ref


class SandboxPool:
    """A persistent pool of locked-down worker processes (see the module docstring).

    Use as a context manager, or call `close()`. `run` takes one batch at a time (it holds a
    lock); programs of a batch run in parallel across the workers.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        preload: Sequence[str] = (),
        layers: Sequence[str] = LAYERS,
    ) -> None:
        """`layers`: the OS layers workers enter (all by default; see `isolation.LAYERS`). Fewer
        is for tests that prove each layer on its own, never for production."""
        unknown = set(layers) - set(LAYERS)
        if unknown:
            raise ValueError(f"unknown isolation layers: {sorted(unknown)}")
        self.limits = limits or Limits()
        self.preload = tuple(preload)
        self.layers = tuple(layers)
        self._isolation: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._root = tempfile.mkdtemp(prefix="elmjax-sandbox-")
        os.chmod(self._root, 0o711)  # workers may pass through (to their own dir), not list
        self._ids = unprivileged_ids() if os.geteuid() == 0 else None
        self._workers: list[Worker | None] = [None] * self.limits.workers
        self._failed_starts = 0
        self._closed = False
        self._batch = _Batch(self.limits, schema_for(None), 0)
        # the folder goes even if close() is never called (daemonic workers die with the caller)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._root, True)
        start_forkserver()

    @property
    def isolation(self) -> dict[str, str]:
        """Layer -> 'active ...', 'unavailable: why' or 'disabled', as the first worker that
        started reported it (starts one if none has yet)."""
        if self._isolation is None:
            with self._lock:
                if self._isolation is None and not self._closed:
                    self._start_one()
        return dict(self._isolation or {})

    def _start_one(self) -> None:
        """Start worker 0 and wait until it is ready (for `isolation`)."""
        if self._workers[0] is None:
            self._spawn(0)
        w = self._workers[0]
        assert w is not None
        deadline = time.monotonic() + STARTUP_SECONDS
        while not w.ready:
            left = deadline - time.monotonic()
            if left <= 0 or not mp_connection.wait([w.conn, w.process.sentinel], timeout=left):
                w.kill()
                self._workers[0] = None
                raise RuntimeError(f"sandbox worker did not start within {STARTUP_SECONDS:g} s")
            if not self._read(w) and not w.ready:
                w.kill()
                self._workers[0] = None
                raise RuntimeError("sandbox worker died before starting")

    @property
    def directory(self) -> str:
        """The folder holding the workers' (empty) working directories."""
        return self._root

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker and remove the working directories."""
        if self._closed:
            return
        self._closed = True
        for slot, worker in enumerate(self._workers):
            if worker is not None:
                worker.stop()
                self._workers[slot] = None
        shutil.rmtree(self._root, ignore_errors=True)

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return [w.process.pid for w in self._workers if w is not None and w.process.is_alive()]

    def template_pids(self) -> list[int]:
        """Process ids of the live workers' templates, which fork the programs' processes: the
        worker itself, or its one child when the worker made a pid namespace for it."""
        return [template_of(pid) for pid in self.worker_pids()]

    def _spawn(self, slot: int) -> None:
        self._workers[slot] = spawn(slot, self._root, self._ids, self.preload, self.layers)

    # ---- running programs --------------------------------------------------------------------

    def run(
        self,
        sources: Sequence[str],
        entry: str,
        check: Callable[[Any], Any] | str,
        limits: Limits | None = None,
        seeds: Sequence[int] | None = None,
        inject: dict[str, Any] | None = None,
        call: bool = True,
        schema: Callable[[Any], Any] | None = None,
    ) -> list[ExecResult]:
        """Run every program and return one `ExecResult` per source, in order.

        Each program's globals get `inject` (name -> 'module:attr' or a module-level object,
        resolved in the worker); the sandbox calls `entry()` (or, with `call=False`, hands the
        entry object itself to `check`, which may call it on test inputs), then `check(value)`,
        which returns plain data or raises. `random` starts from `seeds[i]` (0 when no seeds are
        given). `limits` defaults to the pool's; its `workers` is ignored here. Every value is
        validated here, in the caller, by `schema` (default: the schema of the environment that
        owns `check`, see `schemas.py`); one that fails is `crashed`.
        Never raises for a bad program; raises ValueError for a bad `check`/`inject`/`seeds`.
        """
        limits = limits or self.limits
        sources = list(sources)
        seeds = _seeds_for(sources, seeds)
        check_ref = _ref(check, "check")
        check_fn = resolve(check_ref)
        job = _job(entry, check_ref, inject, call, limits, schema is None and has_schema(check_fn))
        state = _Batch(limits, schema or schema_for(check_fn), len(sources))
        queue = _admit(sources, state)
        with self._lock:
            if self._closed:
                raise RuntimeError("SandboxPool is closed")
            self._batch = state
            try:
                self._drive(queue, sources, seeds, job, state)
            except BaseException:
                # interrupted (KeyboardInterrupt, a broken environment): workers still busy with
                # this batch would answer into the next one, so they go
                self._discard_busy_workers()
                raise
        return [r for r in state.results if r is not None]

    def _discard_busy_workers(self) -> None:
        for slot, w in enumerate(self._workers):
            if w is not None and (w.pending or not w.ready):
                # clear the slot first, so a second interrupt leaves no half-killed worker
                self._workers[slot] = None
                w.kill()

    def _drive(
        self,
        queue: collections.deque[int],
        sources: list[str],
        seeds: list[int],
        job: dict[str, Any],
        state: _Batch,
    ) -> None:
        limits = state.limits
        watched: tuple[Worker | None, ...] = ()
        poller = select.poll()
        slot_of: dict[int, tuple[int, bool]] = {}  # fd -> (slot, whether it is the sentinel)
        while queue or any(w is not None and w.pending for w in self._workers):
            self._dispatch(queue, sources, seeds, job)
            if tuple(self._workers) != watched:  # a worker came or went: watch the new set
                watched = tuple(self._workers)
                poller = select.poll()
                slot_of = {}
                for slot, w in enumerate(watched):
                    if w is not None:
                        slot_of[w.conn.fileno()] = (slot, False)
                        slot_of[w.process.sentinel] = (slot, True)
                for fd in slot_of:
                    poller.register(fd, select.POLLIN)
            deadline = time.monotonic() + 3600.0
            for w in watched:
                if w is None:
                    continue
                if w.pending:
                    deadline = min(
                        deadline, w.started_at + limits.wall_seconds + WALL_GRACE_SECONDS
                    )
                elif not w.ready:
                    deadline = min(deadline, w.spawned_at + STARTUP_SECONDS)
            timeout = max(0.0, deadline - time.monotonic())
            ready: dict[int, list[bool]] = {}
            for fd, _ in self._wait(poller, timeout):
                slot, is_sentinel = slot_of[fd]
                ready.setdefault(slot, [False, False])[is_sentinel] = True
            for slot in sorted(ready):
                self._service(slot, queue, state, *ready[slot])
            self._enforce_deadlines(queue, state)

    @staticmethod
    def _wait(poller: Any, timeout: float) -> list[tuple[int, int]]:
        """The one place the caller waits for workers (at most `timeout` seconds)."""
        return poller.poll(math.ceil(timeout * 1000))

    def _dispatch(
        self, queue: collections.deque[int], sources: list[str], seeds: list[int], job: dict
    ) -> None:
        if not queue:
            return
        for slot in range(len(self._workers)):
            if self._workers[slot] is None:
                self._spawn(slot)
        idle = [w for w in self._workers if w is not None and w.ready and not w.pending]
        for w in idle:
            if not queue:
                break
            size = max(1, min(MAX_BATCH, len(queue) // (2 * len(self._workers))))
            tasks = [queue.popleft() for _ in range(min(size, len(queue)))]
            try:
                w.conn.send({"job": job, "tasks": [(i, sources[i], seeds[i]) for i in tasks]})
            except (OSError, ValueError):
                queue.extendleft(reversed(tasks))
                w.kill()  # dead, or not reading: _service settles it through its sentinel
                continue
            w.pending.extend(tasks)
            w.started_at = time.monotonic()

    def _read(self, w: Worker) -> bool:
        """Read and handle what the worker sent (`Worker.read`); False when it hung up or broke
        the protocol."""
        return w.read(self._frame_limit, lambda payload: self._accept(w, payload))

    @property
    def _frame_limit(self) -> int:
        largest = max(self.limits.max_result_bytes, self._batch.limits.max_result_bytes)
        return largest + 2 * REPLY_OVERHEAD_BYTES

    def _service(
        self,
        slot: int,
        queue: collections.deque[int],
        state: _Batch,
        readable: bool = True,
        exited: bool = False,
    ) -> None:
        """Read what a worker has sent (`readable`: poll said its pipe has something); if it
        has died (`exited`: its sentinel is readable) or broken the protocol, settle its current
        program (`crashed`) and requeue the rest of its batch."""
        w = self._workers[slot]
        assert w is not None
        alive = True
        if readable:
            alive = self._read(w)
        if alive and not exited:
            return
        if w.pending:
            code = w.process.exitcode
            why = "broke the reply protocol" if code is None else f"died (exit code {code})"
            state.results[w.pending.popleft()] = ExecResult.failure(
                "crashed", f"worker process {why}", time.monotonic() - w.started_at
            )
        if not w.ready:
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS:
                w.kill()
                self._workers[slot] = None
                raise RuntimeError(
                    f"sandbox workers die before starting (exit code {w.process.exitcode}); "
                    "is the environment readable by the unprivileged user?"
                )
        queue.extendleft(reversed(w.pending))
        w.pending.clear()
        w.kill()
        self._workers[slot] = None

    def _accept(self, w: Worker, payload: bytes) -> bool:
        """Record one message from a worker: its ready signal, or one program's outcome (a binary
        header from the template (`wire.OUTCOME`), then the program process's own reply bytes).
        False when the template's part is not well formed: the worker is then killed. A
        malformed reply from the program's process only makes that program `crashed`."""
        if not w.ready:
            layers = ready_layers(payload)
            if layers is None:
                return False
            w.ready = True
            w.layers = layers
            self._failed_starts = 0
            self._note_isolation(layers)
            return True
        state = self._batch
        outcome = outcome_of(payload, w.pending[0] if w.pending else None)
        if outcome is None:
            return False
        header, body = outcome
        index = w.pending.popleft()
        seconds = float(header["seconds"])
        if not math.isfinite(seconds) or seconds < 0:
            seconds = 0.0
        state.results[index] = settle(header, body, seconds, state.limits, state.schema)
        w.started_at = time.monotonic()
        return True

    def _note_isolation(self, layers: dict[str, str]) -> None:
        if self._isolation is None:
            self._isolation = dict(layers)
        missing = sorted(k for k, v in layers.items() if v.startswith("unavailable"))
        for name in missing:
            if name not in _WARNED:
                _WARNED.add(name)
                _log.warning("sandbox isolation layer %s %s", name, layers[name])

    def _enforce_deadlines(self, queue: collections.deque[int], state: _Batch) -> None:
        limits = state.limits
        now = time.monotonic()
        for slot, w in enumerate(self._workers):
            if w is None:
                continue
            if w.pending and now >= w.started_at + limits.wall_seconds + WALL_GRACE_SECONDS:
                w.kill()
                state.results[w.pending.popleft()] = ExecResult.failure(
                    "timeout",
                    f"wall-clock limit of {limits.wall_seconds:g} s exceeded",
                    now - w.started_at,
                )
                queue.extendleft(reversed(w.pending))
                self._workers[slot] = None
            elif not w.ready and now >= w.spawned_at + STARTUP_SECONDS:
                w.kill()
                self._workers[slot] = None
                raise RuntimeError(f"sandbox worker did not start within {STARTUP_SECONDS:g} s")


class _Batch:
    """One `run` call's limits, schema and results."""

    def __init__(self, limits: Limits, schema: Callable[[Any], Any], n: int) -> None:
        self.limits = limits
        self.schema = schema
        self.results: list[ExecResult | None] = [None] * n


def _seeds_for(sources: list[str], seeds: Sequence[int] | None) -> list[int]:
    """One `random` seed per program (0 for each when none are given)."""
    if seeds is None:
        seeds = [0] * len(sources)
    seeds = [int(s) for s in seeds]
    if len(seeds) != len(sources):
        raise ValueError(f"{len(seeds)} seeds for {len(sources)} programs")
    return seeds


def _job(
    entry: str,
    check_ref: str,
    inject: dict[str, Any] | None,
    call: bool,
    limits: Limits,
    own_schema: bool,
) -> dict[str, Any]:
    """What every worker gets with a batch of `SandboxPool.run` (plain data, refs resolved).
    `verify_plain`: whether the program's process walks `check`'s value to prove it plain data
    before encoding it; not when `check` is an environment's own (`own_schema`), whose value is
    plain by construction and which the caller validates against the environment's strict
    schema anyway (the strict encoder still refuses anything else: `wire.encode_reply`)."""
    return {
        "entry": str(entry),
        "check": check_ref,
        "inject": {str(k): _ref(v, f"inject[{k!r}]") for k, v in (inject or {}).items()},
        "call": bool(call),
        "limits": job_limits(limits),
        "verify_plain": not own_schema,
    }


def _admit(sources: list[str], state: _Batch) -> collections.deque[int]:
    """The indices of the programs that go to a worker; the others (not text, too large) get
    their result here."""
    limits = state.limits
    queue: collections.deque[int] = collections.deque()
    for i, source in enumerate(sources):
        if type(source) is not str:
            state.results[i] = ExecResult.failure("invalid", "program text must be a str")
        elif len(source.encode("utf-8", "surrogatepass")) > limits.max_source_bytes:
            state.results[i] = ExecResult.failure(
                "forbidden", f"program is larger than {limits.max_source_bytes} bytes"
            )
        else:
            queue.append(i)
    return queue


# ---- module-level convenience ----------------------------------------------------------------

_POOLS: dict[tuple[int, tuple[str, ...]], SandboxPool] = {}
_POOLS_LOCK = threading.Lock()


def _preload_for(check: Any, inject: dict[str, Any] | None) -> tuple[str, ...]:
    modules = []
    for obj in [check, *(inject or {}).values()]:
        module = obj.partition(":")[0] if isinstance(obj, str) else getattr(obj, "__module__", "")
        if module and module not in modules and module != "__main__":
            modules.append(module)
    return tuple(modules)


def run_programs(
    sources: Sequence[str],
    entry: str,
    check: Callable[[Any], Any] | str,
    limits: Limits | None = None,
    seeds: Sequence[int] | None = None,
    inject: dict[str, Any] | None = None,
    call: bool = True,
    schema: Callable[[Any], Any] | None = None,
) -> list[ExecResult]:
    """Run programs in a shared persistent pool (one per worker count); see `SandboxPool.run`."""
    limits = limits or Limits()
    pool = shared_pool(limits, check, inject)
    return pool.run(
        sources, entry, check, limits=limits, seeds=seeds, inject=inject, call=call, schema=schema
    )


def shared_pool(
    limits: Limits, check: Callable[[Any], Any] | str, inject: dict[str, Any] | None = None
) -> SandboxPool:
    """The persistent pool `run_programs` uses for this worker count, check and inject."""
    key = (limits.workers, _preload_for(check, inject))
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None or pool._closed:
            pool = _POOLS[key] = SandboxPool(limits, preload=key[1])
    return pool


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS.values()):
        pool.close()
    _POOLS.clear()
