"""A persistent pool of sandbox workers, and `run_programs`, the one call the rest of elmjax uses.

Workers come from multiprocessing's fork server: a fresh interpreter that preloads the worker
module and nothing else, so a worker never inherits JAX (or threads, or locks) from its caller,
and a replacement for a killed worker is one `fork` away. Programs go out in small batches per
worker (one pipe round trip per batch, not per program); results come back one by one as JSON, so
the caller always knows which program a worker is on and when that program started, and enforces
the wall-clock limit itself: a worker past its deadline is killed (SIGKILL), its program gets
`timeout`, and the rest of its batch goes to another worker. A worker that dies on its own gives
its program `crashed`. Results are returned in input order.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing import connection as mp_connection
from multiprocessing import context as mp_context
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from typing import Any

from elmjax.sandbox.results import ERROR_KINDS, ExecResult, Limits
from elmjax.sandbox.worker import resolve, serve, unprivileged_ids

#: Seconds a new worker may take to start and lock down before the pool gives up on it.
STARTUP_SECONDS = 60.0
#: Consecutive workers that may die before saying ready before the pool raises (a broken
#: environment, not a bad program).
MAX_FAILED_STARTS = 3
#: Most programs sent to a worker at once.
MAX_BATCH = 16

_CONTEXT = multiprocessing.get_context("forkserver")
_FORKSERVER_LOCK = threading.Lock()


def _start_forkserver(preload: Sequence[str]) -> None:
    """Start the fork server ourselves the first time, preloading only the worker module (not the
    caller's `__main__`, which may have imported JAX) and with a fixed hash seed, so set and dict
    orders inside programs do not change from run to run."""
    server = forkserver._forkserver
    with _FORKSERVER_LOCK:
        if getattr(server, "_forkserver_pid", None) is not None:
            return
        _CONTEXT.set_forkserver_preload(["elmjax.sandbox.worker", *preload])
        previous = os.environ.get("PYTHONHASHSEED")
        os.environ["PYTHONHASHSEED"] = "0"
        try:
            server.ensure_running()
        finally:
            if previous is None:
                os.environ.pop("PYTHONHASHSEED", None)
            else:
                os.environ["PYTHONHASHSEED"] = previous


class _LeanPopen(popen_forkserver.Popen):
    """Starts a forkserver child without re-importing the caller's `__main__` in it.

    multiprocessing re-runs the caller's main script in every child it starts (so that functions
    defined there can be unpickled). A worker needs nothing from it, and a main script that
    imports JAX would cost each worker seconds and most of its memory limit. This overrides a
    CPython 3.11-3.13 internal; on other versions `_PROCESS_CLASS` keeps the standard behaviour.
    """

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        mp_context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            mp_context.set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _LeanProcess(mp_context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _LeanPopen(process_obj)


_PROCESS_CLASS = _LeanProcess if (3, 11) <= sys.version_info[:2] <= (3, 13) else _CONTEXT.Process


class _Worker:
    """One worker process, the programs sent to it, and when its current program started."""

    def __init__(self, process: Any, conn: Any, workdir: str) -> None:
        self.process = process
        self.conn = conn
        self.workdir = workdir
        self.ready = False
        self.spawned_at = time.monotonic()
        self.pending: collections.deque[int] = collections.deque()
        self.started_at = 0.0
        self.retiring = False

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        self.process.join(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


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

    def __init__(self, limits: Limits | None = None, preload: Sequence[str] = ()) -> None:
        self.limits = limits or Limits()
        self.preload = tuple(preload)
        self._lock = threading.Lock()
        self._root = tempfile.mkdtemp(prefix="elmjax-sandbox-")
        os.chmod(self._root, 0o711)  # workers may pass through (to their own dir), not list
        self._ids = unprivileged_ids() if os.geteuid() == 0 else None
        self._workers: list[_Worker | None] = [None] * self.limits.workers
        self._failed_starts = 0
        self._closed = False
        # the folder goes even if close() is never called (daemonic workers die with the caller)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._root, True)
        _start_forkserver(self.preload)

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
                with contextlib.suppress(OSError, ValueError):
                    worker.conn.send(None)
                worker.process.join(timeout=1)
                if worker.process.is_alive():
                    worker.process.kill()
                worker.close()
                self._workers[slot] = None
        shutil.rmtree(self._root, ignore_errors=True)

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return [w.process.pid for w in self._workers if w is not None and w.process.is_alive()]

    def _spawn(self, slot: int) -> None:
        workdir = tempfile.mkdtemp(prefix=f"w{slot}-", dir=self._root)
        if self._ids is not None:
            os.chown(workdir, *self._ids)
        parent_conn, child_conn = _CONTEXT.Pipe(duplex=True)
        process = _PROCESS_CLASS(
            target=serve, args=(child_conn, workdir, self.preload), daemon=True
        )
        process.start()
        child_conn.close()
        self._workers[slot] = _Worker(process, parent_conn, workdir)

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
    ) -> list[ExecResult]:
        """Run every program and return one `ExecResult` per source, in order.

        Each program's globals get `inject` (name -> 'module:attr' or a module-level object,
        resolved in the worker); the sandbox calls `entry()` (or, with `call=False`, hands the
        entry object itself to `check`, which may call it on test inputs), then `check(value)`,
        which returns plain data or raises. `random` starts from `seeds[i]` (0 when no seeds are
        given). `limits` defaults to the pool's; its `workers` is ignored here.
        Never raises for a bad program; raises ValueError for a bad `check`/`inject`/`seeds`.
        """
        limits = limits or self.limits
        sources = list(sources)
        if seeds is None:
            seeds = [0] * len(sources)
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(sources):
            raise ValueError(f"{len(seeds)} seeds for {len(sources)} programs")
        job = {
            "entry": str(entry),
            "check": _ref(check, "check"),
            "inject": {str(k): _ref(v, f"inject[{k!r}]") for k, v in (inject or {}).items()},
            "call": bool(call),
            "limits": {
                "cpu_seconds": float(limits.cpu_seconds),
                "address_space_bytes": int(limits.address_space_bytes),
                "max_output_bytes": int(limits.max_output_bytes),
                "max_result_bytes": int(limits.max_result_bytes),
                "max_message_chars": int(limits.max_message_chars),
            },
        }
        results: list[ExecResult | None] = [None] * len(sources)
        queue: collections.deque[int] = collections.deque()
        for i, source in enumerate(sources):
            if type(source) is not str:
                results[i] = ExecResult.failure("invalid", "program text must be a str")
            elif len(source.encode("utf-8", "surrogatepass")) > limits.max_source_bytes:
                results[i] = ExecResult.failure(
                    "forbidden", f"program is larger than {limits.max_source_bytes} bytes"
                )
            else:
                queue.append(i)
        with self._lock:
            if self._closed:
                raise RuntimeError("SandboxPool is closed")
            try:
                self._drive(queue, sources, seeds, job, limits, results)
            except BaseException:
                # interrupted (KeyboardInterrupt, a broken environment): workers still busy with
                # this batch would answer into the next one, so they go
                self._discard_busy_workers()
                raise
        return [r for r in results if r is not None]

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
        limits: Limits,
        results: list[ExecResult | None],
    ) -> None:
        while queue or any(w is not None and w.pending for w in self._workers):
            self._dispatch(queue, sources, seeds, job)
            waitables: dict[Any, int] = {}
            deadline = time.monotonic() + 3600.0
            for slot, w in enumerate(self._workers):
                if w is None:
                    continue
                waitables[w.conn] = slot
                waitables[w.process.sentinel] = slot
                if w.pending:
                    deadline = min(deadline, w.started_at + limits.wall_seconds)
                elif not w.ready:
                    deadline = min(deadline, w.spawned_at + STARTUP_SECONDS)
            timeout = max(0.0, deadline - time.monotonic())
            ready = mp_connection.wait(list(waitables), timeout=timeout)
            for slot in sorted({waitables[obj] for obj in ready}):
                self._service(slot, queue, limits, results)
            self._enforce_deadlines(queue, limits, results)

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
                continue  # the worker is dead; _service notices through its sentinel
            w.pending.extend(tasks)
            w.started_at = time.monotonic()

    def _service(
        self,
        slot: int,
        queue: collections.deque[int],
        limits: Limits,
        results: list[ExecResult | None],
    ) -> None:
        """Read everything a worker has sent; if it has died, settle its programs."""
        w = self._workers[slot]
        assert w is not None
        alive = True
        try:
            while w.conn.poll():
                payload = w.conn.recv_bytes(limits.max_result_bytes + 65536)
                if not self._accept(w, payload, limits, results):
                    alive = False
                    break
        except (EOFError, OSError):
            alive = False
        if alive and w.process.is_alive() and not w.retiring:
            return
        if w.pending and not w.retiring:
            code = w.process.exitcode
            results[w.pending.popleft()] = ExecResult.failure(
                "crashed",
                f"worker process died (exit code {code})",
                time.monotonic() - w.started_at,
            )
        if not w.ready and not w.retiring:
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

    def _accept(
        self, w: _Worker, payload: bytes, limits: Limits, results: list[ExecResult | None]
    ) -> bool:
        """Record one message from a worker (the ready signal, or a list of replies in the order
        of its batch); False if it is not well formed."""
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):
            return False
        if isinstance(message, dict) and message.get("ready") is True and not w.ready:
            w.ready = True
            self._failed_starts = 0
            return True
        if not isinstance(message, list) or not message:
            return False
        for reply in message:
            if not isinstance(reply, dict) or not w.pending or reply.get("index") != w.pending[0]:
                return False
            index = w.pending.popleft()
            seconds = reply.get("seconds")
            seconds = float(seconds) if isinstance(seconds, int | float) else 0.0
            if reply.get("ok") is True:
                results[index] = ExecResult(True, reply.get("value"), None, seconds)
            else:
                kind, text = reply.get("kind"), reply.get("message")
                if kind not in ERROR_KINDS:
                    kind, text = "crashed", "worker sent an unknown error kind"
                if not isinstance(text, str):
                    text = str(kind)
                results[index] = ExecResult.failure(kind, text[: limits.max_message_chars], seconds)
            if reply.get("recycle"):
                w.retiring = True
        w.started_at = time.monotonic()
        return True

    def _enforce_deadlines(
        self, queue: collections.deque[int], limits: Limits, results: list[ExecResult | None]
    ) -> None:
        now = time.monotonic()
        for slot, w in enumerate(self._workers):
            if w is None:
                continue
            if w.pending and now >= w.started_at + limits.wall_seconds:
                w.kill()
                results[w.pending.popleft()] = ExecResult.failure(
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
) -> list[ExecResult]:
    """Run programs in a shared persistent pool (one per worker count); see `SandboxPool.run`."""
    limits = limits or Limits()
    key = (limits.workers, _preload_for(check, inject))
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None or pool._closed:
            pool = _POOLS[key] = SandboxPool(limits, preload=key[1])
    return pool.run(sources, entry, check, limits=limits, seeds=seeds, inject=inject, call=call)


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS.values()):
        pool.close()
    _POOLS.clear()
