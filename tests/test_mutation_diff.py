"""Unified diffs and the ELM diff format: exact round trips, tolerant application, clean
failures for malformed diffs."""

from __future__ import annotations

import random
import re

from hypothesis import given
from hypothesis import strategies as st

from elmjax.mutation.diff_format import (
    END_OF_DIFF,
    MESSAGES,
    diff_example,
    diff_prompt,
    extract_diff,
    sample_message,
)
from elmjax.mutation.unified_diff import (
    DiffError,
    apply_diff,
    make_diff,
    parse_diff,
    try_apply,
)

PROGRAM = """def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0.0, 0.0)
    b = wc.add_joint(10.0, 0.0)
    c = wc.add_joint(5.0, 8.0)
    wc.add_muscle(a, b)
    wc.add_muscle(b, c, 5.0, 0.25)
    wc.add_muscle(c, a, 2.0, 0.5)
    return wc.get_walker()
"""

# Lines drawn from a small alphabet so repeated lines (ambiguous context) are common.
_line = st.sampled_from(
    ["x = 1", "x = 2", "    y = x", "", "return x", "# note", "  ", "for i in range(3):", "pass"]
)
_text = st.builds(
    lambda lines, end: "\n".join(lines) + ("\n" if end and lines else ""),
    st.lists(_line, max_size=30),
    st.booleans(),
)


@st.composite
def _edited(draw):
    a = draw(_text)
    lines = a.split("\n")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        k = draw(st.integers(0, len(lines)))
        if op == "insert":
            lines.insert(k, draw(_line))
        elif lines and k < len(lines):
            if op == "delete":
                del lines[k]
            else:
                lines[k] = draw(_line)
    return a, "\n".join(lines)


@given(_edited())
def test_apply_of_make_diff_is_exact(pair):
    a, b = pair
    d = make_diff(a, b)
    if a == b:
        assert d == ""
        return
    assert apply_diff(a, d) == b


@given(_text, _text)
def test_round_trip_between_unrelated_texts(a, b):
    if a != b:
        assert apply_diff(a, make_diff(a, b)) == b


@given(st.text(max_size=300))
def test_malformed_diffs_fail_cleanly(junk):
    result = try_apply(PROGRAM, junk)
    assert result.ok or result.reason in ("parse", "empty", "not_found")
    if not result.ok:
        assert result.message


@given(
    st.lists(
        st.sampled_from(["@@", "@@ -1,3 +1,3 @@", " x", "-y", "+z", "---", "+++", "\\"]),
        max_size=12,
    )
)
def test_diff_shaped_garbage_never_raises_unexpectedly(lines):
    result = try_apply(PROGRAM, "\n".join(lines) + "\n")
    assert result.ok or result.reason in ("parse", "empty", "not_found")


def test_line_numbers_are_only_a_hint():
    diff = "@@ -40,3 +40,3 @@\n     b = wc.add_joint(10.0, 0.0)\n-    c = wc.add_joint(5.0, 8.0)\n+    c = wc.add_joint(5.0, 9.0)\n     wc.add_muscle(a, b)\n"
    out = apply_diff(PROGRAM, diff)
    assert "wc.add_joint(5.0, 9.0)" in out and "5.0, 8.0" not in out


def test_whitespace_tolerant_and_reindents_added_lines():
    diff = "@@ -7,2 +7,3 @@\n wc.add_muscle(b, c, 5.0, 0.25)\n-wc.add_muscle(c, a, 2.0, 0.5)\n+wc.add_muscle(c, a, 3.0, 0.5)\n+wc.add_muscle(a, c)\n"
    out = apply_diff(PROGRAM, diff)
    assert "    wc.add_muscle(c, a, 3.0, 0.5)\n    wc.add_muscle(a, c)\n" in out


def test_wrong_counts_are_read_by_prefix():
    diff = "@@ -6,1 +6,1 @@\n     wc.add_muscle(a, b)\n-    wc.add_muscle(b, c, 5.0, 0.25)\n+    wc.add_muscle(b, c, 7.0, 0.25)\n"
    assert "7.0, 0.25" in apply_diff(PROGRAM, diff)


def test_missing_context_is_reported_with_reason():
    diff = "@@ -3,2 +3,2 @@\n     q = 1\n-    r = 2\n+    r = 3\n"
    result = try_apply(PROGRAM, diff)
    assert not result.ok and result.reason == "not_found" and "hunk 1" in result.message
    assert try_apply(PROGRAM, "@@ -1,1 +1,1 @@\n def make_walker():\n").reason == "empty"
    try:
        parse_diff("no hunks here")
    except DiffError as err:
        assert err.reason == "parse"
    else:
        raise AssertionError("parse_diff accepted text without hunks")


