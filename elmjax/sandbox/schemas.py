"""What a worker's reply may contain, checked in the caller (the worker is not trusted).

A program's process turns the program's value into plain data with the environment's `check`,
but that runs next to the program: a program that escaped the Python layer could hand back
anything. So the caller validates every value again before it is returned, against the schema
of the environment whose `check` produced it. A value that fails is a program that broke the
protocol: its result is `crashed`, never data.

The schema belongs to the environment (a walker and a parity answer list differ): it attaches
one to its `check` function as `check.reply_schema` (`sodarace.walker.walker_reply`,
`envs.parity.parity_reply`). A `check` without one gets `plain_data`: plain types, finite
numbers, bounded depth.
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


def has_schema(check: Any) -> bool:
    """Whether the environment that owns `check` attached a schema to it (`reply_schema`)."""
    return hasattr(check, "reply_schema")


def schema_for(check: Any) -> Callable[[Any], Any]:
    """The schema for values of `check`: its environment's `reply_schema` (a walker and a parity
    answer list differ), or `plain_data` for a `check` without one."""
    return getattr(check, "reply_schema", plain_data)
