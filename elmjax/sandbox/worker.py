"""The sandbox worker: a locked-down template that forks the processes programs run in.

A worker is forked by the multiprocessing fork server (a fresh interpreter that has imported
this module and nothing of JAX). `serve` imports everything a program may need, clears the
environment, then enters the OS layers of `isolation.py` (namespaces, rlimits, `nobody`,
no_new_privs, Landlock, seccomp) and becomes a *template*: it forks a child, a *program
process*, which closes every descriptor but its own two pipes, sets its CPU and memory limits
and adds the program seccomp filter (no fork, no signals, no rlimit changes) before it parses
anything. The template hands it a batch of programs down one pipe; it runs them one after the
other and writes each reply (`wire.py`) up the other; the template bounds the replies and
forwards them without decoding them (the caller decodes and validates them against the
environment's schema).

A program process runs the next program only after one that left nothing behind (`_reusable`:
its text took the policy's fast path, it ended normally, and once its garbage, finalisers
included, was collected on its own clock, the heap was as it found it), and at most
MAX_PROGRAMS_PER_PROCESS programs in all; it may wait, idle and silent, for the next batch of
the same job. Anything else retires it, and the rest of the batch goes to a fresh fork of the
template; `Limits.reuse_clean_process=False` retires it after every program. A retired process
exits with `os._exit`, running no finaliser.

A program itself runs in `program.py` (`run_program`), on its own CPU clock; the template
enforces its wall-clock limit (SIGKILL to its process), and the caller, a grace period later,
that of a template that stops answering.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import json
import marshal
import os
import select
import signal
import sys
import time
import warnings
from multiprocessing.connection import Connection
from typing import Any

from elmjax.sandbox import wire
from elmjax.sandbox.isolation import (
    CLONE_NEWPID,
    LAYERS,
    LayerUnavailable,
    die_with_parent,
    enter_namespaces,
    load_bpf,
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
#: Most programs one program process runs (each after a predecessor that left nothing behind)
#: before it retires and the next program gets a fresh fork: the bound on how many programs a
#: program that went undetected could reach (see README, "limits").
MAX_PROGRAMS_PER_PROCESS = 64

# ---- start-up ------------------------------------------------------------------------------------


def serve(
    conn: Connection, workdir: str, preload: tuple[str, ...], layers: tuple[str, ...] = LAYERS
) -> None:
    """Worker main: prepare, enter the OS layers, say ready (with the layer report), then run
    batches until the caller hangs up. Programs run in processes forked from this locked-down
    template, and a process serves another program only after one that left nothing behind
    (memory, finalisers, module state, a patched `check`), so nothing reaches the next program
    through its process."""
    wanted = frozenset(layers)
    _prepare(workdir, preload)
    report: dict[str, str] = {}
    enter_namespaces(wanted, report)
    if "pid_namespace" in wanted:
        _enter_pid_namespace(conn, report)
    program_filter = lock_down(wanted, report)
    gc.collect()
    gc.freeze()  # the children's garbage collector leaves the template's pages shared
    conn.send_bytes(json.dumps({"ready": True, "layers": report}).encode())
    process = None
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        process = _run_batch(list(batch["tasks"]), batch["job"], program_filter, conn, process)


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


class _ProgramProcess:
    """The template's end of one program process: its pid, the pipe its tasks go down (a
    frame of marshalled `(source, seed)` pairs per batch; non-blocking here), the pipe its
    replies come up, a pidfd that is readable once it exits, and the job it was forked for."""

    def __init__(self, job: dict[str, Any], program_filter: bytes | None) -> None:
        self.job = job
        task_read, self.tasks = os.pipe()
        self.replies, reply_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.tasks)
            os.close(self.replies)
            _child(job, program_filter, task_read, reply_write)  # never returns
        os.close(task_read)
        os.close(reply_write)
        # (not os.set_blocking: it uses ioctl, which the template's filter refuses)
        fcntl.fcntl(
            self.tasks, fcntl.F_SETFL, fcntl.fcntl(self.tasks, fcntl.F_GETFL) | os.O_NONBLOCK
        )
        try:  # readable when the child exits (Linux 5.3+); without it, the pipe's end stands in
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = -1

    def idle_and_quiet(self) -> bool:
        """Between batches the process waits for tasks, saying nothing: one that has exited,
        or written anything out of turn, is not handed another program."""
        watched = [self.replies] + ([self.pidfd] if self.pidfd >= 0 else [])
        return not select.select(watched, [], [], 0)[0]

    def end(self) -> int:
        """Kill (whatever it was doing, it has nothing left to say), reap, close; the wait
        status."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        for fd in (self.tasks, self.replies, self.pidfd):
            if fd >= 0:
                os.close(fd)
        return status


def _run_batch(
    tasks: list[tuple[int, str, int]],
    job: dict[str, Any],
    program_filter: bytes | None,
    conn: Connection,
    process: _ProgramProcess | None,
) -> _ProgramProcess | None:
    """Run a batch's programs in program processes of this template, forwarding each reply;
    returns the process still fit to serve the next batch of the same job, if any."""
    done = 0
    while done < len(tasks):
        if process is not None and (process.job != job or not process.idle_and_quiet()):
            process.end()
            process = None
        if process is None:
            process = _ProgramProcess(job, program_filter)
        done, fit = _serve(process, tasks, done, conn)
        if not fit:  # (`_serve` has ended it)
            process = None
    return process


