"""The sandbox worker: a locked-down template that forks one child per untrusted program.

A worker is forked by the multiprocessing fork server (a fresh interpreter that has imported
this module and nothing of JAX). `serve` imports everything a program may need, clears the
environment, then enters the OS layers of `isolation.py` (namespaces, rlimits, `nobody`,
no_new_privs, Landlock, seccomp) and becomes a *template*: for each program it forks a child,
which closes every descriptor but its own reply pipe, sets that program's CPU and memory limits,
adds the program seccomp filter (no fork, no signals, no rlimit changes) and only then parses,
checks the AST policy, runs the entry function, runs `check` on its result, checks that the
result is plain data and writes JSON to its pipe. The template bounds and forwards those bytes
without decoding them; the caller decodes and validates them against the environment's schema.
A child is fresh from the template, so nothing one program leaves behind (memory, finalisers,
module state, a `__del__` or a suspended generator) reaches the next, and its exit runs none of
its finalisers (`os._exit`).

CPU time: a profiling timer (ITIMER_PROF, precise) raises `_Expired` when the program's budget is
spent; the child's RLIMIT_CPU (its counter starts at zero: it is a fresh process) is the
kernel's backstop (SIGXCPU, same handler, then SIGKILL a second later). A program that swallows
the exception is still reported as a timeout; one that blocks is killed by the template's
wall-clock limit, and a template that stops answering by the caller's.
"""

from __future__ import annotations

import ast
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
from collections.abc import Callable
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
from elmjax.sandbox.policy import (
    ForbiddenAccess,
    ForbiddenImport,
    PolicyError,
    check_tree,
    needs_tree_check,
    program_globals,
    rewrite_tree,
)

#: The file name programs are compiled under; frames with it are the program's own code.
PROGRAM_FILENAME = "<program>"
#: Modules a worker makes unimportable (defence in depth behind the AST policy).
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
MAX_RESULT_DEPTH = 64
#: CPU seconds allowed for turning a program's exception into a message (its `__str__` is
#: program code); a short budget of its own, so a `__str__` that never returns is cut off well
#: before the caller's wall-clock limit and the program still gets its `exception` kind.
MESSAGE_CPU_SECONDS = 0.25


_INF = float("inf")


class _Expired(BaseException):
    """The program's CPU budget is spent (raised from the timer's signal handler)."""


class OutputLimitExceeded(Exception):
    """The program printed more than `Limits.max_output_bytes`."""


class NotPlainData(Exception):
    """`check` returned something other than dict/list/str/int/float/bool/None, or too much."""


class _Clock:
    armed = False
    expired = False


def _on_cpu_limit(signum: int, frame: Any) -> None:
    if _Clock.armed:
        _Clock.expired = True
        raise _Expired()


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
            data, clean = _run_one(source, seed, job)
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


# ---- one program ---------------------------------------------------------------------------------

_resolved: dict[str, Any] = {}


def resolve(ref: str) -> Any:
    """'package.module:attr.path' -> the object (cached)."""
    if ref not in _resolved:
        module_name, _, path = ref.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in path.split("."):
            obj = getattr(obj, part)
        _resolved[ref] = obj
    return _resolved[ref]


def _api_files(job: dict[str, Any]) -> frozenset[str]:
    """Source files of the injected API and of `check`: an exception raised in them means the
    program broke a rule of the API (`invalid`), not that its own code failed (`exception`)."""
    files = set()
    for ref in [job["check"], *job["inject"].values()]:
        module = sys.modules.get(ref.partition(":")[0])
        if module is not None and getattr(module, "__file__", None):
            files.add(module.__file__)
    return frozenset(files)


def _run_one(source: str, seed: int, job: dict[str, Any]) -> tuple[bytes, bool]:
    """One program, start to finish, on its own CPU clock: (its JSON reply, whether it ended
    normally with its garbage collected). The collection runs on the program's clock, so a
    finaliser it left behind (a suspended generator's `finally`) runs now and is charged to it;
    it also clears the interpreter's free lists, which `_reusable` relies on."""
    limits = job["limits"]
    start = time.perf_counter()
    _Clock.expired = False
    _Clock.armed = True
    signal.setitimer(signal.ITIMER_PROF, limits["cpu_seconds"])
    clean = False
    try:
        reply = _guarded(source, seed, job)
        reply["seconds"] = time.perf_counter() - start
        ran_normally = reply.get("kind") not in ("timeout", "memory")
        data = _encode(reply)
        del reply
        if ran_normally:
            gc.collect()
            clean = not _Clock.expired
    except BaseException as exc:  # a finaliser past the budget; a second timer signal
        reply = _failure("timeout" if _Clock.expired else "crashed", type(exc).__name__)
        if _Clock.expired:
            reply["message"] = f"CPU time limit of {limits['cpu_seconds']:g} s exceeded"
        reply["seconds"] = time.perf_counter() - start
        data = _encode(reply)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        _Clock.armed = False
    return data, clean


def _guarded(source: str, seed: int, job: dict[str, Any]) -> dict[str, Any]:
    limits = job["limits"]
    stage = ["parse"]
    try:
        return _execute(source, seed, job, stage)
    except _Expired:
        return _failure("timeout", f"CPU time limit of {limits['cpu_seconds']:g} s exceeded")
    except MemoryError:
        return _failure(
            "memory", f"memory limit of {limits['address_space_bytes'] >> 20} MiB exceeded"
        )
    except BaseException as exc:
        if _Clock.expired:  # the program caught the timer's exception and carried on
            return _failure("timeout", f"CPU time limit of {limits['cpu_seconds']:g} s exceeded")
        kind = _kind(exc, stage[0], job)
        return _failure(kind, _describe(exc, limits["max_message_chars"]))


