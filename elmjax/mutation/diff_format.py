"""The ELM paper's diff-model prompt format.

The ELM diff models were trained on GitHub commits rendered as

    <NME> {file name}
    <BEF> {file before the commit}
    <MSG> {commit message}
    <DFF> {unified diff}

and at mutation time are prompted with everything up to `<DFF>`, so the model writes a diff. The
paper prompts with one of three commit messages, drawn with fixed probabilities (section 4.1);
`sample_message` draws them the same way. `END_OF_DIFF` closes each training example so sampling
has a stop sequence. elm-tiny v2 is trained on a numbered variant of this rendering that a small
model can copy from (`DiffFormat`, `NUMBERED_FORMAT`, below).
"""

from __future__ import annotations

import difflib
import random
import re
from dataclasses import dataclass

from elmjax.mutation.unified_diff import (
    Applied,
    DiffError,
    Hunk,
    make_diff,
    parse_diff,
    split_lines,
    try_apply,
)

#: The paper's commit messages and their probabilities.
MESSAGES: tuple[tuple[str, float], ...] = (
    ("Changed make_walker function.", 0.4),
    ("Changed parameters in make_walker function.", 0.3),
    ("Small change to make_walker function.", 0.3),
)
#: The file name the prompt shows (the paper's Sodarace programs are `walker.py`).
DEFAULT_FILE = "walker.py"
#: Written after a diff in training examples; the sampler stops on it (and on a new `<NME>`).
END_OF_DIFF = "<END>"
STOP = (END_OF_DIFF, "\n<NME>")


def sample_message(rng: random.Random, messages: tuple[tuple[str, float], ...] = MESSAGES) -> str:
    """A commit message drawn with the paper's probabilities (deterministic for `rng`)."""
    texts = [m for m, _ in messages]
    weights = [w for _, w in messages]
    return rng.choices(texts, weights=weights, k=1)[0]


def normalize_program(program: str) -> str:
    """The program as the prompt shows it: trailing blank space removed, one final newline."""
    return program.rstrip() + "\n"


def diff_prompt(program: str, message: str, file_name: str = DEFAULT_FILE) -> str:
    """Everything up to and including `<DFF>`: what a diff model is asked to continue."""
    return f"<NME> {file_name}\n<BEF> {normalize_program(program)}<MSG> {message}\n<DFF>"


@dataclass(frozen=True)
class DiffExample:
    """One training example: prompt (not trained on) and completion (trained on)."""

    prompt: str
    completion: str

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def diff_example(
    before: str, after: str, message: str, file_name: str = DEFAULT_FILE
) -> DiffExample:
    """Render `before -> after` as the paper's format. The completion is a newline, the diff
    (with `--- a/`, `+++ b/` headers) and `END_OF_DIFF`."""
    before, after = normalize_program(before), normalize_program(after)
    diff = make_diff(before, after, file_name)
    if not diff:
        raise ValueError("before and after are the same program: there is no diff to learn")
    return DiffExample(diff_prompt(before, message, file_name), "\n" + diff + END_OF_DIFF)


def extract_diff(completion: str) -> str:
    """The diff part of a model's completion: cut at the first stop sequence."""
    cut = len(completion)
    for stop in STOP:
        at = completion.find(stop)
        if at != -1:
            cut = min(cut, at)
    return completion[:cut]


# ---- the numbered rendering (elm-tiny v2) --------------------------------------------------------
#
# A 1.5M-parameter model cannot find a line of the parent by its content and copy it: elm-tiny v1,
# trained on the paper's rendering (3 context lines, bare text), wrote context lines from the
# programs it had memorised, and 0% of its diffs applied on a lineage it never saw. The numbered
# rendering makes copying a one-step lookup. The prompt shows each parent line after its number
# (`12|    x = 5`), and the diff has no context lines and names each old line it removes by the
# same number (`-12|    x = 5`), so after writing `-12|` the model only has to continue as the
# prompt continued after `12|`. Added lines carry no number (`+    x = 7`): they are new text,
# usually a near-copy of the removed line just above. Hunk headers stay (`@@ -12 +12 @@`), so a
# pure insertion still says where it goes. `to_unified` strips the numbers, and the tolerant
# applier (`unified_diff.apply_diff`) does the rest: a model's diff still applies by content.
# When it does not, the numbers decide (`apply_numbered`, below).

_NUMBERED_LINE = re.compile(r"^([ +\-])\d+\|", re.MULTILINE)


def number_lines(program: str) -> str:
    """`program` with each line prefixed by its 1-based number and `|`."""
    lines = split_lines(normalize_program(program))
    return "".join(f"{k}|{line}" for k, line in enumerate(lines, 1))


