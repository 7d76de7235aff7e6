"""Operators end to end: children -> sandbox -> walkers, with full records; elm-tiny offline."""

from __future__ import annotations

import ast

import pytest

from elmjax.mutation.diff_format import STOP
from elmjax.mutation.operators import (
    Child,
    CrossoverOperator,
    DiffOperator,
    PromptOperator,
    function_header,
    make_operator,
    replace_function,
)
from elmjax.mutation.unified_diff import make_diff
from elmjax.sandbox import run_programs
from elmjax.sodarace.seeds import load_seeds
from elmjax.sodarace.walker import check_walker

SEEDS = load_seeds()
INJECT = {"walker_creator": "elmjax.sodarace.walker:walker_creator"}


def run_walkers(texts):
    return run_programs(texts, "make_walker", check_walker, inject=INJECT)


class ScriptedSampler:
    """A language model stand-in that returns given completions, recording what it was asked.
    It lets these tests check the operators' own logic (prompting, applying, recording)
    independently of any model's quality."""

    def __init__(self, completions):
        self.completions = completions
        self.calls = []

    def sample(self, prompts, n, key, max_new_tokens, temperature, top_p, top_k, stop):
        self.calls.append((list(prompts), n, list(stop)))
        return [
            [self.completions[(i * n + j) % len(self.completions)] for j in range(n)]
            for i in range(len(prompts))
        ]


def test_gp_children_run_through_the_sandbox():
    parents = [SEEDS["square"], SEEDS["radial"], SEEDS["cppn_fixed"]]
    children = make_operator("gp").mutate(parents, 6, seed=0, parent_ids=[10, 11, 12])
    assert len(children) == 18 and all(isinstance(c, Child) for c in children)
    assert [c.parent_ids for c in children[:7]] == [(10,)] * 6 + [(11,)]
    assert all(c.ok and c.operator == "gp" and c.detail for c in children)
    results = run_walkers([c.text for c in children])
    assert sum(r.ok for r in results) >= 6
    assert all(r.ok or r.error.kind in ("exception", "invalid", "timeout") for r in results)
    again = make_operator("gp").mutate(parents, 6, seed=0, parent_ids=[10, 11, 12])
    assert [c.text for c in again] == [c.text for c in children]


def test_diff_operator_applies_model_diffs_and_records_failures():
    parent = SEEDS["square"]
    good = parent.replace("False, 5.0, 0.0", "False, 7.5, 0.0")
    sampler = ScriptedSampler(["\n" + make_diff(parent, good) + "<END>", "\n@@ nonsense"])
    op = DiffOperator("scripted", sampler=sampler)
    children = op.mutate([parent], 2, seed=3, parent_ids=[5])
    prompt = sampler.calls[0][0][0]
    assert prompt.startswith("<NME> walker.py\n<BEF> ") and prompt.endswith("\n<DFF>")
    assert set(STOP) <= set(sampler.calls[0][2])
    ok, bad = children
    assert ok.text == good and ok.prompt == prompt and ok.model == "scripted" and ok.detail
    assert bad.text is None and bad.error_kind == "apply" and bad.raw_output == "\n@@ nonsense"
    assert run_walkers([ok.text])[0].ok


def test_prompt_operator_replaces_the_entry_function():
    parent = SEEDS["square"]
    body = "\n    wc = walker_creator()\n    a = wc.add_joint(0, 0)\n    b = wc.add_joint(4, 1)\n    wc.add_muscle(a, b, 3.0, 0.1)\n    return wc.get_walker()\n"
    op = PromptOperator("scripted", sampler=ScriptedSampler([body, "\n    return (\n"]))
    child, broken = op.mutate([parent], 2, seed=0)
    assert child.prompt.endswith("\ndef make_walker():") and "def make_walker_old(" in child.prompt
    assert child.text.count("def make_walker():") == 1 and "def make_square(" in child.text
    assert broken.error_kind == "parse" and broken.text is None
    walker = run_walkers([child.text])[0]
    assert walker.ok and len(walker.value["joints"]) == 2


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_prompt_operator_keeps_the_parents_signature(seed):
    """The prompt ends with the parent's own header, so a body is all the model writes and the
    child's entry function has the signature the sandbox calls (whatever the seed's is)."""
    parent = SEEDS[seed]
    header = function_header(parent, "make_walker")
    assert header is not None and header.startswith("def make_walker(") and header.endswith(":")
    body = "\n    wc = walker_creator()\n    wc.add_joint(0, 0)\n    return wc.get_walker()\n"
    (child,) = PromptOperator("scripted", sampler=ScriptedSampler([body])).mutate([parent], 1, 0)
    assert child.prompt.endswith("\n" + header)
    new = next(n for n in ast.parse(child.text).body if getattr(n, "name", "") == "make_walker")
    old = next(n for n in ast.parse(parent).body if getattr(n, "name", "") == "make_walker")
    assert ast.dump(new.args) == ast.dump(old.args)


