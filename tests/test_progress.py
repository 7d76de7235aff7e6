"""The progress display: which limit it measures, cumulative figures, 80 columns."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elmjax.config import RunConfig
from elmjax.loop.cli import end_of_run_line
from elmjax.loop.progress import (
    Snapshot,
    clock,
    display_lines,
    plain_line,
    progress_state,
)
from elmjax.loop.records import RunResult

ROW = {
    "generation": 27,
    "evaluations": 865,
    "num_cells": 1728,
    "num_filled": 7,
    "coverage": 7 / 1728,
    "qd_score": 312.44,
    "max_fitness": 91.23,
    "valid_rate": 0.03,  # this generation
    "valid_rate_total": 0.121,  # the whole run
    "elapsed": 240.0,
    "num_clipped": 0,
}


def test_time_limit_first_measures_time():
    """The default run: 10 minutes against a budget of 10^6 it never reaches."""
    config = RunConfig(budget=1_000_000, time_limit=600.0)
    mode, done, text, left = progress_state(config, Snapshot(240.0, 3009, 5.0, ROW))
    assert mode == "time" and done == pytest.approx(0.4) and left == pytest.approx(360.0)
    assert text == "4:00 of 10:00"


def test_budget_first_measures_evaluations():
    config = RunConfig(budget=4000, time_limit=600.0)
    mode, done, text, left = progress_state(config, Snapshot(240.0, 3000, 20.0, ROW))
    assert mode == "evaluations" and done == pytest.approx(0.75) and left == pytest.approx(50.0)
    assert text == "3,000 of 4,000 evals"
    no_limit = RunConfig(budget=4000, time_limit=None)
    assert progress_state(no_limit, Snapshot(1.0, 10, 0.0, None))[0] == "evaluations"


def test_figures_are_cumulative():
    lines = display_lines(RunConfig(), Snapshot(240.0, 865, 3.6, ROW), 80)
    text = "\n".join(lines)
    assert "7 of 1,728 cells (0.4%)" in text
    assert "valid 12.1% so far" in text and "3.0%" not in text  # the run's rate, not the last
    assert "QD 312.4" in text and "best 91.2" in text
    assert "4:00 of 10:00" in lines[0]


@given(
    width=st.integers(40, 200),
    evals=st.integers(0, 10**9),
    filled=st.integers(0, 10**6),
    qd=st.floats(0, 1e9),
    best=st.floats(0, 1e6) | st.just(math.nan),
    elapsed=st.floats(0, 1e6),
    rate=st.floats(0, 1e5),
)
def test_every_line_fits_the_terminal(width, evals, filled, qd, best, elapsed, rate):
    row = {
        **ROW,
        "num_filled": filled,
        "num_cells": max(filled, 1728),
        "qd_score": qd,
        "max_fitness": best,
        "num_clipped": filled // 3,
    }
    for snap in (Snapshot(elapsed), Snapshot(elapsed, evals, rate, row)):
        for line in display_lines(RunConfig(budget=10**9), snap, width):
            assert len(line) <= width, (width, line)
    assert "\n" not in plain_line(RunConfig(), Snapshot(elapsed, evals, rate, row))


def test_clock():
    assert clock(0) == "0:00" and clock(65.4) == "1:05" and clock(3723) == "1:02:03"
    assert clock(math.inf) == "?"


def test_end_of_run_line_counts_cells():
    result = RunResult(
        run_dir=None,
        status="time_limit",
        generations=28,
        evaluations=865,
        metrics=ROW,
        archive=None,
    )
    line = end_of_run_line(result)
    assert "stopped at the time limit after 865 evaluations (28 generations, 4:00)" in line
    assert "7 of 1,728 cells (0.4%)" in line and "best fitness 91.2" in line
    stopped = end_of_run_line(dataclasses.replace(result, elapsed=600.4))
    assert "(28 generations, 10:00)" in stopped  # when the run stopped, not its last generation
    first = dataclasses.replace(result, evaluations=1, generations=1)
    assert "after 1 evaluation (1 generation, " in end_of_run_line(first)
    clipped = end_of_run_line(dataclasses.replace(result, metrics={**ROW, "num_clipped": 2}))
    assert "2 elite(s) beyond the grid's range" in clipped
