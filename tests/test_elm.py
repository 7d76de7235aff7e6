"""The ELM loop end to end on the CPU: run directory, determinism, exact resume, faults, report.

Everything here uses the GP operator (no model to load), two short seeds, 1 simulated second and a
small grid, so one run takes a few seconds. The reference run is computed once per module; every
interrupted-and-resumed run must end with the same store rows and the same archive.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from elmjax import faults, run_dir, tracing
from elmjax.config import load_config
from elmjax.elm import ELM
from elmjax.store import ProgramStore

GENERATIONS = 6
BATCH = 8
OVERRIDES = {
    "seed": 3,
    "mutation.operator": "gp",
    "batch_size": BATCH,
    "budget": 2 + (GENERATIONS - 1) * BATCH,  # two seeds, then 5 generations of 8
    "time_limit": None,
    "seed_programs": ["square", "radial"],
    "env.seconds": 1.0,
    "archive.shape": [6, 6, 6],
    "checkpoint_every": 2,
    "report": False,
    "progress": "never",
    "sandbox.workers": 2,
}
SET_ARGS = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in OVERRIDES.items()]


def config(**extra):
    return load_config(None, {**OVERRIDES, **extra})


def snapshot(path: Path) -> dict:
    """Everything a run leaves that must not depend on interruptions: store rows + archive."""
    from elmjax.viz.report import load_run_data

    with sqlite3.connect(path / run_dir.STORE) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {}
        for table in sorted(tables):
            cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            keep = [c for c in cols if c not in ("seconds", "committed_at", "info")]
            rows[table] = db.execute(
                f"SELECT {', '.join(keep)} FROM {table} ORDER BY {keep[0]}"
            ).fetchall()
    elites = load_run_data(path, run_dir.load_run_config(path))["elites"]
    metrics = [
        {k: v for k, v in m.items() if k not in ("elapsed", "time")}
        for m in run_dir.read_metrics(path)
    ]
    return {"rows": rows, "elites": elites, "metrics": metrics}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "run"
    result = ELM(config(), path).run()
    assert result.status == "done"
    return path, result


def test_run_writes_the_run_directory(reference):
    path, result = reference
    for name in (run_dir.CONFIG, run_dir.PROVENANCE, run_dir.STORE, run_dir.METRICS):
        assert (path / name).exists(), name
    assert any((path / run_dir.CHECKPOINTS).iterdir())
    assert any((path / run_dir.TENSORBOARD).iterdir())
    assert run_dir.load_run_config(path) == config()
    prov = json.loads((path / run_dir.PROVENANCE).read_text())
    for key in ("jax", "jaxlib", "flax", "xla_flags", "devices", "store_schema_version"):
        assert key in prov, key
    metrics = run_dir.read_metrics(path)
    assert [m["generation"] for m in metrics] == list(range(GENERATIONS))
    assert metrics[-1]["evaluations"] == 2 + (GENERATIONS - 1) * BATCH == result.evaluations
    assert 0 < metrics[-1]["coverage"] <= 1
    with ProgramStore(path / run_dir.STORE) as store:
        assert len(store) == result.evaluations
        assert store.committed_generations() == list(range(GENERATIONS))


def test_pipelines_and_reruns_are_identical(reference, tmp_path):
    ref_path, _ = reference
    ELM(config(pipeline="sequential"), tmp_path / "seq").run()
    assert snapshot(tmp_path / "seq") == snapshot(ref_path)


def _evolve(args, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "elmjax.cli", "evolve", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


@pytest.mark.parametrize("fault", ["3:simulate", "4:stored"])
def test_fault_injected_kill_then_resume_is_exact(reference, tmp_path, fault):
    path = tmp_path / "run"
    args = ["--out", str(path), *sum((["--set", s] for s in SET_ARGS), [])]
    killed = _evolve(args, env={"ELMJAX_FAULT": fault})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    result = ELM.resume(path).run()
    assert result.status == "done"
    assert snapshot(path) == snapshot(reference[0])


def test_sigkill_at_an_arbitrary_moment_then_resume_is_exact(reference, tmp_path):
    path = tmp_path / "run"
    args = ["--out", str(path), *sum((["--set", s] for s in SET_ARGS), [])]
    proc = subprocess.Popen(
        [sys.executable, "-m", "elmjax.cli", "evolve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill once the run is past its first checkpoint, at whatever it is doing then.
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(run_dir.read_metrics(path)) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # it was killed, it did not finish first
    result = ELM.resume(path).run()
    assert result.status == "done"
    assert snapshot(path) == snapshot(reference[0])


def test_sigint_checkpoints_and_resumes(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("ELMJAX_FAULT", "2:metrics:interrupt")
    faults.reload()
    try:
        result = ELM(config(), tmp_path / "run").run()
    finally:
        monkeypatch.delenv("ELMJAX_FAULT")
        faults.reload()
    assert result.status == "interrupted"
    assert result.generations == 3
    assert ELM.resume(tmp_path / "run").run().status == "done"
    assert snapshot(tmp_path / "run") == snapshot(reference[0])


def test_disk_full_stops_cleanly_with_checkpoint_intact(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("ELMJAX_FAULT", "3:store:enospc")
    faults.reload()
    try:
        result = ELM(config(), tmp_path / "run").run()
    finally:
        monkeypatch.delenv("ELMJAX_FAULT")
        faults.reload()
    assert result.status == "disk_full"
    assert result.generations == 3  # generations 0-2 committed, 3 cut off
    from elmjax.qd.checkpoint import Checkpointer

    with Checkpointer(tmp_path / "run" / run_dir.CHECKPOINTS) as ckpt:
        assert ckpt.latest_generation() == 1  # the last one written before the disk filled
    result = ELM.resume(tmp_path / "run").run()
    assert result.status == "done"
    assert snapshot(tmp_path / "run") == snapshot(reference[0])


def test_a_second_run_of_the_same_shapes_traces_nothing(reference, tmp_path):
    """Every generation of the reference run compiled its programs (simulator rollout per size
    bucket, archive insert per batch size); the same run again, in the same process, must reuse
    all of them: no new jit objects per generation, no drifting static arguments or dtypes.
    The snapshot check makes sure no retrace error was swallowed as a failed candidate."""
    with tracing.max_traces(0):
        result = ELM(config(), tmp_path / "again").run()
    assert result.status == "done"
    assert snapshot(tmp_path / "again") == snapshot(reference[0])


def test_failed_candidates_are_stored_with_their_error(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("def make_walker(:\n    pass\n")
    path = tmp_path / "run"
    result = ELM(config(seed_programs=["square", str(bad)], budget=2), path).run()
    assert result.status == "done"
    metrics = run_dir.read_metrics(path)
    assert metrics[0]["errors"] == {"syntax": 1}
    assert metrics[0]["valid_rate"] == 0.5
    with ProgramStore(path / run_dir.STORE) as store:
        broken = store.get(1)
        assert broken.text == bad.read_text()
        assert broken.outcome_kind == "syntax" and broken.outcome_message
        assert not broken.valid and not broken.entered


def test_cli_rejects_bad_config_before_starting(tmp_path):
    path = tmp_path / "run"
    proc = _evolve(["--out", str(path), "--set", "mutation.temprature=0.5"])
    assert proc.returncode == 1
    assert "mutation.temprature" in proc.stderr and "Traceback" not in proc.stderr
    assert not path.exists()


def test_cli_refuses_to_overwrite_another_run(reference, tmp_path):
    path = tmp_path / "run"
    run_dir.prepare_new(path, config(seed=11))
    (path / run_dir.METRICS).write_text('{"generation": 0}\n')
    proc = _evolve(["--out", str(path), "--set", "seed=12"])
    assert proc.returncode == 1 and "--force" in proc.stderr
    assert run_dir.load_run_config(path).seed == 11


def test_report_page_and_every_asset_exist(reference):
    from html.parser import HTMLParser

    from elmjax.viz.report import write_report

    path, _ = reference
    index = write_report(path)
    refs = []

    class Refs(HTMLParser):
        def handle_starttag(self, tag, attrs):
            refs.extend(v for k, v in attrs if k in ("src", "href"))

    Refs().feed(index.read_text())
    assert any(r.endswith(".gif") for r in refs) and any(r.endswith(".png") for r in refs)
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "/")), ref
        assert (index.parent / ref).is_file(), ref
    page = index.read_text()
    assert "not available" not in page
    assert " of 216 cells (" in page  # cells filled of the grid's total, and the share
    assert "units (|dx| over 1 s; 10 units = 1 m)" in page
    # every elite card shows what changed from its parent (or says it is a seed)
    cards = page.count("<div class=card>")
    assert cards and page.count("diff against parent") + page.count("a seed program") == cards
    assert "<span class=add>" in page or "a seed program" in page


def test_archive_matches_store_elites(reference):
    path, result = reference
    elites = {e["program_id"] for e in snapshot(path)["elites"]}
    ids = np.asarray(result.archive.program_id)
    assert elites == {int(i) for i in ids[ids >= 0]}


def test_resume_with_a_spent_limit_says_how_much_was_used(reference, tmp_path):
    from elmjax.config import ConfigError
    from elmjax.loop.resume import resume_config

    path, result = reference
    before = (path / run_dir.CONFIG).read_text()
    with pytest.raises(ConfigError) as err:
        resume_config(path)  # finished: its budget is spent
    assert err.value.key == "budget"
    assert f"has evaluated {result.evaluations:,} candidates" in str(err.value)
    assert f"--set budget={result.evaluations + 1000}" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resume_config(path, ["budget=100000", "time_limit=0.001s"])
    assert err.value.key == "time_limit" and "has run for" in str(err.value)
    assert "counts the whole run" in str(err.value)
    assert (path / run_dir.CONFIG).read_text() == before  # a refused resume changes nothing


def test_refused_runs_leave_no_directory(tmp_path):
    bad = tmp_path / "bad_seed.py"
    bad.write_text("def make_walker():\n    return 3\n")
    path = tmp_path / "new" / "run"
    with pytest.raises(Exception, match="no seed program gave a valid candidate"):
        ELM(config(seed_programs=[str(bad)]), path).run()
    assert not (tmp_path / "new").exists()
    proc = _evolve(["--out", str(path), "--model", "nosuch-model", "--set", "time_limit=1m"])
    assert proc.returncode == 1 and "nosuch-model" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()
    proc = _evolve(["--out", str(path), "--config", str(tmp_path / "nosuch.yaml")])
    assert proc.returncode == 1
    assert f"--config {tmp_path / 'nosuch.yaml'}: cannot read it" in proc.stderr
    assert "config key" not in proc.stderr and not (tmp_path / "new").exists()


def test_clipped_elites_are_counted_flagged_and_listed(tmp_path):
    """A grid too small for the seeds: every elite lies beyond its range, lands in an edge
    cell, and the metrics, the heatmap heading and the report all say so."""
    from html.parser import HTMLParser

    path = tmp_path / "run"
    cfg = config(
        budget=2 + BATCH,
        **{"archive.low": [0, 0, 0], "archive.high": [5, 5, 30]},
        report=True,
        report_top=1,
    )
    result = ELM(cfg, path).run()
    assert result.status == "done"
    rows = run_dir.read_metrics(path)
    assert rows[-1]["num_clipped"] == rows[-1]["num_filled"] > 0
    assert rows[-1]["num_cells"] == 6 * 6 * 6
    page = (path / run_dir.REPORT / "index.html").read_text()
    assert "Elites beyond the grid&#x27;s range" in page or "Elites beyond the grid's range" in page
    assert page.count("class=clipped") >= 1 + rows[-1]["num_clipped"]  # card + each listed row
    assert "is above the grid&#x27;s 0-5" in page
    assert "(in the 4.17-5+ bin)" in page
    refs = []

    class Refs(HTMLParser):
        def handle_starttag(self, tag, attrs):
            refs.extend(v for k, v in attrs if k in ("src", "href"))

    Refs().feed(page)
    assert refs and all((path / run_dir.REPORT / r).is_file() for r in refs)
