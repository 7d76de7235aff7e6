"""The sandbox worker: a locked-down template that forks the processes programs run in.

A worker is forked by the multiprocessing fork server (a fresh interpreter that has imported
this module and nothing of JAX). `serve` imports everything a program may need, clears the
environment, then enters the OS layers of `isolation.py` (namespaces, rlimits, `nobody`,
no_new_privs, Landlock, seccomp) and becomes a *template*: for a batch of programs it forks a
child, which closes every descriptor but its own reply pipe, sets its CPU and memory limits and
adds the program seccomp filter (no fork, no signals, no rlimit changes) before it parses
anything. The child runs the batch's programs one after the other and writes each JSON reply to
its pipe; the template bounds the replies and forwards them without decoding them (the caller
decodes and validates them against the environment's schema).

A child runs the next program only after one that left nothing behind (`_reusable`: its text
took the policy's fast path, it ended normally, and once its garbage, finalisers included, was
collected on its own clock, the heap was as it found it). Anything else retires the child, and
the rest of the batch goes to a fresh fork of the template; `Limits.reuse_clean_process=False`
retires it after every program. A retired child exits with `os._exit`, running no finaliser.

A program itself runs in `program.py` (`run_program`), on its own CPU clock; the template
enforces its wall-clock limit (SIGKILL to its process), and the caller, a grace period later,
that of a template that stops answering.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import sys
import time
import warnings
from multiprocessing.connection import Connection
from typing import Any

from elmjax.sandbox.isolation import (
    CLONE_NEWPID,
    LAYERS,
    LayerUnavailable,
    die_with_parent,
    enter_namespaces,
    lock_down,
    program_rlimits,
    unshare,
)
from elmjax.sandbox.policy import needs_tree_check
from elmjax.sandbox.program import on_cpu_limit as _on_cpu_limit
from elmjax.sandbox.program import resolve, run_program

__all__ = ["resolve", "serve"]

BLOCKED_MODULES = ("socket", "_socket", "ctypes", "_ctypes", "subprocess", "_posixsubprocess")
#: Standard modules the allowed modules import lazily (e.g. `Counter.most_common` -> heapq;
#: the parser -> unicodedata for non-ASCII identifiers).
#: Imported at start-up, while the interpreter's files are still readable: an unprivileged
#: worker may not be able to read them later (a Python installed under /root, say).
LAZY_STDLIB = (
    "heapq", "copy", "bisect", "operator", "keyword", "reprlib", "unicodedata", "encodings.latin_1",
)  # fmt: skip
#: Bytes a reply may hold beyond the program's result (its kind, message, timing, framing).
REPLY_OVERHEAD_BYTES = 64 * 1024
#: Descriptors a child closes (the worker's RLIMIT_NOFILE is 64).
MAX_FDS = 1024
#: Deepest nesting of a program's result.

# ---- start-up ------------------------------------------------------------------------------------


def serve(
    conn: Connection, workdir: str, preload: tuple[str, ...], layers: tuple[str, ...] = LAYERS
) -> None:
    """Worker main: prepare, enter the OS layers, say ready (with the layer report), then run
    batches until the caller hangs up. Each program runs in a child forked from this locked-down
    template, so nothing one program leaves behind (memory, finalisers, module state, a patched
    `check`) reaches the next, and nothing it does can forge another program's reply."""
    wanted = frozenset(layers)
    _prepare(workdir, preload)
    report: dict[str, str] = {}
    enter_namespaces(wanted, report)
    if "pid_namespace" in wanted:
        _enter_pid_namespace(conn, report)
    child_filter = lock_down(wanted, report)
    gc.collect()
    gc.freeze()  # the children's garbage collector leaves the template's pages shared
    conn.send_bytes(json.dumps({"ready": True, "layers": report}).encode())
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        job = batch["job"]
        _run_batch(list(batch["tasks"]), job, child_filter, conn)


def _prepare(workdir: str, preload: tuple[str, ...]) -> None:
    signal.signal(signal.SIGPROF, _on_cpu_limit)
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's business
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails, not kills
    for name in (*LAZY_STDLIB, *preload):  # import now: the filesystem is closed later
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    warnings.simplefilter("ignore")  # e.g. SyntaxWarnings from compiling a program
    os.environ.clear()  # the caller's environment is no program's business (also unsetenv)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # nothing a worker does reaches the caller's terminal
    os.dup2(devnull, 2)
    os.close(devnull)
    os.chdir(workdir)
    os.umask(0o077)
    for name in BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]


def _enter_pid_namespace(conn: Connection, report: dict[str, str]) -> None:
    """Fork the template as process 1 of a new pid namespace: programs see no process outside
    it, and when the template dies the kernel kills every program process with it. The process
    the pool started stays outside, holding nothing, and exits with the template."""
    try:
        unshare(CLONE_NEWPID)
    except LayerUnavailable as exc:
        report["pid_namespace"] = f"unavailable: {exc}"
        return
    pid = os.fork()
    if pid:
        conn.close()
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                os._exit(1)
            except InterruptedError:
                continue
        os._exit(os.waitstatus_to_exitcode(status) & 0x7F)
    die_with_parent()
    report["pid_namespace"] = "active"