def _serve(
    process: _ProgramProcess, tasks: list[tuple[int, str, int]], first: int, conn: Connection
) -> tuple[int, bool]:
    """Hand `tasks[first:]` to `process` (only `tasks[first]` when processes are not reused: a
    process meant for one program is never given another to answer for, and is killed after
    its reply) and forward its replies until it has answered them all, retires, dies or is past
    a program's wall-clock limit; returns the position of the first task not settled and
    whether the process may serve more (if not, it has been ended).

    The process's replies are frames on a pipe of its own. The template checks their sizes and
    the wall-clock limit of the program in progress (the process is killed), and forwards
    what has arrived in one write, without decoding it: the caller decodes and validates it.
    """
    limits = process.job["limits"]
    max_bytes = limits["max_result_bytes"] + REPLY_OVERHEAD_BYTES
    end = len(tasks) if limits["reuse_clean_process"] else first + 1
    outgoing = memoryview(
        wire.frame(marshal.dumps([(src, seed) for _, src, seed in tasks[first:end]]))
    )
    poller = select.poll()
    poller.register(process.replies, select.POLLIN)
    poller.register(process.tasks, select.POLLOUT)
    if process.pidfd >= 0:
        poller.register(process.pidfd, select.POLLIN)
    watching = 2 if process.pidfd >= 0 else 1  # the reply pipe, and the pidfd
    buffer = bytearray()
    position = first
    problem = None
    recycled = False
    started = time.monotonic()
    while True:
        forward = []
        while len(buffer) >= 4:  # every complete frame: one program's reply
            size = int.from_bytes(buffer[:4], "big")
            if size > max_bytes:
                problem = "size"
                break
            if len(buffer) < 4 + size:
                break
            payload = bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]
            if not payload:  # the process's word that it leaves and wants no more work
                recycled = True
                break
            now = time.monotonic()
            forward.append(wire.outcome(tasks[position][0], now - started, 0, None, payload))
            position += 1
            started = now
            if position == end:
                break
        if forward:
            _send(conn, b"".join(forward))
        if position == end or problem is not None or recycled or not watching:
            break  # (not watching: the process is gone and said nothing more)
        left = started + limits["wall_seconds"] - time.monotonic()
        if left <= 0:
            problem = "wall"
            break
        for fd, event in poller.poll(left * 1000):
            if fd == process.replies:
                data = os.read(fd, 1 << 16)
                if data:
                    buffer += data
                    continue
            elif fd == process.tasks and not event & (select.POLLERR | select.POLLHUP):
                try:
                    outgoing = outgoing[os.write(fd, outgoing) :]
                except BlockingIOError:
                    continue
                except OSError:  # the process has gone: its replies and pidfd say how
                    outgoing = outgoing[:0]
                if outgoing:
                    continue
            poller.unregister(fd)  # written out, exited, or at the end of its pipe
            watching -= fd != process.tasks
    if (  # (anything past the last reply: it retires, or lies)
        position == end
        and problem is None
        and not recycled
        and not buffer
        and limits["reuse_clean_process"]
    ):
        return position, True
    status = process.end()
    if recycled or position == end:
        return position, False
    # the process died, or was killed, while running tasks[position]
    if problem is None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        status = -signal.SIGKILL  # died of its own accord (RLIMIT_CPU's hard limit, say)
    else:
        status = os.waitstatus_to_exitcode(status) if problem is None else 0
    seconds = time.monotonic() - started
    _send(conn, wire.outcome(tasks[position][0], seconds, status, problem, b""))
    return position + 1, False


def _send(conn: Connection, data: bytes) -> None:
    """Write whole frames to the caller. Replies go as soon as they are known, never held back
    for more: a reply held back would die with a process killed by the next program's wall
    clock."""
    view = memoryview(data)
    fd = conn.fileno()
    while view:
        view = view[os.write(fd, view) :]


def _child(
    job: dict[str, Any], program_filter: bytes | None, task_read: int, reply_write: int
) -> None:
    """A program process: lock itself down further, then run the programs of each batch it is
    handed while they leave nothing behind (see `_reusable`), up to MAX_PROGRAMS_PER_PROCESS."""
    code = 0
    try:
        die_with_parent()
        low, high = sorted((task_read, reply_write))
        os.closerange(3, low)  # the caller's pipe above all: no message but its own
        os.closerange(low + 1, high)
        os.closerange(high + 1, MAX_FDS)
        limits = job["limits"]
        # RLIMIT_CPU counts the whole process: the budget of every program it may run (each
        # program's own budget is its CPU timer; the template's wall clock is the backstop)
        program_rlimits(
            limits["cpu_seconds"] * MAX_PROGRAMS_PER_PROCESS, limits["address_space_bytes"]
        )
        if program_filter is not None:
            load_bpf(program_filter)

        def stop(reply: bytes) -> None:  # a program that will not stop: answer, retire, exit
            _write_frame(reply_write, reply)
            _write_frame(reply_write, b"")
            os._exit(0)

        gc.collect()  # the baseline of `_reusable`: no garbage, empty free lists
        served = 0
        while True:
            tasks = _read_tasks(task_read)
            if tasks is None:
                break
            for source, seed in tasks:
                before = sys.getallocatedblocks()
                data, clean = run_program(source, seed, job, stop)
                _write_frame(reply_write, data)
                del data
                served += 1
                if not (
                    clean
                    and limits["reuse_clean_process"]
                    and served < MAX_PROGRAMS_PER_PROCESS
                    and _reusable(source, before)
                ):
                    _write_frame(reply_write, b"")
                    return
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _read_tasks(fd: int) -> list[tuple[str, int]] | None:
    """The next batch from the template (blocking: the process has nothing else to do); None
    when the template has hung up."""
    head = _read_exactly(fd, 4)
    if head is None:
        return None
    body = _read_exactly(fd, int.from_bytes(head, "big"))
    return None if body is None else marshal.loads(body)


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


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
