"""The ELM paper's 4-Parity bug-fixing domain (Lehman et al. 2022, section 3).

A program defines `parity(b1, b2, b3, b4)`, which should return 1 when an odd number of its
four bits are set and 0 otherwise. The task starts from a copy with `n_bugs` bugs, the ones the
paper (and OpenELM's `mutate_code`) use: bugs 1-4 rename the input variables `b1`..`b4` inside
the sum to `c1`..`c4` (undefined names, so the function raises), bug 5 changes `% 2` to `% 3`.
Fitness is the share of the 16 possible inputs answered right; a fix is a program that answers
all 16. The paper's finding: GP's chance of a fix falls exponentially with the number of bugs,
while a diff model trained on commits fixes all five.

`check_parity` runs in the sandbox worker (the sandbox passes it the function itself, with
`call=False`), calls it on every input and returns the 16 answers as plain ints (None where the
call raised or returned something that is not 0/1), so nothing the program built leaves the
worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from elmjax.envs.base import DescriptorSpace, Evaluation
from elmjax.sandbox.schemas import ReplyError

#: The 16 inputs, in a fixed order.
INPUTS: tuple[tuple[int, int, int, int], ...] = tuple(itertools.product((0, 1), repeat=4))
#: The right answers, in the order of INPUTS.
TARGETS: tuple[int, ...] = tuple(sum(bits) % 2 for bits in INPUTS)
MAX_BUGS = 5

_TEMPLATE = (
    "def parity(b1, b2, b3, b4):\n"
    '    """Return binary parity of a sequence of input bits. '
    'Return 0 for even parity, 1 for odd parity."""\n'
    "    bit_sum = sum([{0}1, {1}2, {2}3, {3}4])\n"
    "    return bit_sum % {4}\n"
)


def parity_program(n_bugs: int = 0) -> str:
    """The paper's parity function with its first `n_bugs` bugs (0 = the correct one)."""
    if not 0 <= n_bugs <= MAX_BUGS:
        raise ValueError(f"n_bugs must be in 0..{MAX_BUGS}, got {n_bugs}")
    parts: list[Any] = ["b", "b", "b", "b", 2]
    for i in range(n_bugs):
        parts[i] = "c" if i < 4 else 3
    return _TEMPLATE.format(*parts)


def check_parity(fn: Any) -> list[int | None]:
    """Sandbox `check`: the program's `parity` function -> its 16 answers (None = wrong type
    or raised). Runs in the worker; module-level and JAX-free."""
    if not callable(fn):
        raise TypeError(f"parity must be a function, got {type(fn).__name__}")
    answers: list[int | None] = []
    for bits in INPUTS:
        try:
            out = fn(*bits)
        except Exception:
            answers.append(None)
            continue
        answers.append(int(out) if type(out) in (int, bool) and out in (0, 1) else None)
    return answers


def score(answers: Sequence[int | None]) -> float:
    """Share of the 16 inputs answered right."""
    return sum(a == t for a, t in zip(answers, TARGETS)) / len(TARGETS)


class Parity:
    """The 4-Parity `Environment`. Descriptor: share right on even-parity inputs and on
    odd-parity inputs (a program that always answers 0 sits in a different niche from one that
    always answers 1)."""

    name = "parity"
    entry = "parity"
    #: The sandbox passes the function to `check` instead of calling it with no arguments.
    call = False
    descriptor_space = DescriptorSpace(("even_right", "odd_right"), (0.0, 0.0), (1.0, 1.0))
    #: Prompt settings of the LM operators (see `elmjax.mutation.operators.make_operator`).
    diff_file = "parity.py"
    diff_messages: tuple[tuple[str, float], ...] = (("Fixed bugs", 1.0),)
    prompt_instruction = "Fixed bugs in {entry}_old above."

    def __init__(self, n_bugs: int = MAX_BUGS) -> None:
        self.n_bugs = n_bugs

    @property
    def check(self) -> Callable[[Any], Any]:
        return check_parity

    def seed_programs(self) -> dict[str, str]:
        return {f"parity_{self.n_bugs}_bugs": parity_program(self.n_bugs)}

    def evaluate(self, results: Sequence[Any], seed: int = 0) -> Evaluation:
        """Fitness and descriptor of `check_parity` outputs (None for a program that failed)."""
        n = len(results)
        fitness = np.zeros(n, np.float32)
        descriptor = np.zeros((n, 2), np.float32)
        valid = np.zeros(n, bool)
        errors: list[str | None] = []
        even = [k for k, t in enumerate(TARGETS) if t == 0]
        odd = [k for k, t in enumerate(TARGETS) if t == 1]
        for i, answers in enumerate(results):
            if not isinstance(answers, list | tuple) or len(answers) != len(INPUTS):
                errors.append("no answers")
                continue
            right = [a == t for a, t in zip(answers, TARGETS)]
            fitness[i] = sum(right) / len(right)
            descriptor[i] = (
                sum(right[k] for k in even) / len(even),
                sum(right[k] for k in odd) / len(odd),
            )
            valid[i] = True
            errors.append(None)
        return Evaluation(fitness, descriptor, valid, errors)


def run_parity(sources: Sequence[str], **kw: Any) -> list[float | None]:
    """Fitness of each program through the sandbox (None when it did not run)."""
    from elmjax.sandbox import run_programs

    results = run_programs(list(sources), "parity", check_parity, call=False, **kw)
    return [score(r.value) if r.ok else None for r in results]


def parity_reply(value: Any) -> list[int | None]:
    """`check_parity`'s output: one answer per input, each 0, 1 or None."""
    if type(value) is not list or len(value) != len(INPUTS):
        raise ReplyError(f"parity reply must be a list of {len(INPUTS)} answers")
    if any(not (a is None or (type(a) is int and a in (0, 1))) for a in value):
        raise ReplyError("parity answers must be 0, 1 or None")
    return value


#: the caller checks every reply of `check_parity` against this (sandbox `schema_for`)
check_parity.reply_schema = parity_reply  # type: ignore[attr-defined]