def _run_batch(
    tasks: list[tuple[int, str, int]], job: dict[str, Any], child_filter: Any, conn: Connection
) -> None:
    """Run a batch's programs in children of this template, forwarding each reply."""
    done = 0
    while done < len(tasks):
        done = _run_child(tasks, done, job, child_filter, conn)


def _run_child(
    tasks: list[tuple[int, str, int]],
    first: int,
    job: dict[str, Any],
    child_filter: Any,
    conn: Connection,
) -> int:
    """Fork a child for `tasks[first:]` and forward its replies until it exits, is killed or
    has answered them all; returns the position of the first task not settled.

    The child's replies are length-prefixed frames on a pipe of its own. The template checks
    their sizes and the wall-clock limit of the program in progress (SIGKILL to the child), and
    forwards each reply without decoding it: the caller decodes and validates it.
    """
    limits = job["limits"]
    max_bytes = limits["max_result_bytes"] + REPLY_OVERHEAD_BYTES
    read_end, write_end = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(tasks[first:], job, child_filter, write_end)  # never returns
    os.close(write_end)
    try:  # readable when the child exits (Linux 5.3+); without it, the pipe's end stands in
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    watched = {read_end}
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
        watched.add(pidfd)
    buffer = bytearray()
    position = first
    problem = None
    recycled = False
    try:
        while position < len(tasks) and problem is None and not recycled:
            while len(buffer) >= 4:  # every complete frame: one program's reply
                size = int.from_bytes(buffer[:4], "big")
                if size > max_bytes:
                    problem = "size"
                    break
                if len(buffer) < 4 + size:
                    break
                payload = bytes(buffer[4 : 4 + size])
                del buffer[: 4 + size]
                if not payload:  # the child's word that it leaves and wants no more work
                    recycled = True
                    break
                now = time.monotonic()
                _forward(conn, tasks[position][0], now - started, 0, None, payload)
                position += 1
                started = now
                if position == len(tasks):
                    break
            if position == len(tasks) or problem is not None or recycled:
                break
            if not watched:  # the child is gone and said nothing more
                break
            left = started + limits["wall_seconds"] - time.monotonic()
            if left <= 0:
                problem = "wall"
                break
            for fd, _ in poller.poll(left * 1000):
                if fd == pidfd:
                    watched.discard(pidfd)
                    poller.unregister(pidfd)
                    continue
                data = os.read(read_end, 1 << 16)
                if data:
                    buffer += data
                else:
                    watched.discard(read_end)
                    poller.unregister(read_end)
    finally:
        os.close(read_end)
        if pidfd >= 0:
            os.close(pidfd)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # whatever it was doing, it has nothing left to say
    _, status = os.waitpid(pid, 0)
    if recycled or position == len(tasks):
        return position
    # the child died, or was killed, while running tasks[position]
    if problem is None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        status = -signal.SIGKILL  # died of its own accord (RLIMIT_CPU's hard limit, say)
    else:
        status = os.waitstatus_to_exitcode(status) if problem is None else 0
    _forward(conn, tasks[position][0], time.monotonic() - started, status, problem, b"")
    return position + 1


def _forward(
    conn: Connection, index: int, seconds: float, status: int, problem: str | None, body: bytes
) -> None:
    header: dict[str, Any] = {"index": index, "seconds": seconds, "status": status}
    if problem is not None:
        header["problem"] = problem
    # one message per program, sent as soon as it is known: replies held back to be sent in
    # groups would die with a worker killed by the caller's deadline
    conn.send_bytes(json.dumps(header).encode() + b"\n" + body)


def _child(
    tasks: list[tuple[int, str, int]], job: dict[str, Any], child_filter: Any, write_end: int
) -> None:
    """A program's process: lock itself down further, then run programs while they leave
    nothing behind (see `_reusable`)."""
    code = 0
    try:
        die_with_parent()
        os.closerange(3, write_end)  # the caller's pipe above all: no message but its own
        os.closerange(write_end + 1, MAX_FDS)
        limits = job["limits"]
        # RLIMIT_CPU counts the whole process: the budget of every program it may run
        program_rlimits(limits["cpu_seconds"] * len(tasks), limits["address_space_bytes"])
        if child_filter is not None:
            child_filter.load()
        gc.collect()  # the baseline of `_reusable`: no garbage, empty free lists
        for _, source, seed in tasks:
            before = sys.getallocatedblocks()
            data, clean = run_program(source, seed, job)
            _write_frame(write_end, data)
            del data
            if not (clean and limits["reuse_clean_process"] and _reusable(source, before)):
                _write_frame(write_end, b"")
                break
    except BaseException:
        code = 70
    finally:
        os._exit(code)


#: Allocated blocks a program may leave in its process (free lists and caches settle within a
#: few blocks) and still be followed by another program there. More is a program that left
#: something behind: the process is retired.
LEFTOVER_BLOCKS = 32


def _reusable(source: str, blocks_before: int) -> bool:
    """May the next program run in this process? Only after a program whose text took the fast
    path (provably no AST rule in reach), that ended as an ordinary result or error (no timeout,
    no memory error), whose garbage, finalisers included, was collected on its own clock (in
    `_run_one`), and that left the heap as it found it."""
    return (
        not needs_tree_check(source) and sys.getallocatedblocks() - blocks_before <= LEFTOVER_BLOCKS
    )


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        view = view[os.write(fd, view) :]
