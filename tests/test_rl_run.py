"""`elmjax rl` end to end at tiny sizes: exact resume, refusals, NaN rollback, eval.json."""

from __future__ import annotations

import json
import math

import chex
import numpy as np
import pytest

from elmjax.cli import main
from elmjax.lm.bundle import LanguageModel, save_model
from elmjax.lm.config import LMConfig
from elmjax.lm.model import init_decoder
from elmjax.lm.registry import MODELS_DIR
from elmjax.lm.tokenizer import load_tokenizer
from elmjax.rl.config import RLConfig, build_config
from elmjax.rl.run import resume, start

TERRAINS = ("left_wall", "right_wall")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny random decoder with elm-tiny's tokenizer, saved as a model bundle."""
    tok = load_tokenizer(MODELS_DIR / "elm-tiny" / "tokenizer.json")
    cfg = LMConfig(vocab_size=tok.get_vocab_size(), d_model=16, n_layers=1, n_heads=2, d_mlp=32)
    path = tmp_path_factory.mktemp("bundle")
    save_model(LanguageModel(cfg, init_decoder(cfg, key=0), tok, name="tiny"), path)
    return path


def tiny(bundle, **kw) -> RLConfig:
    values = dict(
        model=str(bundle), terrains=list(TERRAINS), steps=2, samples_per_terrain=2,
        max_new_tokens=8, eval_samples=1, gifs=False, progress=False, epochs=1,
    )  # fmt: skip
    values.update(kw)
    return build_config(values)


def _params(run_dir):
    import orbax.checkpoint as ocp

    from elmjax.rl.trainer import Checkpoints

    ckpt = Checkpoints(run_dir / "checkpoints", 3)
    try:
        step = ckpt.latest()
        return step, ckpt.manager.restore(step, args=ocp.args.StandardRestore())
    finally:
        ckpt.close()


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time", None)
    return rows


@pytest.fixture(scope="module")
def straight(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    report = start(out, tiny(bundle))
    return out, report


def test_resume_equals_an_uninterrupted_run(bundle, straight, tmp_path):
    out, _ = straight
    report = start(tmp_path, tiny(bundle, steps=1))
    assert report["step"] == 1
    report = resume(tmp_path, steps=2)
    assert report["step"] == 2
    step_a, a = _params(out)
    step_b, b = _params(tmp_path)
    assert step_a == step_b == 2
    chex.assert_trees_all_equal(a, b)
    assert _rows(out) == _rows(tmp_path)
    # and the evaluation of the same parameters is the same
    assert json.loads((out / "eval.json").read_text())["after"] == report["after"]


def test_eval_json_schema(straight):
    out, report = straight
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["terrains"] == list(TERRAINS)
    n = len(TERRAINS)
    for key in ("before", "after", "before_best", "after_best"):
        m = np.asarray(saved[key], float)
        assert m.shape == (n, n), key
        assert np.all(np.isfinite(m)), key
        if key.endswith("best"):  # the best program is at least the mean
            assert np.all(m >= np.asarray(saved[key.replace("_best", "")]) - 1e-6)
    assert len(saved["before_valid"]) == n and len(saved["after_valid"]) == n
    un = saved["baselines"]["stage2_unconditioned"]
    assert len(un["mean"]) == n and all(math.isfinite(v) for v in un["mean"])
    assert isinstance(saved["specialises"], bool)
    assert saved["beats_single_walker"] is None  # no stage-1 run given
    rows = [r for r in _rows(out) if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert (out / "eval" / "reward_curve.png").exists()
    assert (out / "provenance.json").exists() and (out / "tb").is_dir()


def test_nan_reward_is_rolled_back_and_logged(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("ELMJAX_RL_FAULT", "nan:2")
    report = start(tmp_path, tiny(bundle, steps=3))
    assert report["step"] == 3
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    notes = [r for r in rows if "rollback" in r]
    assert len(notes) == 1 and notes[0]["to_step"] == 1 and "non-finite" in notes[0]["rollback"]
    steps = [r["step"] for r in rows if "reward" in r]
    assert steps == [1, 2, 3]
    assert [r["rollbacks"] for r in rows if "reward" in r] == [0, 1, 1]
    assert all(math.isfinite(r["reward"]) for r in rows if "reward" in r)


def _cli(args, capsys):
    code = main(["rl", *args])
    return code, capsys.readouterr().err


def test_refusals_before_training(bundle, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(
        ["--model", str(bundle), "--terrains", "left_wall,lava", "--out", str(out)], capsys
    )
    assert code == 2 and "unknown terrain 'lava'" in err
    not_a_model = tmp_path / "notamodel"
    not_a_model.mkdir()
    (not_a_model / "weights.bin").write_bytes(b"x")
    code, err = _cli(
        ["--model", str(not_a_model), "--terrains", "tunnel", "--out", str(out)], capsys
    )
    assert code == 2 and "not an elmjax model bundle" in err
    code, err = _cli(
        ["--model", str(bundle), "--terrains", "tunnel", "--out", str(out),
         "--set", "samples_per_terrain=1000000", "--set", "max_new_tokens=2000"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "needs about" in err and "GiB" in err
    code, err = _cli(
        ["--model", str(bundle), "--terrains", "tunnel", "--out", str(out), "--set", "kl=1"],
        capsys,
    )
    assert code == 2 and "unknown key" in err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    code, err = _cli(["--resume", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "nothing to resume" in err


def test_resume_refuses_a_changed_recipe(straight, capsys):
    out, _ = straight
    code, err = _cli(["--resume", str(out), "--set", "kl_coef=0.5"], capsys)
    assert code == 2 and "cannot change on resume" in err


def test_paper_terrain_sets_parse_in_order():
    from elmjax.rl.config import PAPER_TERRAIN_SETS, parse_terrains

    assert parse_terrains("LEFT-WALL,RIGHT-WALL,TUNNEL") == PAPER_TERRAIN_SETS[0]
    assert parse_terrains("bumpy,left-wall,right_wall") == ("bumpy", "left_wall", "right_wall")
