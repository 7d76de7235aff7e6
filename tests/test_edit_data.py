"""Diff-model training data: accepted edits from a run's store, rendered and packed."""

from __future__ import annotations

import numpy as np

from elmjax.lm import load_model
from elmjax.mutation.diff_format import NUMBERED_FORMAT
from elmjax.mutation.edit_data import (
    MSG_CHANGED,
    MSG_PARAMETERS,
    MSG_SMALL,
    edit_examples,
    message_for_edit,
    pack_examples,
)
from elmjax.sodarace.seeds import load_seeds
from elmjax.store import ProgramRecord, ProgramStore

SQUARE = load_seeds()["square"]


def test_entered_edits_are_the_single_parent_children_that_entered(tmp_path):
    store = ProgramStore(tmp_path / "programs.sqlite")
    a = SQUARE.replace("5.0", "6.0", 1)
    b = SQUARE.replace("5.0", "7.0", 1)
    store.write_generation(0, [ProgramRecord(0, SQUARE, entered=True, valid=True)])
    store.write_generation(
        1,
        [
            ProgramRecord(1, a, parents=[0], entered=True, valid=True),
            ProgramRecord(2, b, parents=[0], entered=False, valid=True),  # rejected
            ProgramRecord(3, SQUARE, parents=[0], entered=True, valid=True),  # no change
            ProgramRecord(4, b, parents=[0, 1], entered=True, valid=True),  # crossover
        ],
    )
    store.write_generation(2, [ProgramRecord(5, b, parents=[1], entered=True, valid=True)])
    assert store.entered_edits() == [(1, SQUARE, a), (5, a, b)]
    assert store.entered_edits(up_to_generation=1) == [(1, SQUARE, a)]
    assert store.entered_edits(from_generation=2) == [(5, a, b)]
    store.close()


def test_messages_describe_the_edit():
    assert message_for_edit(SQUARE, SQUARE.replace("5.0", "6.5", 1)) == MSG_PARAMETERS
    lines = SQUARE.splitlines(keepends=True)
    one = "".join(lines[:-1] + ["    return wc.get_walker()  \n"])
    assert message_for_edit(SQUARE, SQUARE.replace("center", "centre", 1)) in (
        MSG_SMALL,
        MSG_CHANGED,
    )
    assert message_for_edit(SQUARE, SQUARE + "\nX = 1\nY = 2\n") == MSG_CHANGED
    assert message_for_edit(SQUARE, one) in (MSG_SMALL, MSG_PARAMETERS)


def test_packed_rows_hold_whole_examples_with_loss_on_diffs_only():
    tok = load_model("elm-tiny").tokenizer
    edits = [(SQUARE, SQUARE.replace("5.0", f"{k}.5", 1)) for k in range(1, 7)]
    edits.append((SQUARE, SQUARE))  # no change: skipped
    examples = edit_examples(edits, NUMBERED_FORMAT)
    assert len(examples) == 6
    data, stats = pack_examples(tok, examples, seq_len=1024, seed=0)
    assert stats["examples_kept"] == 6 and stats["rows"] == len(data) >= 2
    eos = tok.token_to_id("<|endoftext|>")
    assert int((data.tokens == eos).sum()) >= 6  # each example closed by end-of-text
    completion_ids = sum(
        len(tok.encode(e.completion, add_special_tokens=False).ids) + 1 for e in examples
    )
    assert int(data.loss_mask.sum()) == completion_ids  # diffs (and their EOS) only
    full, _ = pack_examples(tok, examples, seq_len=1024, seed=0, loss="all")
    assert int(full.loss_mask.sum()) > 3 * int(data.loss_mask.sum())
    again, _ = pack_examples(tok, examples, seq_len=1024, seed=0)
    assert np.array_equal(again.tokens, data.tokens)
