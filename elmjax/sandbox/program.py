"""One untrusted program, start to finish, inside its own process (see `worker.py`).

`run_program` parses the text, checks the AST policy (the fast path skips the syntax tree when
the text provably cannot break a rule), runs the entry function with the program's restricted
globals, runs `check` on its value, checks that the result is plain data and encodes the reply
(`wire.encode_reply`), all on the program's CPU clock: a profiling timer (ITIMER_PROF, precise) raises
`_Expired` when the budget is spent; the process's RLIMIT_CPU is the kernel's backstop (SIGXCPU,
same handler, then SIGKILL). A program that swallows the exception is still reported as a
timeout. Then its cyclic garbage is collected, still on its clock, so a finaliser it left
behind runs now and is charged to it.
"""

from __future__ import annotations

import ast
import gc
import importlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from elmjax.sandbox.policy import PolicyError, check_tree, needs_tree_check, rewrite_tree
from elmjax.sandbox.wire import encode_reply
from elmjax.sandbox.world import ForbiddenAccess, ForbiddenImport, program_globals

PROGRAM_FILENAME = "<program>"
MAX_RESULT_DEPTH = 64
#: CPU seconds allowed for turning a program's exception into a message (its `__str__` is
#: program code); a short budget of its own, so a `__str__` that never returns is cut off well
#: before the caller's wall-clock limit and the program still gets its `exception` kind.
MESSAGE_CPU_SECONDS = 0.25


_STR = {str}


_INF = float("inf")
#: Once the CPU budget is spent, the timer fires again every this many CPU seconds: a signal
#: handler cannot run at the recursion limit (it needs a frame of its own), so a program that
#: catches RecursionError at the limit would otherwise outlive its budget until the wall clock.
TIMER_RETRY_SECONDS = 0.05
#: Bytes of a reply beyond its value (keys, kind, message, timing).
_REPLY_SLACK_BYTES = 1024


class _Expired(BaseException):
    """The program's CPU budget is spent (raised from the timer's signal handler)."""


class OutputLimitExceeded(Exception):
    """The program printed more than `Limits.max_output_bytes`."""


class NotPlainData(Exception):
    """`check` returned something other than dict/list/str/int/float/bool/None, or too much."""


#: CPU seconds past its budget after which a program that keeps swallowing the timer's
#: exception (`except:` in a loop) is stopped outright, rather than left to spin until the wall
#: clock: its process answers `timeout` and exits (see `run_program`'s `stop`).
HARD_STOP_SECONDS = 0.5


class _Clock:
    armed = False
    expired = False
    stop_at = _INF  # process CPU seconds at which `stop` ends the program
    stop: Callable[[], None] | None = None


def on_cpu_limit(signum: int, frame: Any) -> None:
    if _Clock.armed:
        _Clock.expired = True
        if _Clock.stop is not None and time.process_time() >= _Clock.stop_at:
            _Clock.stop()
        raise _Expired()


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


def run_program(
    source: str,
    seed: int,
    job: dict[str, Any],
    stop: Callable[[bytes], None] | None = None,
) -> tuple[bytes, bool]:
    """One program, start to finish, on its own CPU clock: (its encoded reply, whether it ended
    normally with its garbage collected). The collection runs on the program's clock, so a
    finaliser it left behind (a suspended generator's `finally`) runs now and is charged to it;
    it also clears the interpreter's free lists, which `_reusable` relies on.

    `stop(reply)`, if given, must send the reply and end the process (it does not return): it
    is called from the timer's handler with a `timeout` reply once the program is
    HARD_STOP_SECONDS of CPU past its budget and still running."""
    limits = job["limits"]
    start = time.perf_counter()
    try:
        return _run_program(source, seed, job, stop, start)
    except _Expired:  # the timer fired again (50 ms later) inside the handling of its expiry
        signal.setitimer(signal.ITIMER_PROF, 0)
        _Clock.armed = False
        _Clock.stop = None
        return _encode(_timeout(limits, time.perf_counter() - start)), False


def _run_program(
    source: str,
    seed: int,
    job: dict[str, Any],
    stop: Callable[[bytes], None] | None,
    start: float,
) -> tuple[bytes, bool]:
    limits = job["limits"]
    _Clock.expired = False
    _Clock.stop_at = time.process_time() + limits["cpu_seconds"] + HARD_STOP_SECONDS
    _Clock.stop = None
    if stop is not None:
        _Clock.stop = lambda: stop(_encode(_timeout(limits, time.perf_counter() - start)))
    _Clock.armed = True
    signal.setitimer(signal.ITIMER_PROF, limits["cpu_seconds"], TIMER_RETRY_SECONDS)
    clean = False
    try:
        reply = _guarded(source, seed, job)
        reply["seconds"] = time.perf_counter() - start
        ran_normally = reply.get("kind") not in ("timeout", "memory")
        data = _encode(reply)
        if len(data) > limits["max_result_bytes"] + _REPLY_SLACK_BYTES:
            message = f"result is larger than {limits['max_result_bytes']} bytes"
            data = _encode(dict(_failure("invalid", message), seconds=reply["seconds"]))
        del reply
        if ran_normally:
            gc.collect()
            clean = not _Clock.expired
            if _Clock.expired:  # a finaliser the program left ran past its budget (the
                # collector swallows the timer's exception, the clock does not forget)
                data = _encode(_timeout(limits, time.perf_counter() - start))
    except BaseException as exc:  # a second timer signal inside the handling code, at worst
        reply = _failure("timeout" if _Clock.expired else "crashed", type(exc).__name__)
        if _Clock.expired:
            reply["message"] = f"CPU time limit of {limits['cpu_seconds']:g} s exceeded"
        reply["seconds"] = time.perf_counter() - start
        data = _encode(reply)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        _Clock.armed = False
        _Clock.stop = None
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
        data = check(value)
        if job["verify_plain"]:  # (an environment's own check builds plain data itself)
            data = _plain(data, limits["max_result_bytes"])
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
    expired = _Clock.expired  # the message's own budget running out is not the program's
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
        signal.setitimer(signal.ITIMER_PROF, max(remaining, 0.0), TIMER_RETRY_SECONDS)
        _Clock.expired = expired
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
            if not set(map(type, v)) <= _STR:
                raise NotPlainData("result dict has a key that is not a str")
            budget -= sum(map(len, v)) + 4 * len(v)
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


def _timeout(limits: dict[str, Any], seconds: float) -> dict[str, Any]:
    reply = _failure("timeout", f"CPU time limit of {limits['cpu_seconds']:g} s exceeded")
    reply["seconds"] = seconds
    return reply


def _failure(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "message": message}


def _encode(reply: dict[str, Any]) -> bytes:
    try:
        return encode_reply(reply)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        fallback = _failure("invalid", f"result cannot be encoded: {type(exc).__name__}")
        fallback["seconds"] = reply.get("seconds", 0.0)
        return encode_reply(fallback)
