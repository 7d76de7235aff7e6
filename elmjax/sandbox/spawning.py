"""How the pool starts its workers: multiprocessing's fork server, without the caller's baggage.

The fork server is a fresh interpreter that preloads the worker module and nothing else, so a
worker never inherits JAX (or threads, or locks) from its caller, and a replacement for a killed
worker is one `fork` away.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import threading
from multiprocessing import context as mp_context
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from typing import Any

CONTEXT = multiprocessing.get_context("forkserver")
_FORKSERVER_LOCK = threading.Lock()


def start_forkserver() -> None:
    """Start the fork server ourselves the first time, preloading only the worker module (not the
    caller's `__main__`, which may have imported JAX) and with a fixed hash seed, so set and dict
    orders inside programs do not change from run to run.

    A pool's own modules (its check, what it injects) are imported by each worker, never by the
    server: the server is shared by every pool of the process, so a module it preloaded for the
    first pool (numpy, say, 100+ MiB of address space) would sit in every later pool's workers and
    count against their programs' memory limit, which would then depend on which pool came first.
    """
    server = forkserver._forkserver
    with _FORKSERVER_LOCK:
        if getattr(server, "_forkserver_pid", None) is not None:
            return
        CONTEXT.set_forkserver_preload(["elmjax.sandbox.worker"])
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
    CPython 3.11-3.13 internal; on other versions `PROCESS_CLASS` keeps the standard behaviour.
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


PROCESS_CLASS = _LeanProcess if (3, 11) <= sys.version_info[:2] <= (3, 13) else CONTEXT.Process