def numbered_diff(before: str, after: str) -> str:
    """The 0-context unified diff of before -> after, without file headers, with every old line
    (removed) prefixed by its number in `before`."""
    diff = make_diff(before, after, context=0)
    out = []
    old_no = 0
    for line in split_lines(diff):
        if line.startswith(("--- ", "+++ ")):
            continue
        if line.startswith("@@"):
            out.append(line)
            m = re.match(r"@@ -(\d+)(?:,(\d+))?", line)
            start, length = int(m[1]), int(m[2] if m[2] is not None else 1)
            old_no = start if length else start + 1
            continue
        if line[:1] in (" ", "-"):
            out.append(f"{line[0]}{old_no}|{line[1:]}")
            old_no += 1
        else:
            out.append(line)
    return "".join(out)


@dataclass(frozen=True)
class DiffFormat:
    """How a diff model is prompted and how its completion becomes a unified diff.

    `elm`: the paper's rendering (what the published ELM diff models and general code models
    read). `numbered`: numbered parent lines and 0-context numbered hunks (elm-tiny v2; see
    `number_lines`). A model bundle names its format (`LanguageModel.diff_format`)."""

    name: str

    def prompt(self, program: str, message: str, file_name: str = DEFAULT_FILE) -> str:
        if self.name == "numbered":
            return f"<NME> {file_name}\n<BEF> {number_lines(program)}<MSG> {message}\n<DFF>"
        return diff_prompt(program, message, file_name)

    def completion(self, before: str, after: str, file_name: str = DEFAULT_FILE) -> str:
        """What the model is trained to write for before -> after (including `END_OF_DIFF`)."""
        before, after = normalize_program(before), normalize_program(after)
        if before == after:
            raise ValueError("before and after are the same program: there is no diff to learn")
        if self.name == "numbered":
            return "\n" + numbered_diff(before, after) + END_OF_DIFF
        return "\n" + make_diff(before, after, file_name) + END_OF_DIFF

    def example(
        self, before: str, after: str, message: str, file_name: str = DEFAULT_FILE
    ) -> DiffExample:
        return DiffExample(
            self.prompt(before, message, file_name), self.completion(before, after, file_name)
        )

    def apply(self, program: str, completion: str, *, by_number: bool = True) -> Applied:
        """The child program a completion makes of `program`, or why there is none (never
        raises). `numbered`: `apply_numbered` (`by_number=False`: the content rule alone, the
        strict figure the operators benchmark reports beside the default). `elm`: the tolerant
        content applier."""
        if self.name == "numbered":
            return apply_numbered(program, completion, by_number=by_number)
        return try_apply(program, self.to_unified(completion))

    def to_unified(self, completion: str) -> str:
        """The model's completion as a unified diff for the applier: cut at the first stop
        sequence and, for `numbered`, the line numbers taken off the body lines."""
        diff = extract_diff(completion)
        if self.name == "numbered":
            diff = _NUMBERED_LINE.sub(r"\1", diff)
        return diff


# ---- applying a numbered completion -------------------------------------------------------------
#
# elm-tiny v2 on the held-out evaluation parents (experiments/RESULTS.md, "why elm-tiny's children
# fail"): of the 29 in 64 diffs the content applier refused, 11 named the right line by number
# but wrote its text as the seed had it before the parent's lineage changed it
# (`-15|MAX_AMPLITUDE = 10.0` where the parent's line 15 is `MAX_AMPLITUDE = 13.004`): the edit
# means something, and its address is in the diff. So the numbered format has one more rule, as
# `patch --fuzz` has for context: when the content rule finds no place for a diff, each hunk is
# placed by its line numbers, provided every line it removes *resembles* the program's line of
# that number (`resembles`); a hunk that does not is placed where its old lines stand
# (whitespace-insensitively, nearest its number), and a diff with a hunk placed by neither rule
# does not apply. The removed lines are the parent's lines, not the model's text.
# Refused outright: numbers out of range or not consecutive within a hunk, two hunks that claim
# the same line, removed lines without a number. Hallucinated text (nothing like line N) is
# never applied by number.

#: A removed line names line N by number only when it differs from line N in at most this many
#: tokens, and in at most a quarter of the line's tokens (at least one): one or two changed
#: literals, not a different statement.
NUMBER_FUZZ_TOKENS = 3
#: Lines longer than this many tokens are compared whitespace-insensitively only (bounds the
#: token alignment's cost on hostile output).
_MAX_FUZZ_LINE_TOKENS = 200
_TOKEN = re.compile(r"\d+\.?\d*(?:[eE][-+]?\d+)?|\w+|\S")
_NUMBER_PREFIX = re.compile(r"^(\d{1,9})\|")


def _squash(line: str) -> str:
    return " ".join(line.split())