def _execute(source: str, seed: int, job: dict[str, Any], stage: list[str]) -> dict[str, Any]:
    limits = job["limits"]
    chars = limits["max_message_chars"]
    try:
        if needs_tree_check(source):
            tree = ast.parse(source, PROGRAM_FILENAME)
            try:
                check_tree(tree)
            except PolicyError as exc:
                return _failure("forbidden", str(exc)[:chars])
            code = compile(rewrite_tree(tree), PROGRAM_FILENAME, "exec", dont_inherit=True)
            del tree
        else:
            code = compile(source, PROGRAM_FILENAME, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return _failure("syntax", f"line {exc.lineno}: {exc.msg}"[:chars])
    except (RecursionError, ValueError, OverflowError) as exc:  # too deep / NUL bytes
        return _failure("syntax", f"{type(exc).__name__}: {exc}"[:chars])

    inject = {name: resolve(ref) for name, ref in job["inject"].items()}
    check = resolve(job["check"])
    violations: list[str] = []
    sink = _print_sink(limits["max_output_bytes"])
    namespace = program_globals(seed, inject, sink, violations)
    stage[0] = "program"
    try:
        exec(code, namespace)
        entry = namespace.get(job["entry"])
        if not callable(entry):
            return _failure("invalid", f"program does not define {job['entry']}()")
        value = entry() if job["call"] else entry
        stage[0] = "check"
        data = _plain(check(value), limits["max_result_bytes"])
    except BaseException:
        if violations and not _Clock.expired:
            return _failure("forbidden", violations[0][:chars])
        raise
    if violations:  # a refused import the program caught and carried on from
        return _failure("forbidden", violations[0][:chars])
    if _Clock.expired:
        raise _Expired()
    return {"ok": True, "value": data}


def _kind(exc: BaseException, stage: str, job: dict[str, Any]) -> str:
    if isinstance(exc, ForbiddenImport | ForbiddenAccess):
        return "forbidden"
    if isinstance(exc, OutputLimitExceeded | NotPlainData):
        return "invalid"
    if isinstance(exc, RecursionError):
        return "exception"
    innermost = None
    tb = exc.__traceback__
    while tb is not None:
        innermost = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if innermost == PROGRAM_FILENAME:
        return "exception"
    if stage == "check" or innermost in _api_files(job):
        return "invalid"
    return "exception"


def _describe(exc: BaseException, max_chars: int) -> str:
    """'Type: message (line N)', bounded. `str(exc)` is the program's code: it runs under the
    program's CPU limit and, if it fails or never returns, the type name stands alone."""
    name = type(exc).__name__
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == PROGRAM_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    remaining = signal.getitimer(signal.ITIMER_PROF)[0]
    try:
        _Clock.armed = True
        signal.setitimer(signal.ITIMER_PROF, MESSAGE_CPU_SECONDS)
        text = str(exc)
        if type(text) is not str:
            text = ""
        text = text[:max_chars]
    except BaseException:
        text = ""
    finally:  # the rest of the program's budget still covers its garbage collection
        signal.setitimer(signal.ITIMER_PROF, max(remaining, 0.0))
    message = f"{name}: {text}" if text else name
    if line is not None:
        message = f"line {line}: {message}"
    return message[:max_chars]


def _print_sink(max_bytes: int) -> Callable[..., None]:
    """`print` for programs: output is counted and dropped (workers have no terminal)."""
    used = [0]

    def print_(*args: Any, sep: Any = " ", end: Any = "\n", **_: Any) -> None:
        used[0] += sum(len(str(a)) for a in args) + len(str(sep)) * len(args) + len(str(end))
        if used[0] > max_bytes:
            raise OutputLimitExceeded(f"program printed more than {max_bytes} bytes")

    return print_


def _plain(value: Any, max_bytes: int) -> Any:
    """`value` itself, once checked to be made of dict (str keys)/list/tuple/str/int/float/bool/
    None only (exact types: no subclass, so encoding it runs no program code); raises
    NotPlainData for anything else, for a non-finite float, an integer wider than 64 bits,
    nesting deeper than MAX_RESULT_DEPTH and more than about `max_bytes` of data. Iterative,
    with scalars checked inline: this runs on every result."""
    budget = max_bytes
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if t is list or t is tuple:
            items: Any = v
        elif t is dict:
            if any(type(k) is not str for k in v):
                raise NotPlainData("result dict has a key that is not a str")
            budget -= sum(len(k) + 4 for k in v)
            items = v.values()
        else:
            items = (v,)
            depth -= 1
        if depth >= MAX_RESULT_DEPTH:
            raise NotPlainData(f"result is nested deeper than {MAX_RESULT_DEPTH}")
        for x in items:
            tx = type(x)
            if tx is float:
                if x - x != 0.0:  # inf - inf and nan - nan are nan
                    raise NotPlainData("result holds a non-finite number")
                budget -= 8
            elif tx is int:
                if x.bit_length() > 64:
                    raise NotPlainData("result holds an integer wider than 64 bits")
                budget -= 8
            elif tx is str:
                budget -= len(x) + 2
            elif x is None or tx is bool:
                budget -= 4
            elif tx is list or tx is tuple or tx is dict:
                budget -= 2
                stack.append((x, depth + 1))
            else:
                raise NotPlainData(f"result holds a {tx.__name__}, not plain data")
        if budget < 0:
            raise NotPlainData(f"result is larger than {max_bytes} bytes")
    return value


def _failure(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "message": message}


def _encode(reply: dict[str, Any]) -> bytes:
    try:
        return json.dumps(reply).encode()
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        fallback = _failure("invalid", f"result cannot be encoded: {type(exc).__name__}")
        fallback["seconds"] = reply.get("seconds", 0.0)
        return json.dumps(fallback).encode()
