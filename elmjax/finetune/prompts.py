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
from typing import Any

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


def completion_ids(
    tokenizer: Any, text: str, niche: Sequence[float] | None = None
) -> tuple[list[int], str]:
    """(prompt token ids, the program text they show) for the OOD test: the header's tokens,
    then the program's own tokens up to `first_half`'s cut.

    The ids are built the way training built them (header and program tokenized apart, the
    program from its start), and the cut falls on a token boundary of that tokenization: BPE
    merges across line ends (`'1)\n    '` is one token), so a prompt ending at the newline
    itself is a token sequence the model never saw, and a small model answered it with EOS or
    token soup (0 valid completions of 192). The shown text is the half up to the last token
    that ends at or before the cut (at most one token short of it)."""
    from elmjax.lm.tokenizer import encode

    head = encode(tokenizer, program_prompt(niche))
    program = tokenizer.encode(text, add_special_tokens=False)
    cut = len(first_half(text))
    k = sum(1 for _, end in program.offsets if end <= cut)  # offsets grow with the tokens
    end = program.offsets[k - 1][1] if k else 0
    return head + program.ids[:k], text[:end]


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
