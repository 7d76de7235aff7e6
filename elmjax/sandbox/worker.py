"""The sandbox worker: a long-lived process that runs one untrusted program after another.

A worker is forked by the multiprocessing fork server (a fresh interpreter that has imported
this module and nothing of JAX), then `serve` locks it down once: no core files, no file writes,
an empty working directory, `socket`/`ctypes`/`subprocess` made unimportable and, when started as
root, the identity of the unprivileged user `nobody`. After that it reads batches of programs
from the caller and, for each, sets that program's CPU and memory limits, parses, checks the AST
policy, runs the entry function, runs `check` on its result, checks that the result is plain data
and sends back JSON. The caller only ever decodes JSON from a worker, so nothing a program built
(or a compromised worker wrote) is unpickled on the caller's side.

CPU time: a profiling timer (ITIMER_PROF, precise) raises `_Expired` when the program's budget is
spent; the RLIMIT_CPU soft limit, reset before each program because the counter is per process
and only grows, is the kernel's backstop (SIGXCPU, same handler). A program that swallows the
exception is still reported as a timeout, and one that keeps running is killed by the caller's
wall-clock limit.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import math
import os
import resource
import signal
import sys
import time
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from elmjax.sandbox.policy import (
    ForbiddenImport,
    PolicyError,
    check_tree,
    needs_tree_check,
    program_globals,
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
#: Deepest nesting of a program's result.
MAX_RESULT_DEPTH = 64
#: CPU seconds allowed for turning a program's exception into a message (its `__str__` is
#: program code); a short budget of its own, so a `__str__` that never returns is cut off well
#: before the caller's wall-clock limit and the program still gets its `exception` kind.
MESSAGE_CPU_SECONDS = 0.25


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


def serve(conn: Connection, workdir: str, preload: tuple[str, ...]) -> None:
    """Worker main loop: lock down, say ready, then run batches until the caller hangs up."""
    _lock_down(workdir, preload)
    conn.send_bytes(b'{"ready": true}')
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        job = batch["job"]
        for index, source, seed in batch["tasks"]:
            reply = _run_one(source, seed, job)
            reply["index"] = index
            # one message per program, sent before the next starts: replies held back to be
            # sent in groups would die with a worker killed by the next program's wall clock
            conn.send_bytes(b"[" + _encode(reply) + b"]")
            if reply.get("recycle"):
                return  # after a MemoryError the heap may be fragmented: start afresh


def _lock_down(workdir: str, preload: tuple[str, ...]) -> None:
    signal.signal(signal.SIGPROF, _on_cpu_limit)
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's business
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails, not kills
    for name in (*LAZY_STDLIB, *preload):  # import now, while the files are still readable
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    warnings.simplefilter("ignore")  # e.g. SyntaxWarnings from compiling a program
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing a worker does reaches the caller's terminal
    os.dup2(devnull, 2)
    os.close(devnull)
    os.chdir(workdir)
    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    if os.geteuid() == 0:
        _drop_privileges()
    if os.geteuid() != 0:  # root ignores RLIMIT_NPROC; everyone else can no longer fork
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    for name in BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]


def _drop_privileges() -> None:
    uid, gid = unprivileged_ids()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise RuntimeError("sandbox worker could not drop root privileges")


def unprivileged_ids() -> tuple[int, int]:
    """(uid, gid) of `nobody`, the user root workers run as."""
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


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


def _run_one(source: str, seed: int, job: dict[str, Any]) -> dict[str, Any]:
    limits = job["limits"]
    start = time.perf_counter()
    _set_limits(limits)
    _Clock.expired = False
    _Clock.armed = True
    signal.setitimer(signal.ITIMER_PROF, limits["cpu_seconds"])
    try:
        reply = _guarded(source, seed, job)
    except BaseException as exc:  # a second timer signal inside the handling code, at worst
        reply = _failure("timeout" if _Clock.expired else "crashed", type(exc).__name__)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        _Clock.armed = False
        _clear_limits()
    reply["seconds"] = time.perf_counter() - start
    return reply


def _guarded(source: str, seed: int, job: dict[str, Any]) -> dict[str, Any]:
    limits = job["limits"]
    stage = ["parse"]
    try:
        return _execute(source, seed, job, stage)
    except _Expired:
        return _failure("timeout", f"CPU time limit of {limits['cpu_seconds']:g} s exceeded")
    except MemoryError:
        reply = _failure(
            "memory", f"memory limit of {limits['address_space_bytes'] >> 20} MiB exceeded"
        )
        reply["recycle"] = True
        return reply
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
            code = compile(tree, PROGRAM_FILENAME, "exec", dont_inherit=True)
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
    if isinstance(exc, ForbiddenImport):
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
    try:
        _Clock.armed = True
        signal.setitimer(signal.ITIMER_PROF, MESSAGE_CPU_SECONDS)
        text = str(exc)
        if type(text) is not str:
            text = ""
        text = text[:max_chars]
    except BaseException:
        text = ""
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
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
    """A copy of `value` made of dict (str keys)/list/str/int/float/bool/None only, with tuples
    as lists; raises NotPlainData for anything else, for nesting deeper than MAX_RESULT_DEPTH and
    for more than about `max_bytes` of data."""
    budget = [max_bytes]

    def walk(v: Any, depth: int) -> Any:
        budget[0] -= 8
        if budget[0] < 0:
            raise NotPlainData(f"result is larger than {max_bytes} bytes")
        if depth > MAX_RESULT_DEPTH:
            raise NotPlainData(f"result is nested deeper than {MAX_RESULT_DEPTH}")
        t = type(v)
        if v is None or t is bool or t is float:
            return v
        if t is int:
            if v.bit_length() > 64:
                raise NotPlainData("result holds an integer wider than 64 bits")
            return v
        if t is str:
            budget[0] -= len(v)
            if budget[0] < 0:
                raise NotPlainData(f"result is larger than {max_bytes} bytes")
            return v
        if t is list or t is tuple:
            return [walk(x, depth + 1) for x in v]
        if t is dict:
            out = {}
            for k, x in v.items():
                if type(k) is not str:
                    raise NotPlainData(f"result dict key of type {type(k).__name__}")
                out[walk(k, depth + 1)] = walk(x, depth + 1)
            return out
        raise NotPlainData(f"result holds a {t.__name__}, not plain data")

    return walk(value, 0)


def _failure(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "message": message}


def _encode(reply: dict[str, Any]) -> bytes:
    try:
        return json.dumps(reply).encode()
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        fallback = _failure("invalid", f"result cannot be encoded: {type(exc).__name__}")
        fallback["index"] = reply["index"]
        fallback["seconds"] = reply.get("seconds", 0.0)
        return json.dumps(fallback).encode()


# ---- limits --------------------------------------------------------------------------------------


def _set_limits(limits: dict[str, Any]) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    spent = usage.ru_utime + usage.ru_stime
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(math.ceil(spent + limits["cpu_seconds"])) + 1
    if cpu_hard != resource.RLIM_INFINITY:
        soft = min(soft, cpu_hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
    _, as_hard = resource.getrlimit(resource.RLIMIT_AS)
    space = limits["address_space_bytes"]
    if as_hard != resource.RLIM_INFINITY:
        space = min(space, as_hard)
    resource.setrlimit(resource.RLIMIT_AS, (space, as_hard))


def _clear_limits() -> None:
    for which in (resource.RLIMIT_CPU, resource.RLIMIT_AS):
        _, hard = resource.getrlimit(which)
        resource.setrlimit(which, (hard, hard))