def test_function_header_as_written():
    assert function_header("def f(a,\n      b=1):\n    return a\n", "f") == (
        "def f(a,\n      b=1):"
    )
    assert function_header("def f(): return 1\n", "f") is None  # body on the header's line
    assert function_header("def f():  # note\n    return 1\n", "f") is None
    assert function_header("def g():\n    return 1\n", "f") is None
    assert function_header("def f(:\n", "f") is None


def test_crossover_pairs_parents_in_one_prompt():
    new = "def make_walker():\n    wc = walker_creator()\n    a = wc.add_joint(0, 0)\n    b = wc.add_joint(3, 3)\n    wc.add_muscle(a, b)\n    return wc.get_walker()\n"
    sampler = ScriptedSampler([new, "x = 1\n"])
    op = CrossoverOperator("scripted", sampler=sampler)
    children = op.mutate([SEEDS["square"], SEEDS["radial"]], 2, seed=1, parent_ids=[7, 8])
    assert len(sampler.calls) == 1 and len(sampler.calls[0][0]) == 2
    assert children[0].parent_ids == (7, 8) and children[2].parent_ids == (8, 7)
    assert children[0].ok and children[1].error_kind == "parse"
    assert run_walkers([children[0].text])[0].ok


def test_replace_function_appends_when_absent():
    assert replace_function("x = 1\n", "f", "def f():\n    return 2") == (
        "x = 1\n\n\ndef f():\n    return 2\n"
    )


def test_unknown_operator_and_model_for_gp_are_errors():
    with pytest.raises(ValueError):
        make_operator("mystery")
    with pytest.raises(ValueError):
        make_operator("gp", model="elm-tiny")


def test_elm_tiny_loads_offline_and_produces_children(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from elmjax.lm import load_model

    model = load_model("elm-tiny")
    op = make_operator("diff", model=model, max_new_tokens=96)
    parents = [SEEDS["square"], SEEDS["radial"]]
    children = op.mutate(parents, 2, seed=0)
    assert len(children) == 4
    assert all(c.model == "elm-tiny" and c.prompt and c.raw_output is not None for c in children)
    assert all(c.ok or c.error_kind == "apply" for c in children)
    texts = [c.text for c in children if c.ok]
    if texts:  # whatever applied must go through the sandbox cleanly, valid or not
        assert len(run_walkers(texts)) == len(texts)
    again = make_operator("diff", model=model, max_new_tokens=96).mutate(parents, 2, seed=0)
    assert [c.raw_output for c in again] == [c.raw_output for c in children]


def test_diff_operator_prompts_in_the_models_own_format():
    """A model bundle that names `diff_format: numbered` (elm-tiny v2) gets numbered prompts
    and its numbered diffs apply; an explicit `diff_format` overrides the model's."""
    from types import SimpleNamespace

    from elmjax.mutation.diff_format import NUMBERED_FORMAT

    parent = SEEDS["square"]
    good = parent.replace("False, 5.0, 0.0", "False, 7.5, 0.0", 1)
    sampler = ScriptedSampler([NUMBERED_FORMAT.completion(parent, good), "\n-1|zzz\n<END>"])
    sampler.model = SimpleNamespace(diff_format="numbered")
    op = DiffOperator("scripted", sampler=sampler)
    ok, bad = op.mutate([parent], 2, seed=1)
    prompt = sampler.calls[0][0][0]
    assert prompt.startswith("<NME> walker.py\n<BEF> 1|") and "\n2|" in prompt
    assert ok.text.rstrip() == good.rstrip() and bad.error_kind == "apply"
    plain = DiffOperator("scripted", sampler=sampler, diff_format="elm")
    plain.mutate([parent], 1, seed=1)
    assert "\n2|" not in sampler.calls[-1][0][0]
