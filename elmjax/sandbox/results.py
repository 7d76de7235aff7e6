"""What the sandbox returns and the limits it runs under (plain dataclasses, no processes here)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

#: Every error kind a program can get, in the order the sandbox checks for them.
#: - syntax: the text does not parse (or is too deeply nested to parse).
#: - forbidden: the AST policy rejected it (an import, a dunder attribute, `open`, ...), or the
#:   text is larger than `Limits.max_source_bytes`.
#: - timeout: it used more than `Limits.cpu_seconds` of CPU or `Limits.wall_seconds` of wall time.
#: - memory: it ran out of its address space (`Limits.address_space_bytes`).
#: - exception: the program's own code raised (including RecursionError).
#: - invalid: it ran, but broke the contract: no entry function, a rule of the API it called
#:   (e.g. a WalkerError), a `check` that rejected its result, too much printed or returned data.
#: - crashed: its process died under it (a signal, a crash of the interpreter), or the worker
#:   broke the reply protocol (a malformed, oversized or out-of-schema reply).
ERROR_KINDS: tuple[str, ...] = (
    "syntax",
    "forbidden",
    "timeout",
    "memory",
    "exception",
    "invalid",
    "crashed",
)


@dataclass(frozen=True)
class ExecError:
    """Why a program has no result: one of `ERROR_KINDS` and a short, bounded message."""

    kind: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class ExecResult:
    """One program's outcome. `value` is the plain data `check` returned (None when not ok)."""

    ok: bool
    value: Any
    error: ExecError | None
    seconds: float

    @classmethod
    def failure(cls, kind: str, message: str, seconds: float = 0.0) -> ExecResult:
        return cls(False, None, ExecError(kind, message), seconds)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits, and the pool size.

    Walker programs take milliseconds; the defaults leave two orders of magnitude of headroom
    while keeping a batch with a few runaway programs from stalling a generation for long.
    """

    #: CPU seconds per program (parse + run + check + its garbage collection). Enforced in the
    #: program's process by a profiling timer, and by its RLIMIT_CPU (SIGXCPU, then SIGKILL).
    cpu_seconds: float = 2.0
    #: Wall-clock seconds per program, enforced by the worker's template (the program's process
    #: is killed), and by the caller a grace period later (the whole worker is killed and
    #: replaced). Catches what CPU time cannot (a blocking call, a long C-level operation).
    wall_seconds: float = 5.0
    #: RLIMIT_AS of a program's process. An idle worker maps ~24 MB (16 MB resident).
    address_space_bytes: int = 512 * 1024 * 1024
    #: Bytes a program may print (printed text is discarded; more than this is `invalid`).
    max_output_bytes: int = 64 * 1024
    #: Size of the encoded value `check` returns (`wire.encode_reply`); larger is `invalid`.
    max_result_bytes: int = 1024 * 1024
    #: Program text size; larger is `forbidden` (decided by the caller, nothing is sent).
    max_source_bytes: int = 256 * 1024
    #: Characters of an error message.
    max_message_chars: int = 400
    #: Worker processes of a pool (the pool size is fixed when the pool starts).
    workers: int = _default_workers()
    #: Every program runs in a process forked from a clean template. With this on, the next
    #: program of a batch may run in the same process, but only after a program whose text
    #: took the policy's fast path, that ended normally and left the heap as it found it
    #: (its garbage and finalisers collected on its own clock); anything else retires the
    #: process. Off: a fresh process for every program (about 3-8x the CPU per walker program;
    #: see benchmarks/RESULTS.md).
    reuse_clean_process: bool = True

    def __post_init__(self) -> None:
        if not (self.cpu_seconds > 0 and self.wall_seconds > 0):
            raise ValueError("cpu_seconds and wall_seconds must be positive")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.address_space_bytes < 64 * 1024 * 1024:
            raise ValueError("address_space_bytes below 64 MiB cannot hold a Python worker")
