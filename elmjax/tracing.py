"""Retrace bounds for the device entry points, counted and enforced by `chex.assert_max_traces`.

Every jit-compiled device function of a run (simulator rollout, archive insert, the sampler's
prefill and decode, the trainer's step) must compile once per input shape and then never again:
a second generation of the same shapes that retraces costs seconds to minutes of compilation
each generation, silently. The usual causes are outside the function: a new `jax.jit` object per
call, a static argument that compares unequal, a Python float where an array was passed before
(weak types), `None` where an array was.

A fixed `chex.assert_max_traces(n=...)` bound on the production function would be wrong: one
process legitimately compiles a function once per shape bucket, and how many buckets it meets
depends on the workload. So the functions are wrapped with `checked` (free when no bound is
active: one global read per trace, nothing per call), and a caller states the bound where it
knows it:

    sampler.generate_ids(prompts, ...)       # the first generation compiles
    with tracing.max_traces(0):              # the next one, same shapes, must not trace at all
        sampler.generate_ids(other_prompts, ...)

Inside the block chex counts each wrapped function's traces (from zero) and raises
`AssertionError: ... Function 'insert' is traced > 0 times!` at the first trace over the bound.
The bound is process-wide (threads included: the loop traces from its worker threads), not
re-entrant, and meant for tests and for debugging a slow run.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import chex

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_bound: int | None = None


def checked(fn: F) -> F:
    """`fn` with its traces counted by chex while a `max_traces` bound is active.

    Apply it under the transformation (`jax.jit(checked(fn))`), as chex requires: it counts
    calls that receive tracers, i.e. traces, never executions of compiled code.
    """
    counted: dict[int, Callable[..., Any]] = {}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        n = _bound
        if n is None:
            return fn(*args, **kwargs)
        with _lock:
            inner = counted.get(n)
            if inner is None:
                inner = counted[n] = chex.assert_max_traces(fn, n)
        return inner(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def max_traces(n: int) -> Iterator[None]:
    """Within the block, each `checked` function may be traced at most `n` times."""
    global _bound
    if n < 0:
        raise ValueError(f"max_traces needs n >= 0, got {n}")
    with _lock:
        if _bound is not None:
            raise RuntimeError("tracing.max_traces blocks do not nest")
        chex.clear_trace_counter()
        _bound = n
    try:
        yield
    finally:
        with _lock:
            _bound = None
