"""Run directory checks that happen before a run starts, and the fault-injection plan parser."""

import json

import pytest

from elmjax import faults, run_dir
from elmjax.config import RunConfig, load_config


def test_existing_run_is_not_overwritten_without_force(tmp_path):
    config = RunConfig()
    path = run_dir.prepare_new(tmp_path / "run", config)
    (path / run_dir.METRICS).write_text('{"generation": 0}\n')
    (path / "notes.txt").write_text("mine")
    other = load_config(None, ["seed=7"])
    with pytest.raises(run_dir.RunDirError, match="already holds a run.*--force"):
        run_dir.prepare_new(path, other)
    assert run_dir.load_run_config(path) == config  # untouched
    run_dir.prepare_new(path, other, force=True)
    assert run_dir.load_run_config(path) == other
    assert not (path / run_dir.METRICS).exists()
    assert (path / "notes.txt").read_text() == "mine"  # only the run's own files are removed


def test_unwritable_directory_fails_fast(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(run_dir.RunDirError, match="cannot write run directory"):
        run_dir.prepare_new(blocker / "run", RunConfig())
    with pytest.raises(run_dir.RunDirError, match="not a directory"):
        run_dir.prepare_new(blocker, RunConfig())


def test_metrics_truncate_drops_uncommitted_and_torn_lines(tmp_path):
    lines = [json.dumps({"generation": g, "evaluations": g}) for g in range(5)]
    (tmp_path / run_dir.METRICS).write_text("\n".join(lines) + '\n{"generation": 5, "eva')
    run_dir.MetricsLog.truncate(tmp_path, 2)
    assert [r["generation"] for r in run_dir.read_metrics(tmp_path)] == [0, 1, 2]


def test_sha256_of_directory_is_stable(tmp_path):
    (tmp_path / "a").write_text("1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "c").write_text("2")
    first = run_dir.sha256_of(tmp_path)
    assert first == run_dir.sha256_of(tmp_path)
    (tmp_path / "b" / "c").write_text("3")
    assert run_dir.sha256_of(tmp_path) != first


def test_fault_plan_parsing(monkeypatch):
    monkeypatch.setenv("ELMJAX_FAULT", "3:simulate, 5:store:enospc")
    faults.reload()
    try:
        faults.fault_point(2, "simulate")  # not planned: returns
        with pytest.raises(OSError, match="No space left"):
            faults.fault_point(5, "store")
        monkeypatch.setenv("ELMJAX_FAULT", "3:nowhere")
        with pytest.raises(ValueError, match="bad item"):
            faults.reload()
    finally:
        monkeypatch.delenv("ELMJAX_FAULT")
        faults.reload()
