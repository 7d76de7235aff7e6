"""Stopping cleanly: SIGINT/SIGTERM and a full disk end a run with its last checkpoint intact.

A signal sets a stop reason that the pipeline checks between (and while waiting for) host halves
of generations; the generation being committed finishes, a checkpoint follows, and `--resume`
continues. A second signal aborts at once. A full disk (OSError ENOSPC, SQLite "database or disk
is full") anywhere in commit, logging or checkpointing becomes `DiskFull`, which the run turns
into the `disk_full` status: the store's last transaction and the last checkpoint are whole.
"""

from __future__ import annotations

import errno
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


class DiskFull(RuntimeError):
    """The disk filled up; the run stopped with its last checkpoint intact."""


class StopSignals:
    """SIGINT/SIGTERM handlers for the duration of a run (main thread only).

    `reason` becomes "interrupted" at the first signal; a second raises KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """SIGINT/SIGTERM finish the current generation, checkpoint, and stop (second: abort)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self.reason:
                raise KeyboardInterrupt
            self.reason = "interrupted"
            print(
                "\nelmjax: stopping (a generation still being prepared is dropped and "
                "recomputed on resume); a checkpoint follows; press again to abort",
                file=sys.stderr,
            )

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous = {}


def with_disk_guard(out: Path, fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn(*args)`, turning a full disk (OSError ENOSPC, SQLite 'disk is full') into
    `DiskFull` after telling the user how to continue."""
    try:
        return fn(*args)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            _report_disk_full(out, err)
        raise
    except sqlite3.OperationalError as err:
        if "full" in str(err).lower():
            _report_disk_full(out, err)
        raise


def _report_disk_full(out: Path, err: BaseException) -> None:
    print(
        f"elmjax: disk full ({err}); stopped. The last checkpoint in {out} is intact: "
        f"free space and run `elmjax evolve --resume {out}`",
        file=sys.stderr,
    )
    raise DiskFull(str(err)) from err
