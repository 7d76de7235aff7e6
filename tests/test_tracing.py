"""Retrace bounds: `checked` functions are counted by chex only inside `max_traces`, per
function, from zero at each block, across threads, and never for calls of compiled code."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elmjax import tracing


@jax.jit
@tracing.checked
def double(x):
    return 2 * x


@jax.jit
@tracing.checked
def square(x):
    return x * x


def test_bound_counts_traces_not_calls():
    double(np.ones(3, np.float32))  # compiled outside any bound: not counted
    with tracing.max_traces(0):
        for _ in range(3):
            double(np.ones(3, np.float32))  # cached program: no trace
        with pytest.raises(AssertionError, match="'double' is traced > 0 times"):
            double(np.ones(4, np.float32))


def test_each_function_has_its_own_count_and_blocks_start_from_zero():
    with tracing.max_traces(1):
        square(np.ones(5, np.float32))
        double(np.ones(5, np.float32))  # another function: its own count
        with pytest.raises(AssertionError, match="'square' is traced > 1 times"):
            square(np.ones(6, np.float32))
    with tracing.max_traces(1):
        square(np.ones(7, np.float32))  # a new block starts from zero


def test_traces_in_other_threads_count():
    def work():
        try:
            double(jnp.ones(11))
        except AssertionError as e:
            errors.append(e)

    errors: list[AssertionError] = []
    with tracing.max_traces(0):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert len(errors) == 1


def test_no_bound_no_limit_and_bad_blocks_refused():
    for n in range(8, 12):  # outside a block, any number of shapes compiles
        double(np.ones(n, np.float32))
    with pytest.raises(ValueError), tracing.max_traces(-1):
        pass
    with (
        tracing.max_traces(0),
        pytest.raises(RuntimeError, match="do not nest"),
        tracing.max_traces(1),
    ):
        pass
