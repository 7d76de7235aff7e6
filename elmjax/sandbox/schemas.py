"""What a worker's reply may contain, checked in the caller (the worker is not trusted).

A program's process turns the program's value into plain data with the environment's `check`,
but that runs next to the program: a program that escaped the Python layer could hand back
anything. So the caller validates every value again before it is returned, against the schema
of the environment whose `check` produced it. A value that fails is a program that broke the
protocol: its result is `crashed`, never data.

The schema belongs to the environment (a walker and a parity answer list differ); this module
maps each environment's `check` to its schema. A `check` not listed gets `plain_data`: plain
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


_SPEC_KEYS = frozenset({"type", "amplitude", "phase"})


def walker_reply(value: Any) -> dict[str, Any]:
    """`check_walker`'s output, in the paper's dict form plus its descriptor: exactly the keys
    joints/muscles/descriptor and type/amplitude/phase; floats and ints where `Walker.to_dict`
    puts them, finite and within the walker limits; muscle endpoints that are real, distinct
    joints; the count limits (joints, muscles, muscles per joint); and the descriptor the walker
    has. (`MIN_JOINT_DISTANCE`, a rule about the shape rather than the data, is left to the
    worker's `check_walker`.) Checked inline rather than by rebuilding the walker: this runs in
    the caller for every program."""
    from elmjax.sodarace import walker as api

    if type(value) is not dict or value.keys() != _WALKER_KEYS:
        raise ReplyError("walker reply must have exactly the keys joints, muscles, descriptor")
    joints, muscles = value["joints"], value["muscles"]
    if type(joints) is not list or type(muscles) is not list:
        raise ReplyError("walker joints and muscles must be lists")
    n = len(joints)
    if not 2 <= n <= api.MAX_JOINTS or not 1 <= len(muscles) <= api.MAX_MUSCLES:
        raise ReplyError("walker reply breaks the joint or muscle count limits")
    bound = api.MAX_COORDINATE
    for p in joints:
        if type(p) is not list or len(p) != 2:
            raise ReplyError("a joint must be [x, y]")
        x, y = p
        if type(x) is not float or type(y) is not float or not (abs(x) <= bound >= abs(y)):
            raise ReplyError("joint coordinates must be finite floats within the limit")
    degree = [0] * n
    for entry in muscles:
        if type(entry) is not list or len(entry) != 3:
            raise ReplyError("a muscle must be [i, j, spec]")
        i, j, spec = entry
        if type(i) is not int or type(j) is not int or not (0 <= i < n and 0 <= j < n and i != j):
            raise ReplyError("a muscle must join two distinct joints of the walker")
        if type(spec) is not dict or spec.keys() != _SPEC_KEYS:
            raise ReplyError("a muscle spec has exactly the keys type, amplitude, phase")
        amplitude, phase = spec["amplitude"], spec["phase"]
        if (
            type(amplitude) is not float
            or type(phase) is not float
            or not abs(amplitude) <= api.MAX_AMPLITUDE
            or not abs(phase) <= api.MAX_PHASE
        ):
            raise ReplyError("muscle amplitude and phase must be finite floats within the limits")
        if spec["type"] != ("muscle" if amplitude != 0.0 else "distance"):
            raise ReplyError("muscle type does not match its amplitude")
        degree[i] += 1
        degree[j] += 1
    if max(degree) > api.MAX_MUSCLES_PER_JOINT:
        raise ReplyError("a joint has more muscles than the limit")
    xs, ys = zip(*joints)
    # summed by `sum`, as `walker.descriptors` sums it: the same float, bit for bit, on every
    # Python (3.12's `sum` compensates rounding; a running `+=` would not agree with it)
    length = sum(math.dist(joints[i], joints[j]) for i, j, _ in muscles)
    expected = {
        "height": max(ys) - min(ys),
        "width": max(xs) - min(xs),
        "mass": api.JOINT_MASS * n + api.RHO * length,
    }
    if value["descriptor"] != expected:
        raise ReplyError("walker reply's descriptor is not the walker's")
    return value


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


def has_schema(check_ref: str) -> bool:
    """Whether the `check` named `check_ref` is an environment's, with a schema of its own."""
    return check_ref in SCHEMAS


def schema_for(check_ref: str) -> Callable[[Any], Any]:
    """The schema for values of the `check` named `check_ref`."""
    return SCHEMAS.get(check_ref, plain_data)
