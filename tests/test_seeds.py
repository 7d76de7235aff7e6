"""The seed programs: each validates through the sandbox, stays small, and is self-contained."""

from __future__ import annotations

import ast

import pytest

from elmjax.sandbox import Limits, run_programs
from elmjax.sodarace.seeds import ELM_SEEDS, HAND_DESIGNED, load_seed, load_seeds
from elmjax.sodarace.walker import Walker, check_walker, descriptors

INJECT = {"walker_creator": "elmjax.sodarace.walker:walker_creator"}
SEEDS = load_seeds()


@pytest.fixture(scope="module")
def checked() -> dict[str, dict]:
    names = list(SEEDS)
    results = run_programs(
        [SEEDS[n] for n in names], "make_walker", check_walker,
        limits=Limits(workers=2), inject=INJECT,
    )  # fmt: skip
    assert all(r.ok for r in results), {n: r.error for n, r in zip(names, results) if not r.ok}
    return {n: r.value for n, r in zip(names, results)}


def test_names():
    assert ELM_SEEDS == ("square", "radial", "cppn_fixed", "cppn_mutable")
    assert HAND_DESIGNED == ("wheel", "galloper", "runner")
    assert list(SEEDS) == [*ELM_SEEDS, *HAND_DESIGNED]
    assert list(load_seeds(("wheel",))) == ["wheel"]
    with pytest.raises(KeyError):
        load_seed("octopus")


@pytest.mark.parametrize("name", list(SEEDS))
def test_seed_validates_in_the_sandbox_and_is_small(checked, name):
    data = checked[name]
    walker = Walker.from_dict({"joints": data["joints"], "muscles": data["muscles"]})
    assert 2 <= len(walker.joints) <= 30 and 1 <= len(walker.muscles) <= 120
    assert all(-1.0 <= c <= 31.0 for joint in walker.joints for c in joint)
    assert any(m.active for m in walker.muscles)
    assert data["descriptor"] == dict(zip(("height", "width", "mass"), descriptors(walker)))
    # one body: every joint reachable from joint 0 through connections
    reach, frontier = {0}, [0]
    while frontier:
        k = frontier.pop()
        for m in walker.muscles:
            for a, b in ((m.i, m.j), (m.j, m.i)):
                if a == k and b not in reach:
                    reach.add(b)
                    frontier.append(b)
    assert len(reach) == len(walker.joints)


@pytest.mark.parametrize("name", list(SEEDS))
def test_seed_is_self_contained_and_readable(name):
    text = SEEDS[name]
    tree = ast.parse(text)
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imports <= {"math", "random"}
    assert not any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    assert any(isinstance(n, ast.FunctionDef) and n.name == "make_walker" for n in tree.body)
    assert text.startswith("#") and len(text.splitlines()) <= 90


def test_square_is_the_papers_listing(checked):
    muscles = checked["square"]["muscles"]
    assert [m[2]["type"] for m in muscles] == ["distance"] * 5 + ["muscle"] * 3
    assert [m[2]["amplitude"] for m in muscles[5:]] == [5.0, 10.0, 2.0]


@pytest.mark.parametrize("name", HAND_DESIGNED)
def test_hand_designed_walkers_have_phased_muscles(checked, name):
    phases = {m[2]["phase"] for m in checked[name]["muscles"] if m[2]["type"] == "muscle"}
    assert len(phases) >= 2  # a travelling wave or a gait, not a uniform pulse


def test_wheel_spokes_step_round_the_rim(checked):
    spokes = [m for m in checked["wheel"]["muscles"] if m[2]["type"] == "muscle"]
    phases = sorted(m[2]["phase"] for m in spokes)
    n = len(spokes)
    assert phases == pytest.approx([k / n for k in range(n)])


def test_cppn_mutable_carries_its_network(checked):
    tree = ast.parse(SEEDS["cppn_mutable"])
    names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    assert {"HIDDEN", "OUTPUTS", "ACTIVATIONS"} <= names
    assert checked["cppn_mutable"] != checked["cppn_fixed"]
