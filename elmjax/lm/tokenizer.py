"""Tokenizers through the `tokenizers` library: HF tokenizer.json, GGUF vocabularies, and a
byte-level BPE trained for elmjax's own small models.

Byte-level BPE (GPT-2's scheme) is used for our models because it never produces an unknown
token: any program text, including a mutated one full of odd characters, round-trips exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

#: special tokens of elmjax-trained tokenizers; <|endoftext|> separates and ends documents.
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE on `texts`. Special tokens get the lowest ids, in order."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A Hugging Face `tokenizer.json`, or a directory holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(path)


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> str:
    """Write `tokenizer.json` (into `path` if it is a directory). Returns the file written."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    tok.save(path)
    return path


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added (prompts are built by the caller)."""
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def token_id(tok: Tokenizer, token: str) -> int | None:
    return tok.token_to_id(token)
