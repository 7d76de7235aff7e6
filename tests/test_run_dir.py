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


def test_metrics_restore_keeps_exactly_the_committed_generations(tmp_path):
    from elmjax.store import ProgramStore

    with ProgramStore(tmp_path / run_dir.STORE) as store:
        for g in range(4):
            store.write_generation(g, [], info={"generation": g, "from": "store"})
    lines = [json.dumps({"generation": g, "from": "log"}) for g in (0, 1, 3, 4)]
    (tmp_path / run_dir.METRICS).write_text("\n".join(lines) + '\n{"generation": 5, "eva')
    rows = run_dir.MetricsLog.restore(tmp_path, tmp_path / run_dir.STORE)
    assert [(r["generation"], r["from"]) for r in rows] == [
        (0, "log"),
        (1, "log"),
        (2, "store"),  # committed, then killed before its line was written
        (3, "log"),
    ]  # generation 4 was logged but never committed; the torn line is gone
    assert run_dir.read_metrics(tmp_path) == rows


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


def test_a_run_that_never_began_can_be_started_again(tmp_path):
    path = run_dir.prepare_new(tmp_path / "run", RunConfig())  # e.g. the model was missing
    other = load_config(None, ["seed=5"])
    run_dir.prepare_new(path, other)  # no --force needed: nothing was computed
    assert run_dir.load_run_config(path) == other


def test_physics_keys_in_config_and_on_the_command_line():
    config = load_config(None, ["env.physics.substeps=12", "env.physics.friction=0.5"])
    assert config.env.physics == {"substeps": 12, "friction": 0.5}
    params = run_dir.sim_params(config)
    assert (params.substeps, params.friction, params.seconds) == (12, 0.5, 10.0)
    from elmjax.config import ConfigError

    with pytest.raises(ConfigError, match="env.physics.*unknown physics parameter 'gravityy'"):
        load_config(None, ["env.physics.gravityy=1"])
    assert RunConfig.from_dict(config.to_dict()) == config  # survives config.yaml


def test_resume_under_other_or_unrecorded_physics_is_refused(tmp_path):
    config = RunConfig()
    path = run_dir.prepare_new(tmp_path / "run", config)
    info = {"physics": run_dir.physics_provenance(config)}
    (path / run_dir.PROVENANCE).write_text(json.dumps(info))
    run_dir.check_physics(path, config)  # same physics: fine
    other = load_config(None, ["env.physics.muscle_force=1e9"])
    with pytest.raises(run_dir.RunDirError, match="differs in: muscle_force.*start a new run"):
        run_dir.check_physics(path, other)
    (path / run_dir.PROVENANCE).write_text(json.dumps({"physics": None}))
    with pytest.raises(run_dir.RunDirError, match="records no physics identity"):
        run_dir.check_physics(path, config)
    (path / run_dir.PROVENANCE).unlink()
    with pytest.raises(run_dir.RunDirError, match="records no physics identity"):
        run_dir.check_physics(path, config)


def test_provenance_names_the_cpu_and_a_resume_on_another_cpu_says_so(tmp_path, capsys):
    """Runs repeat bit for bit on one CPU, not across CPUs (XLA compiles for the host), so
    the record must say which CPU made a run and mark a resume that moved."""
    info = run_dir.provenance(RunConfig(), None, None)
    assert info["cpu"]["model"] and isinstance(info["cpu"]["isa"], list)
    run_dir.write_provenance(tmp_path, info)
    run_dir.write_provenance(tmp_path, dict(info), resumed=True)
    assert "warning" not in capsys.readouterr().err
    moved = {**info, "cpu": {"model": "Another CPU", "isa": ["avx2"]}}
    run_dir.write_provenance(tmp_path, moved, resumed=True)
    assert "resumes on Another CPU" in capsys.readouterr().err
    record = json.loads((tmp_path / run_dir.PROVENANCE).read_text())
    assert [r.get("cpu_differs_from_start", False) for r in record["resumes"]] == [False, True]
    assert record["cpu"] == info["cpu"]
