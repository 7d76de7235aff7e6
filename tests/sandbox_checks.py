"""`check` functions for the sandbox tests. They run inside sandbox workers (imported there by
module name, from the tests folder on sys.path), so they can look at the worker from inside."""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import os
import socket
import sys
from typing import Any


def identity(value: Any) -> Any:
    """Pass the program's value through (the sandbox still insists on plain data)."""
    return value


def call_on_inputs(function: Any) -> list[Any]:
    """Parity-style use (`call=False`): call the program's function on test inputs."""
    return [function(a, b) for a, b in ((0, 0), (0, 1), (1, 0), (1, 1))]


def worker_facts(value: Any) -> dict[str, Any]:
    """What the worker looks like from inside."""
    try:
        import socket as module  # noqa: F401

        socket_importable = True
    except ImportError:
        socket_importable = False
    try:
        with open("probe.txt", "w") as f:
            f.write("x" * 10)
        can_write_cwd = True
    except OSError:
        can_write_cwd = False
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        can_fork = True
    except OSError:
        can_fork = False
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    try:
        entries = sorted(e for e in os.listdir(".") if e != "probe.txt")
    except OSError:
        entries = None
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "pid": os.getpid(),
        "cwd": cwd,
        "cwd_entries": entries,
        "jax_loaded": any(m == "jax" or m.startswith("jax.") for m in sys.modules),
        "socket_importable": socket_importable,
        "can_write_cwd": can_write_cwd,
        "can_fork": can_fork,
        "value": value,
    }


def die(value: Any) -> None:
    """Crash the program's process (a segfault): its program must come back `crashed`."""
    ctypes.string_at(0)


def block(value: Any) -> None:
    """Block without using CPU (a lock taken twice waits in the kernel forever): only a
    wall-clock limit can stop this."""
    lock = _thread.allocate_lock()
    lock.acquire()
    lock.acquire()


# ---- a deliberately planted hole, for the OS-layer tests ------------------------------------------
# Injected into a program's globals (`inject={"os": "sandbox_checks:real_os", ...}`), these hand
# the program the real modules the AST policy keeps from it: what it can then do is what the
# operating system allows, layer by layer. Never inject them outside tests.
real_os = os
real_socket = socket
real_thread = _thread


def environment(value: Any) -> dict[str, str]:
    """The environment a program's process has (the worker clears the caller's)."""
    return dict(os.environ)


def process_id(value: Any) -> list[Any]:
    """[the program's value, the pid of the process that ran it]."""
    return [value, os.getpid()]


_HOARD: list[Any] = []


def leave_something_behind(value: Any) -> int:
    """Stands in for a program that got past the Python layer and left state in a real module:
    returns how much earlier programs left in this process, then leaves some more."""
    before = len(_HOARD)
    _HOARD.extend(object() for _ in range(1000))
    return before


def forge_next_reply(value: Any) -> Any:
    """A program process that went rogue (here: its `check`): when the program's value is
    "forge", it writes a well-formed reply of its own choosing ("forged") to every descriptor it
    can write to, ahead of its real one, hoping it is taken as the next program's answer."""
    if value == "forge":
        import msgpack

        reply = msgpack.packb({"ok": True, "value": "forged", "seconds": 0.0})
        frame = len(reply).to_bytes(4, "big") + reply
        for fd in range(3, 64):
            with contextlib.suppress(OSError):
                os.write(fd, frame)
    return value
