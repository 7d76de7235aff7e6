"""The caller's side of a worker's replies: from the bytes a program's process sent to an
`ExecResult`, trusting none of them.

The body is decoded (`wire.decode_reply`: MessagePack, plain types only), must be exactly one
of the two reply shapes the program process writes (ok + value, or a known error kind +
message), and an ok value must pass the schema of the environment that owns `check` (`schemas.py`). Anything else
is `crashed`: the program's process broke the protocol. Every message is bounded and scrubbed
of file paths and of the caller's environment values.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from typing import Any

from elmjax.sandbox.results import ERROR_KINDS, ExecResult, Limits
from elmjax.sandbox.schemas import ReplyError
from elmjax.sandbox.wire import decode_reply


def settle(
    header: dict[str, Any],
    body: bytes,
    seconds: float,
    limits: Limits,
    schema: Callable[[Any], Any],
) -> ExecResult:
    """One program's result from what its worker sent: the template's `header` (already checked
    by the pool) and `body`, the raw reply of the program's process (untrusted)."""
    problem = header.get("problem")
    if problem == "wall":
        return ExecResult.failure(
            "timeout", f"wall-clock limit of {limits.wall_seconds:g} s exceeded", seconds
        )
    if problem == "size":
        return ExecResult.failure("invalid", "reply larger than the result limit", seconds)
    if not body:
        status = header["status"]
        if status in (-signal.SIGKILL, -signal.SIGXCPU) and seconds >= limits.cpu_seconds:
            message = f"CPU time limit of {limits.cpu_seconds:g} s exceeded"
            return ExecResult.failure("timeout", message, seconds)
        return ExecResult.failure("crashed", exit_text(status), seconds)
    try:
        reply = decode_reply(body)
    except (ValueError, RecursionError):
        return ExecResult.failure("crashed", "program process sent a malformed reply", seconds)
    if type(reply) is not dict:
        return ExecResult.failure("crashed", "program process sent a malformed reply", seconds)
    if reply.get("ok") is True and set(reply) <= _OK_KEYS:
        try:
            value = schema(reply.get("value"))
        except (ReplyError, ValueError, TypeError, KeyError, RecursionError) as exc:
            message = f"program process sent a value outside the schema: {exc}"
            return ExecResult.failure("crashed", scrub(message, limits), seconds)
        return ExecResult(True, value, None, seconds)
    kind, text = reply.get("kind"), reply.get("message")
    if (
        reply.get("ok") is not False
        or not set(reply) <= _FAILURE_KEYS
        or kind not in ERROR_KINDS
        or type(text) is not str
    ):
        return ExecResult.failure("crashed", "program process sent a malformed reply", seconds)
    return ExecResult.failure(kind, scrub(text, limits), seconds)


_OK_KEYS = frozenset({"ok", "value", "seconds"})
_FAILURE_KEYS = frozenset({"ok", "kind", "message", "seconds"})


def exit_text(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"program process was killed by {name}"
    return f"program process exited with status {status} without a reply"


_PATH = re.compile(r"(?<![\w.])(?:~|\.{1,2})?/[^\s'\"():,;]+")


def scrub(message: str, limits: Limits) -> str:
    """A worker's message, bounded, without file paths or the values of the caller's
    environment variables (the worker's environment is empty; this holds even if a program
    found a way to the caller's)."""
    text = message[: limits.max_message_chars * 2]
    for value in _secret_values():
        if value in text:
            text = text.replace(value, "<redacted>")
    text = _PATH.sub("<path>", text)
    return text[: limits.max_message_chars]


def _secret_values() -> list[str]:
    values = {v for v in os.environ.values() if len(v) >= 6}
    return sorted(values, key=len, reverse=True)
