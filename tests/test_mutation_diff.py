"""Unified diffs and the ELM diff format: exact round trips, tolerant application, clean
failures for malformed diffs."""

from __future__ import annotations

import random
import re

import pytest
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


# ---- the numbered format's line-number rule (apply_numbered) ------------------------------------

NUMBERED_PROGRAM = """SPACING = 5.0  # distance between neighbouring masses
AMPLITUDE = 13.004


def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0.0, 0.0)
    b = wc.add_joint(SPACING, 0.0)
    wc.add_muscle(a, b, AMPLITUDE, 0.25)
    return wc.get_walker()
"""


def _numbered(*hunks: str) -> str:
    return "\n" + "".join(hunks) + END_OF_DIFF


def test_stale_text_at_the_right_number_applies_by_number_only():
    """The failure the rule exists for: the model names line 2 and writes it as the seed had it
    (10.0, not the parent's 13.004). Strictly it does not apply; by number it replaces line 2."""
    from elmjax.mutation.diff_format import NUMBERED_FORMAT

    completion = _numbered("@@ -2 +2 @@\n-2|AMPLITUDE = 10.0\n+AMPLITUDE = 11.5\n")
    strict = NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, completion, by_number=False)
    assert not strict.ok and strict.reason == "not_found"
    applied = NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, completion)
    assert applied.ok and applied.rule == "number"
    assert applied.text == NUMBERED_PROGRAM.replace("AMPLITUDE = 13.004", "AMPLITUDE = 11.5")


def test_content_rule_comes_first_and_is_unchanged():
    from elmjax.mutation.diff_format import NUMBERED_FORMAT

    # right text, wrong number: placed by content, as before the number rule existed
    completion = _numbered("@@ -4 +4 @@\n-4|AMPLITUDE = 13.004\n+AMPLITUDE = 1.0\n")
    applied = NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, completion)
    assert applied.rule == "content"
    assert applied.text == NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, completion, by_number=False).text
    assert applied.text == NUMBERED_PROGRAM.replace("13.004", "1.0")


@given(_edited(), st.integers(0, 2**16))
def test_number_rule_never_changes_what_the_content_rule_applies(pair, seed):
    """Round trips stay exact, and on any diff (ours, or ours with its numbers and texts
    scrambled) the default result equals the strict one whenever the strict one exists."""
    from elmjax.mutation.diff_format import NUMBERED_FORMAT, normalize_program

    a, b = (normalize_program(t) for t in pair)
    if a == b:
        return
    completion = NUMBERED_FORMAT.completion(a, b)
    assert NUMBERED_FORMAT.apply(a, completion).text == b
    rng = random.Random(seed)
    scrambled = re.sub(
        r"^-(\d+)\|", lambda m: f"-{int(m[1]) + rng.choice((-1, 0, 0, 1))}|", completion, flags=re.M
    )
    if rng.random() < 0.5:
        scrambled = scrambled.replace("x = 1", "x = 3", 1)
    strict = NUMBERED_FORMAT.apply(a, scrambled, by_number=False)
    loose = NUMBERED_FORMAT.apply(a, scrambled)
    if strict.ok:
        assert loose.text == strict.text and loose.rule == "content"
    elif loose.ok:
        assert loose.rule == "number"


def test_by_number_edits_only_the_named_lines():
    """Conservation: lines outside the placed hunks are the parent's, in order; each hunk swaps
    exactly the lines it names for the lines it adds (removed text taken from the parent)."""
    from elmjax.mutation.diff_format import NUMBERED_FORMAT

    lines = NUMBERED_PROGRAM.splitlines(keepends=True)
    completion = _numbered(
        "@@ -1 +1 @@\n-1|SPACING = 4.0  # distance between neighbouring masses\n+SPACING = 6.0\n",
        "@@ -7,2 +7 @@\n-7|    a = wc.add_joint(0.0, 1.0)\n-8|    b = wc.add_joint(SPACING, 0.0)\n"
        "+    a = wc.add_joint(0.5, 0.0)\n",
        "@@ -9,0 +9 @@\n+    wc.add_muscle(b, a)\n",
    )
    applied = NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, completion)
    assert applied.rule == "number"
    out = applied.text.splitlines(keepends=True)
    expect = ["SPACING = 6.0\n", *lines[1:6], "    a = wc.add_joint(0.5, 0.0)\n", lines[8]]
    assert out == expect + ["    wc.add_muscle(b, a)\n", lines[9]]


