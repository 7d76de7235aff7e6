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

import random
import re
from dataclasses import dataclass

from elmjax.mutation.unified_diff import make_diff, split_lines

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

    def to_unified(self, completion: str) -> str:
        """The model's completion as a unified diff for the applier: cut at the first stop
        sequence and, for `numbered`, the line numbers taken off the body lines."""
        diff = extract_diff(completion)
        if self.name == "numbered":
            diff = _NUMBERED_LINE.sub(r"\1", diff)
        return diff


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
