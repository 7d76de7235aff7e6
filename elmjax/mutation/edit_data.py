"""Training data for diff models: edits (parent -> child) rendered as diff examples and packed.

Shared by every place that trains a diff model on edits: `experiments/train_elm_tiny.py` (GP
lineages and the diffs that entered the archive in earlier runs), the loop's online fine-tuning
(`mutation.finetune_every`: the run's own accepted diffs) and stage 2's `elmjax finetune`.

    edits = store.entered_edits()                         # [(program id, parent, child), ...]
    examples = edit_examples([(p, c) for _, p, c in edits], NUMBERED_FORMAT)
    data, stats = pack_examples(tokenizer, examples, seq_len=1024, seed=0)

Why packing: the examples are short (a few hundred tokens) and of very different lengths;
padding each to the longest would spend most of a small CPU's compute on padding. Packed rows
hold several examples back to back; loss is on the completions (the diffs) only, by default,
because that is what the model is asked to write (`loss="all"` also trains on the programs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from elmjax.mutation.diff_format import MESSAGES, DiffExample, DiffFormat, normalize_program
from elmjax.mutation.unified_diff import make_diff, split_lines

MSG_CHANGED, MSG_PARAMETERS, MSG_SMALL = (m for m, _ in MESSAGES)


def message_for_edit(before: str, after: str) -> str:
    """The paper's commit message that describes before -> after, read from the diff itself
    (so edits of any origin -- GP, an LM, a person -- get the same labels): only numbers changed
    -> "Changed parameters ...", one line changed -> "Small change ...", else "Changed ..."."""
    diff = make_diff(normalize_program(before), normalize_program(after), context=0)
    removed = [line[1:] for line in split_lines(diff) if line.startswith("-") and not
               line.startswith("--- ")]  # fmt: skip
    added = [line[1:] for line in split_lines(diff) if line.startswith("+") and not
             line.startswith("+++ ")]  # fmt: skip

    def shape(line: str) -> str:
        import re

        return re.sub(r"\d+(\.\d*)?(e-?\d+)?", "#", line)

    if (
        removed
        and len(removed) == len(added)
        and all(shape(a) == shape(b) for a, b in zip(removed, added))
    ):
        return MSG_PARAMETERS
    if len(removed) <= 1 and len(added) <= 1:
        return MSG_SMALL
    return MSG_CHANGED


def edit_examples(
    edits: Sequence[tuple[str, str]], fmt: DiffFormat, messages: Sequence[str] | None = None
) -> list[DiffExample]:
    """One example per (parent, child) edit that changes the program; the message is
    `message_for_edit` unless given per edit."""
    out = []
    for k, (parent, child) in enumerate(edits):
        if normalize_program(parent) == normalize_program(child):
            continue
        message = messages[k] if messages is not None else message_for_edit(parent, child)
        out.append(fmt.example(parent, child, message))
    return out


def pack_examples(
    tokenizer: Any,
    examples: Sequence[DiffExample],
    seq_len: int,
    seed: int,
    loss: str = "completion",
) -> tuple[Any, dict[str, Any]]:
    """Greedy packing of shuffled examples (each ending in the tokenizer's end-of-text token)
    into rows of `seq_len`; examples longer than a row are dropped. Returns
    (`elmjax.lm.train.TokenDataset`, figures about the data)."""
    from elmjax.lm.train import TokenDataset, _eos_id, _pad_id

    if loss not in ("completion", "all"):
        raise ValueError(f"loss must be 'completion' or 'all', got {loss!r}")
    eos, pad = _eos_id(tokenizer), _pad_id(tokenizer)
    encoded = []
    for ex in examples:
        p = tokenizer.encode(ex.prompt, add_special_tokens=False).ids
        c = tokenizer.encode(ex.completion, add_special_tokens=False).ids
        c = c + ([eos] if eos is not None else [])
        m = [loss == "all"] * len(p) + [True] * len(c)
        encoded.append((p + c, m))
    kept = [e for e in encoded if len(e[0]) <= seq_len]
    if not kept:
        raise ValueError(f"no example fits in {seq_len} tokens")
    order = np.random.default_rng(seed).permutation(len(kept))
    rows: list[tuple[list[int], list[bool]]] = []
    ids: list[int] = []
    mask: list[bool] = []
    for i in order:
        e_ids, e_mask = kept[i]
        if len(ids) + len(e_ids) > seq_len:
            rows.append((ids, mask))
            ids, mask = [], []
        ids, mask = ids + e_ids, mask + e_mask
    if ids:
        rows.append((ids, mask))
    tokens = np.full((len(rows), seq_len), pad, np.int32)
    loss_mask = np.zeros((len(rows), seq_len), bool)
    for r, (row_ids, row_mask) in enumerate(rows):
        tokens[r, : len(row_ids)] = row_ids
        loss_mask[r, : len(row_mask)] = row_mask
        loss_mask[r, 0] = False
    stats = {
        "examples": len(encoded),
        "examples_kept": len(kept),
        "rows": len(rows),
        "tokens": int(sum(len(e[0]) for e in kept)),
        "loss_tokens": int(loss_mask.sum()),
        "mean_example_tokens": float(np.mean([len(e[0]) for e in kept])),
        "max_example_tokens": int(max(len(e[0]) for e in kept)),
    }
    return TokenDataset(tokens, loss_mask), stats