def resembles(text: str, line: str) -> bool:
    """Whether a removed line's `text` may stand for the program's `line`: equal up to
    whitespace, or (neither blank) at most `NUMBER_FUZZ_TOKENS` token edits apart and at most a
    quarter of `line`'s tokens."""
    if _squash(text) == _squash(line):
        return True
    a, b = _TOKEN.findall(text), _TOKEN.findall(line)
    if not a or not b or max(len(a), len(b)) > _MAX_FUZZ_LINE_TOKENS:
        return False
    limit = min(NUMBER_FUZZ_TOKENS, max(1, len(b) // 4))
    if abs(len(a) - len(b)) > limit:
        return False
    return _edits(a, b) <= limit


def token_edits(text: str, line: str) -> int:
    """Tokens (numbers, words, single symbols) changed, inserted or deleted between two lines:
    the distance `resembles` bounds."""
    return _edits(_TOKEN.findall(text), _TOKEN.findall(line))


def _edits(a: list[str], b: list[str]) -> int:
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")


def apply_numbered(program: str, completion: str, *, by_number: bool = True) -> Applied:
    """Apply a numbered-format completion to `program` (never raises).

    First by content, exactly as the paper's format applies (`unified_diff.try_apply` on
    `to_unified`); if that finds no place and `by_number`, by line number (see the rules
    above). `Applied.rule` says which placed it."""
    strict = try_apply(program, NUMBERED_FORMAT.to_unified(completion))
    if strict.ok or strict.reason != "not_found" or not by_number:
        return strict
    try:
        return Applied(_apply_by_number(normalize_program(program), completion), rule="number")
    except DiffError as err:
        return Applied(None, "not_found", f"{strict.message}; by number: {err.message}")
    except Exception as err:  # untrusted input: a malformed diff never crashes a run
        return Applied(None, "parse", f"{type(err).__name__}: {err}"[:300])


def _apply_by_number(program: str, completion: str) -> str:
    lines = split_lines(program)
    placed = []  # (start, end, hunk, number)
    for k, hunk in enumerate(parse_diff(extract_diff(completion)), 1):
        start = _place(lines, hunk, k)
        placed.append((start, start + len(hunk.old), hunk, k))
    placed.sort(key=lambda p: (p[0], p[1]))
    for (_, end_a, _, ka), (start_b, _, _, kb) in zip(placed, placed[1:]):
        if start_b < end_a:
            raise DiffError("not_found", f"hunks {ka} and {kb} claim the same line {start_b + 1}")
    for start, end, hunk, _ in reversed(placed):
        lines[start:end] = _new_lines(hunk, lines[start:end])
    return "".join(lines)


def _place(lines: list[str], hunk: Hunk, k: int) -> int:
    """0-based index of the program line where `hunk`'s old lines start."""
    numbers, texts = [], []
    for text in hunk.old:
        m = _NUMBER_PREFIX.match(text)
        if m is None:
            raise DiffError("not_found", f"hunk {k}: a removed line has no line number")
        numbers.append(int(m[1]))
        texts.append(text[m.end() :])
    if not numbers:  # pure insertion: after the line the header names
        if not 0 <= hunk.old_start <= len(lines):
            raise DiffError("not_found", f"hunk {k}: insertion after line {hunk.old_start}, "
                            f"the program has {len(lines)}")  # fmt: skip
        return hunk.old_start
    first = numbers[0]
    if numbers != list(range(first, first + len(numbers))):
        raise DiffError("not_found", f"hunk {k}: line numbers {numbers[:8]} are not consecutive")
    if not 1 <= first <= first + len(numbers) - 1 <= len(lines):
        raise DiffError(
            "not_found", f"hunk {k}: lines {first}-{numbers[-1]} of a {len(lines)}-line program"
        )
    if all(resembles(t, lines[first - 1 + i]) for i, t in enumerate(texts)):
        return first - 1
    old = [_squash(t) for t in texts]
    keyed = [_squash(line) for line in lines]
    starts = [s for s in range(len(lines) - len(old) + 1) if keyed[s : s + len(old)] == old]
    if not starts:
        raise DiffError(
            "not_found",
            f"hunk {k}: {texts[0].strip()[:60]!r} is neither line {first} nor in the program",
        )
    return min(starts, key=lambda s: (abs(s - (first - 1)), s))


def _new_lines(hunk: Hunk, found: list[str]) -> list[str]:
    """The program's lines for a placed hunk: context kept as the program has it, removed lines
    dropped, added lines shifted by the indentation the program's first non-blank old line has
    over the diff's."""
    old = [_NUMBER_PREFIX.sub("", t) for t in hunk.old]
    pairs = [(f, t) for f, t in zip(found, old) if t.strip() and f.strip()]
    shift = _indent(pairs[0][0]) - _indent(pairs[0][1]) if pairs else 0
    out, k = [], 0
    for tag, text in hunk.lines:
        if tag != "+":
            if tag == " ":
                out.append(found[k])
            k += 1
            continue
        text = text if text.endswith("\n") else text + "\n"
        if shift > 0 and text.strip():
            text = " " * shift + text
        elif shift < 0:
            text = text[min(-shift, _indent(text)) :]
        out.append(text)
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


ELM_FORMAT = DiffFormat("elm")
NUMBERED_FORMAT = DiffFormat("numbered")
FORMATS = {f.name: f for f in (ELM_FORMAT, NUMBERED_FORMAT)}


def get_format(name: str | None) -> DiffFormat:
    """A format by name; None is the paper's (`elm`)."""
    if name is None:
        return ELM_FORMAT
    if name not in FORMATS:
        raise ValueError(f"unknown diff format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]