def test_lost_indentation_is_restored_from_the_named_line():
    from elmjax.mutation.diff_format import NUMBERED_FORMAT

    completion = _numbered(
        "@@ -9 +9 @@\n-9|wc.add_muscle(a, b, AMPLITUDE, 0.5)\n+wc.add_muscle(a, b)\n"
    )
    applied = NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, completion)
    assert applied.rule == "number"
    assert "\n    wc.add_muscle(a, b)\n" in applied.text


def test_resembles_bounds_the_fuzz():
    from elmjax.mutation.diff_format import resembles

    assert resembles("  x  =  1 ", "x = 1")  # whitespace only
    assert resembles("SPACING = 5.0  # distance", "SPACING = 4.183  # distance")  # one literal
    assert resembles(
        "wc.add_muscle(s[0], c, False, 5.0, 0.0)", "wc.add_muscle(s[1], c, False, 2.0, 0.0)"
    )
    assert not resembles("x = 1", "y = 2")  # two of three tokens: a different statement
    assert not resembles("return wc.get_walker()", "    a = wc.add_joint(0.0, 0.0)")
    assert not resembles("", "x = 1") and not resembles("x = 1", "")
    assert not resembles("a = " + "1 + " * 500 + "1", "a = " + "1 + " * 500 + "2")  # too long


@pytest.mark.parametrize(
    "hunks, why",
    [
        ("@@ -2 +2 @@\n-2|    for k in range(NUM_RIM):\n+    pass\n", "neither line 2"),  # hallucinated
        ("@@ -0 +0 @@\n-0|AMPLITUDE = 10.0\n+AMPLITUDE = 1\n", "lines 0-0"),  # out of range
        ("@@ -11 +11 @@\n-11|AMPLITUDE = 10.0\n+AMPLITUDE = 1\n", "lines 11-11"),
        ("@@ -2 +2 @@\n-99999999999|AMPLITUDE = 10.0\n+A = 1\n", "no line number"),
        ("@@ -2 +2 @@\n-2|AMPLITUDE = 10.0\n-2|AMPLITUDE = 10.0\n+A = 1\n", "not consecutive"),
        ("@@ -2 +2 @@\n-2|AMPLITUDE = 10.0\n+A = 1\n@@ -2 +2 @@\n-2|AMPLITUDE = 9.0\n+A = 2\n",
         "claim the same line"),
        ("@@ -20,0 +20 @@\n+x = 1\n@@ -2 +2 @@\n-2|AMPLITUDE = 10.0\n+A = 1\n", "insertion after"),
        ("@@ -2 +2 @@\n-AMPLITUDE = 10.0\n+A = 1\n", "no line number"),
    ],
)  # fmt: skip
def test_hostile_numbered_diffs_are_refused_with_a_reason(hunks, why):
    from elmjax.mutation.diff_format import NUMBERED_FORMAT

    applied = NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, _numbered(hunks))
    assert not applied.ok and applied.reason == "not_found"
    assert why in applied.message


def test_diff_against_another_file_is_refused():
    """A diff written for a different program names lines whose text is nothing like ours."""
    from elmjax.mutation.diff_format import NUMBERED_FORMAT

    other = "import os\n\n\ndef main():\n    os.system('rm -rf /')\n    return 0\n"
    edited = other.replace("return 0", "return 1").replace("import os", "import sys")
    completion = NUMBERED_FORMAT.completion(other, edited)
    applied = NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, completion)
    assert not applied.ok and applied.reason == "not_found"
    completion = "\n--- a/other.py\n+++ b/other.py\n" + completion.lstrip("\n")
    assert not NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, completion).ok


def test_huge_and_garbage_output_is_refused_not_raised():
    from elmjax.mutation.diff_format import NUMBERED_FORMAT

    n = len(NUMBERED_PROGRAM.splitlines())
    many = "".join(f"@@ -{k % n + 1} +1 @@\n-{k % n + 1}|{'z' * 50}\n+y\n" for k in range(3000))
    for completion in (
        _numbered(many),
        _numbered("@@ -1 +1 @@\n-1|" + "(" * 100_000 + "\n+x\n"),
        "\n@@ -1 +1 @@\n-1|\x00\x01\n+\ud800\n",
        "\n" + "@@" * 10_000,
        "",
    ):
        applied = NUMBERED_FORMAT.apply(NUMBERED_PROGRAM, completion)
        assert not applied.ok and applied.reason in ("not_found", "parse", "empty")
