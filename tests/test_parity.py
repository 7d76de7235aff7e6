"""The 4-Parity domain through the sandbox."""

from __future__ import annotations

from elmjax.envs.base import Environment
from elmjax.envs.parity import (
    INPUTS,
    Parity,
    check_parity,
    parity_program,
    run_parity,
    score,
)
from elmjax.mutation.operators import GPOperator


def test_correct_and_buggy_programs_score_as_the_paper_says():
    fitness = run_parity([parity_program(k) for k in range(6)])
    assert fitness == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert (
        "% 3" in parity_program(5) and "c4" in parity_program(4) and "c1" not in parity_program(0)
    )


def test_hostile_and_broken_programs_are_recorded_not_raised():
    bad = [
        "def parity(b1, b2, b3, b4):\n    while True:\n        pass\n",
        "def parity(:\n",
        "parity = 3\n",
        "import os\ndef parity(b1, b2, b3, b4):\n    return 0\n",
        "def parity(b1, b2, b3, b4):\n    return 'odd'\n",
    ]
    assert run_parity(bad) == [None, None, None, None, 0.0]


def test_check_parity_scores_partial_answers():
    answers = check_parity(lambda b1, b2, b3, b4: 0)
    assert len(answers) == len(INPUTS) and score(answers) == 0.5


def test_environment_protocol_and_evaluate():
    env = Parity(n_bugs=2)
    assert isinstance(env, Environment)
    assert list(env.seed_programs().values()) == [parity_program(2)]
    ev = env.evaluate([check_parity(lambda *b: sum(b) % 2), check_parity(lambda *b: 1), None])
    assert ev.fitness.tolist() == [1.0, 0.5, 0.0]
    assert ev.valid.tolist() == [True, True, False]
    assert ev.descriptor[1].tolist() == [0.0, 1.0]


def test_gp_can_fix_one_bug():
    children = GPOperator(kinds={"swap_identifier": 1.0}).mutate([parity_program(1)], 200, seed=0)
    assert 1.0 in run_parity([c.text for c in children])
