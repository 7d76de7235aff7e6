"""The evaluation step the stages share: program texts -> sandboxed, scored results.

The principle: a program scored by `evaluate_programs` outside the loop scores exactly as the
loop scored it, given the run's seeds; and bad programs come back as typed errors, never as an
exception.
"""

from __future__ import annotations

import math

import pytest

from elmjax import run_dir
from elmjax.config import load_config
from elmjax.evaluation import evaluate_programs
from elmjax.sandbox import ERROR_KINDS
from elmjax.store import ProgramStore

SEEDS = ["square", "radial"]


@pytest.fixture(scope="module")
def sodarace():
    config = load_config(None, {"env.seconds": 1.0})
    return config, run_dir.make_environment(config)


def test_every_text_gets_a_result_in_order_and_bad_ones_a_kind(sodarace):
    _, env = sodarace
    seeds = env.seed_programs()
    texts = [
        seeds["square"],
        "def make_walker(:\n",  # syntax
        "import os\ndef make_walker():\n    return os.getcwd()\n",  # forbidden
        "def make_walker():\n    raise ValueError('no')\n",  # exception
        "def make_walker():\n    return 3\n",  # invalid: not a walker
        seeds["radial"],
    ]
    results = evaluate_programs(texts, env)
    assert len(results) == len(texts)
    kinds = [r.error_kind for r in results]
    assert kinds == [None, "syntax", "forbidden", "exception", "invalid", None]
    for r in results:
        assert r.error_kind is None or r.error_kind in (*ERROR_KINDS, "simulation")
        assert r.ok == (r.error_kind is None)
        if r.ok:
            assert math.isfinite(r.fitness) and len(r.descriptor) == 3
            assert all(math.isfinite(x) for x in r.descriptor)
        else:
            assert r.fitness == 0.0 and r.descriptor == () and r.error_message


def test_scores_equal_what_the_loop_stored(sodarace, tmp_path):
    from elmjax.elm import ELM
    from elmjax.loop.keys import generation_keys, key_to_int

    config = load_config(
        None,
        {
            "seed": 5,
            "mutation.operator": "gp",
            "budget": len(SEEDS),  # the seed generation only
            "seed_programs": SEEDS,
            "env.seconds": 1.0,
            "report": False,
            "progress": "never",
            "sandbox.workers": 1,
            "time_limit": None,
        },
    )
    assert ELM(config, tmp_path / "run").run().status == "done"
    _, env = sodarace
    texts = [env.seed_programs()[name] for name in SEEDS]
    results = evaluate_programs(
        texts,
        env,
        seed=key_to_int(generation_keys(config.seed, 0)["evaluate"]),
        run_seed=config.seed,
        program_ids=[0, 1],
    )
    with ProgramStore(tmp_path / "run" / run_dir.STORE) as store:
        for program_id, result in enumerate(results):
            row = store.get(program_id)
            assert row.valid and result.ok
            assert row.fitness == result.fitness  # bit for bit (both float32 values)
            assert tuple(row.descriptor) == result.descriptor


def test_parity_programs_are_called_by_check(tmp_path):
    config = load_config(None, {"env.name": "parity", "archive.shape": [4, 4]})
    env = run_dir.make_environment(config)
    texts = list(env.seed_programs().values()) + ["def parity(b1, b2, b3, b4):\n    return 0\n"]
    results = evaluate_programs(texts, env)
    assert all(r.ok for r in results)
    assert 0.0 <= results[0].fitness < 1.0  # the seed has bugs
    assert results[1].fitness == 0.5  # always 0 is right on exactly the even-parity inputs


def test_program_ids_must_match_texts(sodarace):
    _, env = sodarace
    with pytest.raises(ValueError, match="program ids"):
        evaluate_programs(["x"], env, program_ids=[1, 2])
