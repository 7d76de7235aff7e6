"""The text a stage-2 model reads and writes: a short header, then a whole walker program.

    # Sodarace walker program
    def make_walker():
        ...

or, for a model conditioned on a niche, the header names the niche it should land in (the
centre of its grid cell, so training and sampling ask with the same numbers):

    # Sodarace walker program: height 4.2, width 12.5, mass 30.0
    def make_walker():

The completion is the program and the end-of-text token. Stage 3 (`elmjax rl`) and anyone who
samples a stage-2 model build prompts here, so a model is always asked the way it was trained.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

HEADER = "# Sodarace walker program"
NICHE_NAMES = ("height", "width", "mass")


def niche_text(values: Sequence[float], names: Sequence[str] = NICHE_NAMES) -> str:
    """`height 4.2, width 12.5, mass 30.0` (one decimal: the grid's bins are wider than that)."""
    if len(values) != len(names):
        raise ValueError(f"a niche has {len(names)} values ({', '.join(names)}), got {len(values)}")
    return ", ".join(f"{n} {float(v):.1f}" for n, v in zip(names, values))


def program_prompt(niche: Sequence[float] | None = None) -> str:
    """The prompt before a whole program: the header, with the target niche when conditioned."""
    if niche is None:
        return HEADER + "\n"
    return f"{HEADER}: {niche_text(niche)}\n"


def completion_prompt(first_part: str, niche: Sequence[float] | None = None) -> str:
    """The prompt that asks the model to finish a program given its beginning (OOD test)."""
    return program_prompt(niche) + first_part


def first_half(text: str) -> str:
    """The first half of a program's lines (rounded down), ending with a newline: what the
    out-of-distribution test shows the model of Wheel, Galloper and Runner."""
    lines = text.splitlines(keepends=True)
    head = "".join(lines[: len(lines) // 2])
    return head if head.endswith("\n") or not head else head + "\n"


def normal_form(text: str) -> str | None:
    """The program's syntax tree (`ast.dump`, no positions): two programs that differ only in
    comments, blank lines or spacing have one normal form. None when the text does not parse."""
    try:
        return ast.dump(ast.parse(text))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