def test_messages_follow_the_paper_probabilities():
    rng = random.Random(0)
    draws = [sample_message(rng) for _ in range(4000)]
    for message, p in MESSAGES:
        assert abs(draws.count(message) / len(draws) - p) < 0.03


def test_diff_example_renders_the_elm_format_and_applies():
    after = PROGRAM.replace("5.0, 0.25", "6.0, 0.25")
    ex = diff_example(PROGRAM, after, MESSAGES[1][0])
    assert ex.prompt == diff_prompt(PROGRAM, MESSAGES[1][0])
    assert ex.prompt.startswith("<NME> walker.py\n<BEF> def make_walker():")
    assert ex.prompt.endswith("<MSG> Changed parameters in make_walker function.\n<DFF>")
    assert ex.completion.endswith(END_OF_DIFF)
    assert apply_diff(PROGRAM, extract_diff(ex.completion)) == after


# ---- the numbered rendering (elm-tiny v2) ---------------------------------------------------


@given(_edited())
def test_numbered_completion_round_trips_through_the_applier(pair):
    from elmjax.mutation.diff_format import NUMBERED_FORMAT, normalize_program

    a, b = (normalize_program(t) for t in pair)
    if a == b:
        return
    completion = NUMBERED_FORMAT.completion(a, b)
    assert completion.endswith(END_OF_DIFF) and "--- a/" not in completion
    assert apply_diff(a, NUMBERED_FORMAT.to_unified(completion)) == b


def test_numbered_diff_names_each_removed_line_by_its_prompt_number():
    """The property the rendering exists for: every removed line of the diff, number included,
    is a line of the prompt, so a model can copy it."""
    from elmjax.mutation.diff_format import NUMBERED_FORMAT, number_lines

    rng = random.Random(0)
    lines = PROGRAM.splitlines(keepends=True)
    for _ in range(20):
        edited = list(lines)
        k = rng.randrange(len(edited))
        edited[k] = edited[k].replace("0", "3") if "0" in edited[k] else "    pass\n"
        if rng.random() < 0.5:
            edited.insert(rng.randrange(len(edited)), "    z = 1\n")
        after = "".join(edited)
        if after == PROGRAM:
            continue
        ex = NUMBERED_FORMAT.example(PROGRAM, after, MESSAGES[0][0])
        shown = set(number_lines(PROGRAM).splitlines())
        assert ex.prompt.startswith("<NME> walker.py\n<BEF> 1|def make_walker():\n2|")
        removed = [ln[1:] for ln in ex.completion.splitlines() if ln.startswith("-")]
        assert removed and all(r in shown for r in removed)
        added = [ln for ln in ex.completion.splitlines() if ln.startswith("+")]
        assert added and not any(re.match(r"\+\d+\|", a) for a in added)


def test_to_unified_strips_numbers_and_cuts_at_stop():
    from elmjax.mutation.diff_format import ELM_FORMAT, NUMBERED_FORMAT, get_format

    completion = (
        "\n@@ -3 +3 @@\n-3|    a = wc.add_joint(0.0, 0.0)\n+    a = wc.add_joint(1.0, 0.0)\n"
    )
    completion += "<END>\n-9|junk"
    diff = NUMBERED_FORMAT.to_unified(completion)
    assert (
        diff == "\n@@ -3 +3 @@\n-    a = wc.add_joint(0.0, 0.0)\n+    a = wc.add_joint(1.0, 0.0)\n"
    )
    assert apply_diff(PROGRAM, diff) == PROGRAM.replace("(0.0, 0.0)", "(1.0, 0.0)")
    # a model that wrote a wrong number still applies by content (the number is a hint)
    wrong = completion.replace("-3|", "-7|")
    assert apply_diff(PROGRAM, NUMBERED_FORMAT.to_unified(wrong)) == apply_diff(PROGRAM, diff)
    assert ELM_FORMAT.to_unified("x<END>y") == "x" and get_format(None) is ELM_FORMAT
    import pytest

    with pytest.raises(ValueError):
        get_format("nope")
    with pytest.raises(ValueError):
        NUMBERED_FORMAT.completion(PROGRAM, PROGRAM + "\n\n")
