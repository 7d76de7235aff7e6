"""What a worker's reply may contain, checked in the caller (the worker is not trusted).

A program's process turns the program's value into plain data with the environment's `check`,
but that runs next to the program: a program that escaped the Python layer could hand back
anything. So the caller validates every value again before it is returned, against the schema
of the environment whose `check` produced it. A value that fails is a program that broke the
protocol: its result is `crashed`, never data.

The schema belongs to the environment (a walker and a parity answer list differ); this module
maps each environment's `check` to its schema. A `check` not listed gets `plain_data`: JSON
types, finite numbers, bounded depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

#: Deepest nesting accepted from a worker.
MAX_DEPTH = 64


class ReplyError(ValueError):
    """A worker's reply breaks the schema (the message says where)."""


def plain_data(value: Any, depth: int = 0) -> Any:
    """dict (str keys) / list / str / int (64-bit) / finite float / bool / None, nested at most
    MAX_DEPTH deep."""
    if depth > MAX_DEPTH:
        raise ReplyError("reply nested too deep")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        if value.bit_length() > 64:
            raise ReplyError("reply holds an integer wider than 64 bits")
        return value
    if t is float:
        if not math.isfinite(value):
            raise ReplyError("reply holds a non-finite number")
        return value
    if t is list:
        for item in value:
            plain_data(item, depth + 1)
        return value
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ReplyError("reply dict has a non-string key")
            plain_data(item, depth + 1)
        return value
    raise ReplyError(f"reply holds a {t.__name__}")


_WALKER_KEYS = frozenset({"joints", "muscles", "descriptor"})
_DESCRIPTOR_KEYS = ("height", "width", "mass")


def walker_reply(value: Any) -> dict[str, Any]:
    """`check_walker`'s output: exactly the keys joints/muscles/descriptor; the walker is
    rebuilt and validated here (finite coordinates within range, muscle endpoints that are real
    joints, every count limit), and the descriptor must be the one the walker has."""
    from elmjax.sodarace.walker import Walker, WalkerError

    if type(value) is not dict or set(value) != _WALKER_KEYS:
        raise ReplyError("walker reply must have exactly the keys joints, muscles, descriptor")
    try:
        walker = Walker.from_dict({"joints": value["joints"], "muscles": value["muscles"]})
    except (WalkerError, TypeError, ValueError) as exc:
        raise ReplyError(f"walker reply is not a valid walker ({type(exc).__name__})") from None
    out = walker.to_dict()
    if out["joints"] != value["joints"] or out["muscles"] != value["muscles"]:
        raise ReplyError("walker reply is not in canonical dict form")
    expected = dict(zip(_DESCRIPTOR_KEYS, walker.descriptor()))
    if value["descriptor"] != expected:
        raise ReplyError("walker reply's descriptor is not the walker's")
    out["descriptor"] = expected
    return out


def parity_reply(value: Any) -> list[int | None]:
    """`check_parity`'s output: one answer per input, each 0, 1 or None."""
    from elmjax.envs.parity import INPUTS

    if type(value) is not list or len(value) != len(INPUTS):
        raise ReplyError(f"parity reply must be a list of {len(INPUTS)} answers")
    if any(not (a is None or (type(a) is int and a in (0, 1))) for a in value):
        raise ReplyError("parity answers must be 0, 1 or None")
    return value


#: Each environment's `check` ('module:function') -> the schema of its output.
SCHEMAS: dict[str, Callable[[Any], Any]] = {
    "elmjax.sodarace.walker:check_walker": walker_reply,
    "elmjax.envs.parity:check_parity": parity_reply,
}


def schema_for(check_ref: str) -> Callable[[Any], Any]:
    """The schema for values of the `check` named `check_ref`."""
    return SCHEMAS.get(check_ref, plain_data)
