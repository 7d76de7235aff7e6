"""Stage 2 (`elmjax finetune`): the dataset's cut-off, de-duplication, hold-out and excluded
lineages; the refusals; exact resume of training; eval.json; the model loading in `evolve`.

Runs here are small synthetic run directories (a config, a provenance with the current physics
identity, a program store with one committed generation) whose fitness values the test chooses,
so the cut-off arithmetic can be checked exactly; the end-to-end test trains for a few steps and
evaluates a handful of samples, through the real sandbox and simulator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from elmjax.config import RunConfig, dump_config
from elmjax.finetune import DatasetError, FinetuneConfig, build_dataset, normal_form
from elmjax.finetune.prompts import completion_ids, first_half, program_prompt
from elmjax.lm import load_model
from elmjax.run_dir import physics_provenance, write_provenance
from elmjax.sodarace.seeds import load_seed
from elmjax.store import ProgramRecord, ProgramStore

ROOT = Path(__file__).resolve().parent.parent


def walker(i: int, comment: str = "") -> str:
    """A small valid walker; distinct `i` give distinct syntax trees, `comment` does not."""
    return (
        f"{comment}def make_walker():\n"
        "    wc = walker_creator()\n"
        "    a = wc.add_joint(0.0, 0.0)\n"
        f"    b = wc.add_joint({2.0 + 0.25 * i}, 0.0)\n"
        "    c = wc.add_joint(1.0, 1.5)\n"
        "    wc.add_muscle(a, b)\n"
        "    wc.add_muscle(b, c, 2.0, 0.25)\n"
        "    wc.add_muscle(c, a, 2.0, 0.0)\n"
        "    return wc.get_walker()\n"
    )


def make_run(
    path: Path,
    programs: list[tuple[str, float, int]],
    *,
    seed_text: str | None = None,
    physics: dict | None | str = "current",
) -> Path:
    """A run directory whose store holds `programs` as (text, fitness, cell) rows of generation
    0 (after the seed, program 0), each a child of the seed."""
    config = RunConfig().replace({"mutation.operator": "gp"})
    path.mkdir(parents=True)
    dump_config(config, path / "config.yaml")
    ident = physics_provenance(config) if physics == "current" else physics
    write_provenance(path, {"physics": ident})
    rows = []
    if seed_text is not None or programs:
        rows.append(
            ProgramRecord(
                0,
                seed_text or walker(0),
                valid=True,
                fitness=1.0,
                cell=0,
                descriptor=[1.0, 1.0, 1.0],
            )
        )
    for k, (text, fitness, cell) in enumerate(programs, start=1):
        rows.append(
            ProgramRecord(
                k,
                text,
                parents=[0],
                valid=True,
                fitness=fitness,
                cell=cell,
                descriptor=[1.0, 1.0, 1.0],
                operator="gp",
            )
        )
    with ProgramStore(path / "programs.sqlite") as store:
        if rows:
            store.write_generation(0, rows)
    return path


def forms(examples) -> set[str]:
    return {normal_form(e.text) for e in examples}


CFG = FinetuneConfig(batch_size=2, exclude_lineages=("wheel", "galloper", "runner"))


# -- the dataset ---------------------------------------------------------------------------------


def test_cutoff_keeps_programs_within_x_of_the_niche_best_over_all_runs(tmp_path):
    # cell 5: best 10 in run a; run b's 9.0 is within 50% of it, 4.9 is not;
    # cell 7: run b's best 100 sets the bar for run a's 60 (kept at 50%) and 40 (dropped)
    a = make_run(tmp_path / "a", [(walker(1), 10.0, 5), (walker(2), 60.0, 7), (walker(3), 40.0, 7)])
    b = make_run(tmp_path / "b", [(walker(4), 9.0, 5), (walker(5), 4.9, 5), (walker(6), 100.0, 7)])
    ds = build_dataset([a, b], CFG)
    kept = forms(ds.train + ds.held_out)
    assert kept == {normal_form(walker(i)) for i in (1, 2, 4, 6)} | {normal_form(walker(0))}
    tight = build_dataset([a, b], CFG.replace({"within": 0.05}))
    assert forms(tight.train + tight.held_out) == {normal_form(walker(i)) for i in (1, 6, 0)}


def test_duplicates_across_runs_count_once_and_keep_the_fittest_copy(tmp_path):
    a = make_run(tmp_path / "a", [(walker(i), 10.0 + i, i) for i in range(1, 8)])
    # the same programs with a comment and other fitness: one syntax tree each
    b = make_run(tmp_path / "b", [(walker(i, "# copy\n"), 20.0 + i, i) for i in range(1, 8)])
    ds = build_dataset([a, b], CFG)
    examples = ds.train + ds.held_out
    assert len(examples) == len(forms(examples)) == 8  # 7 programs + the shared seed
    assert ds.stats["duplicates"] == 8
    by_form = {normal_form(e.text): e for e in examples}
    assert by_form[normal_form(walker(3))].fitness == 23.0
    assert by_form[normal_form(walker(3))].run == str(b)


def test_holdout_is_five_percent_disjoint_and_stable(tmp_path):
    a = make_run(tmp_path / "a", [(walker(i), 10.0, 1 + i % 50) for i in range(1, 80)])
    b = make_run(tmp_path / "b", [(walker(i), 10.0, 1 + i % 50) for i in range(80, 160)])
    ds = build_dataset([a, b], CFG)
    n = len(ds.train) + len(ds.held_out)
    assert n == 160  # 159 programs + one seed (the same in both runs)
    assert len(ds.held_out) == round(0.05 * n)
    assert not forms(ds.train) & forms(ds.held_out)
    again = build_dataset([b, a], CFG)  # the split does not depend on the order of the runs
    assert forms(again.held_out) == forms(ds.held_out)
    other = build_dataset([a, b], CFG.replace({"seed": 1}))
    assert forms(other.held_out) != forms(ds.held_out)


def test_excluded_lineages_never_reach_the_data(tmp_path):
    """The OOD walkers' lineages (and cppn_mutable's, by default) are not in train or held-out."""
    wheel = load_seed("wheel")
    runner = load_seed("runner")
    ok = make_run(tmp_path / "ok", [(walker(i), 10.0, i) for i in range(1, 10)])
    # a run started from wheel: every descendant is out, however far it moved from wheel
    bad = make_run(
        tmp_path / "wheel", [(walker(i), 50.0, i) for i in range(20, 30)], seed_text=wheel
    )
    # runner's own text turning up in an allowed run is out too
    odd = make_run(tmp_path / "odd", [(runner, 50.0, 40), (walker(41), 50.0, 41)])
    ds = build_dataset([ok, bad, odd], FinetuneConfig(batch_size=2))
    got = forms(ds.train + ds.held_out)
    assert not got & {normal_form(load_seed(s)) for s in ("wheel", "galloper", "runner")}
    assert not got & {normal_form(walker(i)) for i in range(20, 30)}
    assert normal_form(walker(41)) in got
    assert ds.stats["excluded_lineage"] >= 11


# -- refusals ------------------------------------------------------------------------------------


def test_empty_store_is_refused_naming_the_run(tmp_path):
    empty = make_run(tmp_path / "empty-run", [])
    with pytest.raises(DatasetError, match="empty-run.*empty"):
        build_dataset([empty], CFG)


def test_other_physics_is_refused_naming_the_run(tmp_path):
    config = RunConfig()
    ident = dict(physics_provenance(config))
    ident["params_hash"] = "0" * 16
    old = make_run(tmp_path / "old-physics", [(walker(1), 1.0, 1)] * 1, physics=ident)
    with pytest.raises(DatasetError, match="old-physics.*physics"):
        build_dataset([old], CFG)
    unrecorded = make_run(tmp_path / "no-physics", [(walker(1), 1.0, 1)], physics=None)
    with pytest.raises(DatasetError, match="no-physics"):
        build_dataset([unrecorded], CFG)


def test_dataset_smaller_than_a_batch_is_refused_before_training(tmp_path, capsys):
    from elmjax.cli import main

    small = make_run(tmp_path / "small-run", [(walker(i), 10.0, i) for i in range(1, 4)])
    with pytest.raises(DatasetError, match="small-run.*fewer than one batch"):
        build_dataset([small], CFG.replace({"batch_size": 16}))
    out = tmp_path / "model"
    rc = main(["finetune", str(small), "--out", str(out), "--set", "batch_size=16"])
    assert rc == 2
    assert "small-run" in capsys.readouterr().err
    assert not (out / "checkpoints").exists()


# -- prompts -------------------------------------------------------------------------------------


def test_prompt_and_first_half():
    assert program_prompt() == "# Sodarace walker program\n"
    assert program_prompt((1.0, 2.25, 30.0)) == (
        "# Sodarace walker program: height 1.0, width 2.2, mass 30.0\n"
    )
    text = load_seed("wheel")
    half = first_half(text)
    assert text.startswith(half) and half.endswith("\n")
    assert half.count("\n") == len(text.splitlines()) // 2


@pytest.mark.parametrize("name", ["wheel", "galloper", "runner"])
def test_completion_prompt_is_a_prefix_of_what_training_saw(name):
    """The OOD prompt is the header's tokens then a prefix of the program's own tokens (as
    training tokenized them), cut at the token boundary nearest below the half; re-tokenizing
    the half as text ends differently (BPE merges across the line end)."""
    from elmjax.lm.tokenizer import decode, encode

    tok = load_model("elm-tiny").tokenizer
    text = load_seed(name)
    ids, shown = completion_ids(tok, text)
    head, program = encode(tok, program_prompt()), encode(tok, text)
    k = len(ids) - len(head)
    assert ids[: len(head)] == head and ids[len(head) :] == program[:k]
    assert decode(tok, program[:k]) == shown and first_half(text).startswith(shown)
    assert len(decode(tok, program[: k + 1])) > len(first_half(text))  # one more token overshoots
    naive = encode(tok, program_prompt() + first_half(text))  # the half as text: not a prefix
    assert naive != (head + program)[: len(naive)]


# -- training, evaluation, loading ------------------------------------------------------------


@pytest.fixture(scope="module")
def gp_like_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("runs")
    return make_run(base / "run", [(walker(i), 5.0 + i, i) for i in range(1, 41)])


def test_training_resumes_exactly(gp_like_run, tmp_path):
    """Stopped at step 2 and continued to 4 = trained to 4 in one call, bit for bit."""
    import chex
    from flax import nnx

    from elmjax.finetune.training import base_model, run_training, tokenize

    cfg = CFG.replace({"steps": 4, "batch_size": 2, "checkpoint_every": 1, "warmup_steps": 1})
    ds = build_dataset([gp_like_run], cfg)
    model = base_model(cfg)
    data, _ = tokenize(model.tokenizer, ds.train, cfg)
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole_dir.mkdir(), cut_dir.mkdir()
    whole, step = run_training(model, data, cfg, whole_dir)
    assert step == 4
    _, step = run_training(base_model(cfg), data, cfg, cut_dir, stop_at=2)
    assert step == 2
    resumed, step = run_training(base_model(cfg), data, cfg, cut_dir)
    assert step == 4
    chex.assert_trees_all_equal(nnx.state(whole.decoder), nnx.state(resumed.decoder))
    log = [json.loads(x) for x in (cut_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_evaluation_counts_against_known_programs(gp_like_run, monkeypatch):
    """With the sampler replaced by known programs, the figures are what they must be: training
    programs are valid and not novel; the true second half of an OOD walker scores 1.0."""
    from elmjax.finetune import evaluate as ev
    from elmjax.finetune.evaluate import evaluate_ood, evaluate_samples
    from elmjax.run_dir import grid_spec, make_environment

    cfg = CFG.replace({"samples": 4, "ood_samples": 2})
    ds = build_dataset([gp_like_run], cfg)
    train_texts = [e.text for e in ds.train[:3]] + ["def make_walker(:\n"]

    def fake(model, prompts, per_prompt, cfg_, seed, prefixes=None):
        if prefixes is None:
            return train_texts[: per_prompt * len(prompts)]
        out = []
        for name in ev.OOD_WALKERS:
            text = load_seed(name)
            out += [text, first_half(text)]  # the original, and a half that is no program
        return out

    monkeypatch.setattr(ev, "sample_programs", fake)
    config = RunConfig()
    env = make_environment(config)
    spec = grid_spec(config, env)
    got = evaluate_samples(None, ds, cfg, env, spec, 4)
    assert got["samples"] == 4
    assert got["valid_fraction"] == 0.75
    assert got["novel_fraction"] == 0.0
    assert got["errors"] == {"syntax": 1}
    assert 1 <= got["niches_filled"] <= 3 and got["qd_score"] > 0
    ood, detail = evaluate_ood(load_model("elm-tiny"), cfg, env, spec, 2)
    assert ood == {"wheel": 1.0, "galloper": 1.0, "runner": 1.0, "mean": 1.0}
    assert all(d["valid"] == 1 for d in detail.values())


def test_finetune_command_end_to_end_and_model_loads_in_evolve(gp_like_run, tmp_path):
    from elmjax.cli import main

    out = tmp_path / "stage2"
    args = ["finetune", str(gp_like_run), "--out", str(out), "--steps", "2", "--samples", "4"]
    args += ["--set", "ood_samples=1", "--set", "batch_size=2", "--set", "max_new_tokens=32"]
    assert main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    for key in ("niches_filled", "qd_score", "valid_fraction", "novel_fraction", "held_out_loss"):
        assert isinstance(result[key], int | float) and np.isfinite(result[key]), key
    assert set(result["ood"]) == {"wheel", "galloper", "runner", "mean"}
    assert all(np.isfinite(v) and v >= 0 for v in result["ood"].values())
    assert result["samples"] == 4
    assert "## Evaluation" in (out / "MODEL_CARD.md").read_text()
    # the same command again: the job is complete, nothing is retrained, the eval reruns
    mtime = os.path.getmtime(out / "model.safetensors")
    assert main(args) == 0
    assert os.path.getmtime(out / "model.safetensors") >= mtime
    assert main(["finetune", "--eval", str(out), "--samples", "2"]) == 0
    assert json.loads((out / "eval.json").read_text())["samples"] == 2
    # another training config into the same directory is refused
    assert main(args[:-2] + ["--set", "lr=0.01", "--set", "max_new_tokens=32"]) == 2
    # MODEL_DIR is a model directory: `elmjax evolve --model MODEL_DIR` runs with it
    run = tmp_path / "evolve"
    rc = main(
        [
            "evolve",
            "--model",
            str(out),
            "--operator",
            "prompt",
            "--out",
            str(run),
            "--set",
            "budget=4",
            "--set",
            "batch_size=4",
            "--set",
            "mutation.children_per_prompt=4",
            "--set",
            "mutation.max_new_tokens=16",
            "--set",
            "report=false",
            "--set",
            "time_limit=null",
            "--set",
            "progress=never",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["evaluations"] >= 4


def test_dataset_only_prints_the_figures_and_trains_nothing(tmp_path, capsys):
    from elmjax.cli import main

    run = make_run(tmp_path / "run", [(walker(i), 10.0, i) for i in range(1, 21)])
    assert main(["finetune", str(run), "--dataset-only", "--set", "batch_size=2"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"] + stats["held_out"] == stats["unique"] == 21
    assert stats["held_out"] == 1 and stats["niches"] == 21
