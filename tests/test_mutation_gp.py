"""GP mutation: deterministic, always parses, changes only the mutated site."""

from __future__ import annotations

import ast
import random

import pytest

from elmjax.mutation import gp
from elmjax.mutation.unified_diff import make_diff
from elmjax.sodarace.seeds import load_seeds

SEEDS = load_seeds()


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_kind_gives_a_parsing_different_child(name):
    text = SEEDS[name]
    found = set()
    for kind in gp.KINDS:
        rng = random.Random(1)
        try:
            m = gp.mutate(text, rng, {kind: 1.0})
        except gp.GPError:
            continue
        ast.parse(m.text)
        assert m.text != text and m.kind == kind
        found.add(kind)
    assert {"constant", "operator", "swap_identifier", "duplicate"} <= found


def test_deterministic_per_seed():
    text = SEEDS["radial"]
    a = [gp.mutate(text, random.Random(s)).text for s in range(20)]
    b = [gp.mutate(text, random.Random(s)).text for s in range(20)]
    assert a == b and len(set(a)) > 10


def test_constant_edit_changes_one_line_and_keeps_comments():
    text = SEEDS["square"]
    m = gp.mutate(text, random.Random(5), {"constant": 1.0})
    diff = make_diff(text, m.text)
    assert (
        sum(line.startswith("-") and not line.startswith("---") for line in diff.splitlines()) == 1
    )
    assert [ln for ln in text.splitlines() if "#" in ln] == [
        ln for ln in m.text.splitlines() if "#" in ln
    ]


def test_operator_swap_and_loop_bound_edit_in_place():
    text = "def f(n):\n    total = 0  # keep me\n    for i in range(n):\n        total += i * 2\n    return total < 10\n"
    swapped = gp.mutate(text, random.Random(0), {"operator": 1.0}).text
    assert "# keep me" in swapped and swapped != text
    bound = gp.mutate(text, random.Random(0), {"loop_bound": 1.0}).text
    assert "range(n + " in bound or "range(n - " in bound


def test_program_without_sites_raises():
    with pytest.raises(gp.GPError):
        gp.mutate("pass\n", random.Random(0))


def test_mutate_n_chains_edits():
    m = gp.mutate_n(SEEDS["wheel"], random.Random(3), 3)
    assert m.kind.count("+") == 2 and m.text != SEEDS["wheel"]
