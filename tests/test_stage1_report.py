"""The stage-1 report's ledger: a run directory does not outlive its machine, the ledger must.

A real (tiny) GP run is reported, its directory deleted, and the report run again: the ledger
alone must give the same tables and keep the run's curve and elites. The merge rules are checked
on entries directly: a recorded run is never replaced by less of itself or by a run that
disagrees with it at the same evaluations (the same seed on another CPU).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from argparse import Namespace
from pathlib import Path

import pytest

from elmjax.config import load_config
from elmjax.elm import ELM

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report_module():
    spec = importlib.util.spec_from_file_location(
        "stage1_report", ROOT / "experiments" / "stage1_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(run="gp-square-s0", evaluations=1000, niches=10, qd=100.0, **extra):
    """A ledger entry as written before the ledger kept curves (final point only)."""
    arm, seed, rs = run.split("-")
    return {
        "run": run, "arm": arm, "seed": seed, "random_seed": int(rs[1:]), "model": None,
        "budget": 1000, "evaluations": evaluations, "finished": evaluations >= 1000,
        "generations": (evaluations - 1) // 8, "niches": niches, "qd_score": qd,
        "max_fitness": 5.0, "valid_rate": 0.5, "apply_failures": 0.0, "wall_seconds": 60.0,
        **extra,
    }  # fmt: skip


def test_a_reported_run_survives_its_directory(report_module, tmp_path):
    out, figures = tmp_path / "runs", tmp_path / "figures"
    config = load_config(
        None,
        {
            "seed": 1, "mutation.operator": "gp", "batch_size": 8, "budget": 1 + 4 * 8,
            "time_limit": None, "seed_programs": ["radial"], "env.seconds": 1.0,
            "report": False, "progress": "never", "sandbox.workers": 1,
        },
    )  # fmt: skip
    ELM(config, out / "gp-radial-s1").run()
    figures.mkdir()
    old = entry("diff-square-s0", evaluations=1001, niches=7, qd=70.0, model="elm-tiny")
    (figures / "stage1.json").write_text(json.dumps([old]))

    assert report_module.report(Namespace(out=str(out), figures=str(figures))) == 0
    ledger = {r["run"]: r for r in json.loads((figures / "stage1.json").read_text())}
    run = ledger["gp-radial-s1"]
    metrics = [
        json.loads(x) for x in (out / "gp-radial-s1" / "metrics.jsonl").read_text().splitlines()
    ]
    assert run["curve_complete"] and len(run["curve"]) == len(metrics)
    assert run["curve"][-1][:2] == [metrics[-1]["evaluations"], metrics[-1]["num_filled"]]
    assert len(run["elites"]) == run["niches"] > 0
    assert run["cpu"]
    assert ledger["diff-square-s0"]["niches"] == 7  # an entry with no directory is kept
    assert (figures / "curves-radial.png").exists() and (figures / "curves-square.png").exists()

    tables = (figures / "stage1.md").read_text(), (figures / "stage1.json").read_text()
    shutil.rmtree(out / "gp-radial-s1")
    (figures / "curves-radial.png").unlink()
    assert report_module.report(Namespace(out=str(out), figures=str(figures))) == 0
    assert ((figures / "stage1.md").read_text(), (figures / "stage1.json").read_text()) == tables
    assert (figures / "curves-radial.png").exists()  # redrawn from the ledger alone


def test_merge_never_replaces_a_record_with_less_or_with_a_disagreeing_rerun(report_module):
    recorded = entry(evaluations=1001, niches=10, qd=100.0, cpu="Intel Xeon")
    ledger = {"gp-square-s0": recorded}
    merge = report_module.merge

    behind = entry(evaluations=505, niches=4, qd=40.0, cpu="AMD EPYC")
    assert merge(ledger, [behind])["gp-square-s0"] is recorded
    other_cpu = entry(evaluations=1001, niches=9, qd=95.0, cpu="AMD EPYC")
    assert merge(ledger, [other_cpu])["gp-square-s0"] is recorded
    same = entry(evaluations=1001, niches=10, qd=100.0, cpu="Intel Xeon", curve_complete=True)
    assert merge(ledger, [same])["gp-square-s0"] is same
    further = entry(evaluations=2001, niches=12, qd=130.0)
    assert merge(ledger, [further])["gp-square-s0"] is further


def test_a_final_point_counts_only_at_its_own_budget(report_module):
    """An entry without its curve says nothing about earlier evaluations."""
    run = entry(evaluations=1001, niches=10, qd=100.0)
    run = report_module.read_ledger_entries([run])[0]
    assert report_module.at_evaluations(run, 1000) == (10.0, 100.0)
    assert report_module.at_evaluations(run, 500) is None
    assert report_module.at_evaluations(run, 2000) is None
