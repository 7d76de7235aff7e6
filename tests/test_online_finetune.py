"""Online fine-tuning (`mutation.finetune_every`): the schedule is fixed by the config, the jobs
train on the run's accepted diffs, a diverging job never stops the run, and a killed run
resumes to exactly the uninterrupted one.

The model is a 1-layer decoder trained in the fixture to write numbered diffs of the Square
seed that resize its body (so children land in new cells and the jobs have accepted diffs to
learn from): small enough that a run of a few generations takes seconds."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from elmjax import run_dir
from elmjax.config import ConfigError, load_config
from elmjax.elm import ELM
from elmjax.loop.finetune import OnlineFinetuner, job_dir
from elmjax.sodarace.seeds import load_seeds

SQUARE = load_seeds()["square"]
OLD = "    sides = make_square(wc, 0, 0, 10, 10)\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from elmjax.lm import LanguageModel, init_decoder, load_model, save_model
    from elmjax.lm.config import LMConfig
    from elmjax.lm.train import TrainConfig, train
    from elmjax.mutation.diff_format import NUMBERED_FORMAT
    from elmjax.mutation.edit_data import edit_examples, pack_examples

    tok = load_model("elm-tiny").tokenizer
    eos = tok.token_to_id("<|endoftext|>")
    cfg = LMConfig(
        arch="llama", vocab_size=tok.get_vocab_size(), d_model=48, n_layers=1, n_heads=2,
        d_mlp=96, tie_embeddings=True, max_seq_len=1024, eos_token_id=eos, bos_token_id=eos,
    )  # fmt: skip
    sizes = [(12, 10), (10, 14), (16, 10), (8, 8), (14, 14), (10, 6), (20, 10), (6, 12)]
    edits = [(SQUARE, SQUARE.replace(OLD, OLD.replace("10, 10", f"{w}, {h}"))) for w, h in sizes]
    data, _ = pack_examples(tok, edit_examples(edits, NUMBERED_FORMAT), 1024, seed=0)
    decoder, _ = train(
        init_decoder(cfg, jax.random.key(0)),
        data,
        TrainConfig(steps=60, batch_size=2, lr=1e-2, warmup_steps=5, log_every=60),
    )
    out = tmp_path_factory.mktemp("model") / "square-resizer"
    save_model(LanguageModel(cfg, decoder, tok, name="square-resizer", diff_format="numbered"), out)
    return out


def overrides(model: Path, **extra) -> dict:
    return {
        "seed": 1,
        "mutation.operator": "diff",
        "mutation.model": str(model),
        "mutation.max_new_tokens": 64,
        "mutation.finetune_every": 2,
        "mutation.finetune_delay": 1,
        "mutation.finetune_steps": 3,
        "mutation.finetune_batch_size": 2,
        "mutation.finetune_lr": 1e-3,
        "batch_size": 8,
        "budget": 1 + 6 * 8,  # the seed, then 6 generations of 8
        "time_limit": None,
        "env.seconds": 1.0,
        "archive.shape": [6, 6, 6],
        "checkpoint_every": 2,
        "report": False,
        "progress": "never",
        "sandbox.workers": 2,
        **extra,
    }


def snapshot(path: Path) -> dict:
    with sqlite3.connect(path / run_dir.STORE) as db:
        rows = db.execute(
            "SELECT program_id, text, raw_output, fitness, cell, entered FROM programs "
            "ORDER BY program_id"
        ).fetchall()
    metrics = [
        {k: v for k, v in m.items() if k not in ("elapsed", "time")}
        for m in run_dir.read_metrics(path)
    ]
    return {"rows": rows, "metrics": metrics}


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "run"
    result = ELM(load_config(None, overrides(model_dir)), path).run()
    assert result.status == "done"
    return path


def test_schedule_is_fixed_by_the_config():
    ft = OnlineFinetuner.__new__(OnlineFinetuner)
    ft.every, ft.delay = 3, 2
    assert [ft.due(g) for g in range(12)] == [-1, -1, -1, -1, -1, 3, 3, 3, 6, 6, 6, 9]
    assert [ft.is_job(g) for g in range(7)] == [False, False, False, True, False, False, True]


def test_jobs_train_on_accepted_diffs_and_metrics_say_which_weights(model_dir, reference):
    metrics = run_dir.read_metrics(reference)
    used = [m.get("lm_weights") for m in metrics]
    assert used == [None, -1, -1, 2, 2, 4, 4]  # job k from generation k + 1 (delay 1)
    first = metrics[3]["finetune"]
    assert first["after_generation"] == 2 and first["edits"] >= 1 and first["steps"] == 3
    assert np.isfinite(first["loss"]) and first["skipped_nonfinite"] == 0
    assert all("valid_rate" in m and "new_cells" in m for m in metrics)
    # the job's weights are on disk and differ from the base model's
    from elmjax.lm.bundle import load_saved_model
    from elmjax.lm.state import flat_state

    job = flat_state(load_saved_model(job_dir(reference, 4)).decoder)
    base = flat_state(load_saved_model(model_dir).decoder)
    assert any(not np.array_equal(job[k], base[k]) for k in base)


def test_kill_then_resume_equals_the_uninterrupted_run(model_dir, reference, tmp_path):
    path = tmp_path / "run"
    args = ["--out", str(path)]
    for key, value in overrides(model_dir).items():
        args += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    killed = subprocess.run(
        [sys.executable, "-m", "elmjax.cli", "evolve", *args],
        env={**os.environ, "ELMJAX_FAULT": "4:prepare"},  # job 2 done, its weights in use
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    for k in (2, 4):  # lose the jobs' files too: resume recomputes them
        import shutil

        shutil.rmtree(job_dir(path, k), ignore_errors=True)
    result = ELM.resume(path).run()
    assert result.status == "done"
    assert snapshot(path) == snapshot(reference)


def test_a_diverging_job_is_rolled_back_and_the_run_goes_on(model_dir, tmp_path):
    """A learning rate of 1e30: after its first update the weights are so large that the loss
    overflows; those steps are dropped (logged), the weights in use stay finite, the run ends."""
    from elmjax.lm.bundle import load_saved_model
    from elmjax.lm.state import flat_state

    extra = {"mutation.finetune_lr": 1e30, "budget": 1 + 4 * 8}
    result = ELM(load_config(None, overrides(model_dir, **extra)), tmp_path / "run").run()
    assert result.status == "done"
    metrics = run_dir.read_metrics(tmp_path / "run")
    job = metrics[3]["finetune"]
    assert job["skipped_nonfinite"] >= 1 and "dropped" in job["note"]
    assert metrics[3]["lm_weights"] == 2 and len(metrics) == 5
    weights = flat_state(load_saved_model(job_dir(tmp_path / "run", 2)).decoder)
    assert all(np.isfinite(v).all() for v in weights.values())


def test_online_finetuning_needs_the_diff_operator():
    with pytest.raises(ConfigError, match="finetune_every"):
        load_config(None, {"mutation.operator": "gp", "mutation.finetune_every": 2}).check()
