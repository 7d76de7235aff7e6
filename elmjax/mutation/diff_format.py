"""The ELM paper's diff-model prompt format.

The ELM diff models were trained on GitHub commits rendered as

    <NME> {file name}
    <BEF> {file before the commit}
    <MSG> {commit message}
    <DFF> {unified diff}

and at mutation time are prompted with everything up to `<DFF>`, so the model writes a diff. The
paper prompts with one of three commit messages, drawn with fixed probabilities (section 4.1);
`sample_message` draws them the same way. elm-tiny is trained on exactly this rendering, with
`END_OF_DIFF` closing each example so sampling has a stop sequence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from elmjax.mutation.unified_diff import make_diff

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
