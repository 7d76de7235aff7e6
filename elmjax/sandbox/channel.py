"""The caller's end of one sandbox worker: starting it, and reading what it sends.

`pool.SandboxPool` schedules programs over many workers; this is what it does with any single
one, and it stands alone because none of it depends on the schedule: a worker is a process and
a pipe, its messages are length-prefixed frames (read only as far as `poll` promised, with a
size bound, so a hostile worker can neither block nor flood the caller), and a message is well
formed or not whatever batch is running (`ready_layers`, `outcome_of`). What a well-formed
outcome means for a program (`replies.settle`) and when a worker is killed stay with the pool.
Imports no JAX (sandbox/ never does).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from elmjax.sandbox import wire
from elmjax.sandbox.results import Limits
from elmjax.sandbox.spawning import CONTEXT, PROCESS_CLASS
from elmjax.sandbox.worker import serve

#: Seconds a send to a worker may block (a worker that stops reading is broken).
SEND_TIMEOUT_SECONDS = 10.0


class Worker:
    """One worker process, the programs sent to it, and when its current program started."""

    def __init__(self, process: Any, conn: Any, workdir: str) -> None:
        self.process = process
        self.conn = conn
        self.workdir = workdir
        self.ready = False
        self.spawned_at = time.monotonic()
        self.pending: collections.deque[int] = collections.deque()
        self.started_at = 0.0
        self.buffer = bytearray()
        self.layers: dict[str, str] | None = None

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.close()

    def stop(self) -> None:
        """Ask the worker to exit (a None job), kill it if it has not within a second, close."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(timeout=1)
        if self.process.is_alive():
            self.process.kill()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        self.process.join(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def read(self, limit: int, accept: Callable[[bytes], bool]) -> bool:
        """Read what one readiness promised (a single `read`, which cannot block) and handle
        every complete message with `accept` (frames of at most `limit` bytes); False when the
        worker hung up, sent a frame no honest worker sends, or `accept` refused a message."""
        try:
            data = os.read(self.conn.fileno(), 1 << 16)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        self.buffer += data
        while len(self.buffer) >= 4:
            (size,) = struct.unpack("!i", self.buffer[:4])
            if size < 0 or size > limit:
                return False  # a frame no honest worker sends
            if len(self.buffer) < 4 + size:
                break
            payload = bytes(self.buffer[4 : 4 + size])
            del self.buffer[: 4 + size]
            if not accept(payload):
                return False
        return True


def spawn(
    slot: int, root: str, ids: tuple[int, int] | None, preload: Sequence[str], layers: Sequence[str]
) -> Worker:
    """Start the worker of `slot` in a fresh working directory under `root` (owned by `ids`, the
    unprivileged uid and gid, when the caller is root), entering the OS `layers`."""
    workdir = tempfile.mkdtemp(prefix=f"w{slot}-", dir=root)
    if ids is not None:
        with contextlib.suppress(OSError):  # root of a user namespace without `nobody`
            os.chown(workdir, *ids)
    parent_conn, child_conn = CONTEXT.Pipe(duplex=True)
    process = PROCESS_CLASS(target=serve, args=(child_conn, workdir, preload, layers), daemon=True)
    process.start()
    child_conn.close()
    with contextlib.suppress(OSError):  # a worker that stops reading cannot block a send
        sock = socket.socket(fileno=os.dup(parent_conn.fileno()))
        timeval = struct.pack("ll", int(SEND_TIMEOUT_SECONDS), 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        sock.close()
    return Worker(process, parent_conn, workdir)


def ready_layers(payload: bytes) -> dict[str, str] | None:
    """The isolation layers a worker's ready message reports; None when it is not one."""
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(message, dict) and message.get("ready") is True):
        return None
    layers = message.get("layers")
    if not (
        isinstance(layers, dict)
        and all(type(k) is str and type(v) is str for k, v in layers.items())
    ):
        return None
    return layers


def outcome_of(payload: bytes, expected: int | None) -> tuple[dict[str, Any], bytes] | None:
    """(header, the program process's reply bytes) of one outcome message for the program
    `expected` (the one the worker is running; None when it runs none); None when the
    template's header is malformed or names another program (`wire.parse_outcome`)."""
    return wire.parse_outcome(payload, expected)


def template_of(pid: int) -> int:
    """The process id of a worker's template, which forks the programs' processes: the worker
    itself, or its one child when the worker made a pid namespace for it."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    return children[0] if len(children) == 1 else pid


def job_limits(limits: Limits) -> dict[str, Any]:
    """The limits a worker enforces, as the plain data of a job message."""
    return {
        "cpu_seconds": float(limits.cpu_seconds),
        "wall_seconds": float(limits.wall_seconds),
        "address_space_bytes": int(limits.address_space_bytes),
        "max_output_bytes": int(limits.max_output_bytes),
        "max_result_bytes": int(limits.max_result_bytes),
        "max_message_chars": int(limits.max_message_chars),
        "reuse_clean_process": bool(limits.reuse_clean_process),
    }
