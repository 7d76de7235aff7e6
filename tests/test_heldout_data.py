"""Held-out data: the operator benchmark's parents are frozen, and no held-out lineage
(cppn_mutable; wheel, galloper, runner) or evaluation parent reaches any training set."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from elmjax.mutation import gp
from elmjax.mutation.corpus import HELD_OUT, build_corpus, exec_validator, program_key
from elmjax.mutation.diff_format import normalize_program
from elmjax.sodarace.seeds import ELM_SEEDS, load_seeds

ROOT = Path(__file__).resolve().parent.parent
EVAL_PARENTS = ROOT / "benchmarks" / "eval_parents.json"


def _frozen() -> dict:
    return json.loads(EVAL_PARENTS.read_text())


def _train_script():
    spec = importlib.util.spec_from_file_location(
        "train_elm_tiny", ROOT / "experiments" / "train_elm_tiny.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_parents_are_frozen_valid_and_dropped_ones_listed():
    data = _frozen()
    parents, dropped = data["parents"], data["dropped"]
    assert set(parents) == set(ELM_SEEDS)
    assert all(len(texts) >= 4 for texts in parents.values())  # the benchmark takes 4 per seed
    for name, texts in parents.items():  # v1 shipped 8 per seed: kept + dropped account for all
        assert len(texts) + sum(d["seed"] == name for d in dropped) == 8
        assert all(exec_validator(texts)), name
        assert len({program_key(t) for t in texts}) == len(texts)
    assert all(d["error_kind"] and d["error"] for d in dropped)


def test_corpus_keeps_held_out_lineages_and_excluded_programs_out_of_training():
    seeds = load_seeds()
    corpus = build_corpus(seeds, generations=1, children_per_generation=8)
    assert {e.seed for e in corpus["train"]}.isdisjoint(HELD_OUT)
    assert {e.seed for e in corpus["held_out"]} <= set(HELD_OUT)
    victim = corpus["train"][0]
    again = build_corpus(
        seeds, generations=1, children_per_generation=8, exclude={program_key(victim.child)}
    )
    keys = {program_key(t) for e in again["train"] for t in (e.parent, e.child)}
    assert program_key(victim.child) not in keys and len(again["train"]) < len(corpus["train"])


def test_program_key_sees_through_formatting_and_comments():
    text = load_seeds()["square"]
    assert program_key(text) == program_key("# a comment\n" + text.replace("\n\n\n", "\n\n"))
    assert program_key(text) != program_key(text.replace("5.0", "6.0", 1))


def test_training_refuses_archive_diffs_of_runs_seeded_from_held_out_lineages(tmp_path):
    script = _train_script()
    for name in HELD_OUT:
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(f"seed_programs:\n- {name}\n")
        with pytest.raises(SystemExit, match="held-out"):
            script.run_edits([str(run)], HELD_OUT)


def _held_out_programs(per_seed: int = 40) -> list[str]:
    """Held-out seeds, a sample of their GP descendants, and the frozen evaluation parents."""
    seeds = load_seeds()
    out = [normalize_program(seeds[name]) for name in HELD_OUT]
    rng = random.Random(7)
    for name in HELD_OUT:
        for _ in range(per_seed):
            try:
                out.append(gp.mutate_n(seeds[name], rng, rng.randint(1, 3)).text)
            except (gp.GPError, SyntaxError):
                continue
    out += [t for texts in _frozen()["parents"].values() for t in texts]
    return out


def test_the_shipped_model_never_trained_on_held_out_programs():
    """`training_keys.txt` lists the syntax-tree key of every program in elm-tiny's training
    data (parents and children); none may be a held-out lineage's or an evaluation parent."""
    from elmjax.lm.registry import MODELS_DIR

    keys_file = MODELS_DIR / "elm-tiny" / "training_keys.txt"
    trained = set(keys_file.read_text().split())
    assert len(trained) > 1000
    overlap = [t[:60] for t in _held_out_programs() if program_key(t) in trained]
    assert not overlap, overlap
