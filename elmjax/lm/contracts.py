"""Shape contracts of the language model's jit-compiled entry points, checked with chex.

Each check runs while its function is traced (so once per compiled program, never per call)
and names the function and the argument in its message: a wrong input fails here instead of
inside attention, the decode loop or the optimizer.
"""

from __future__ import annotations

import chex
import jax

from elmjax.lm.config import LMConfig
from elmjax.lm.model import Decoder


def check_generate_args(
    model: Decoder,
    prefill_model: Decoder,
    prompt_tokens: jax.Array,
    prompt_start: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array,
    stop_seqs: jax.Array,
    eos_ids: jax.Array,
) -> None:
    """`sampler.generate`: prompt_tokens [P, L] int, prompt_start [P] int, scalar
    temperature / top_p (float) and top_k (int), stop_seqs [K, M] int, eos_ids [E] int, and
    decoders (merged from the states passed in) whose embedding is [V, d_model] of their
    config."""
    where = "sampler.generate"
    chex.assert_rank(prompt_tokens, 2, custom_message=f"{where}: prompt_tokens must be [P, L]")
    chex.assert_type(prompt_tokens, int, custom_message=f"{where}: prompt_tokens must be integer")
    num_prompts = prompt_tokens.shape[0]
    chex.assert_shape(
        prompt_start,
        (num_prompts,),
        custom_message=f"{where}: prompt_start must be [P={num_prompts}]",
    )
    chex.assert_type(prompt_start, int, custom_message=f"{where}: prompt_start must be integer")
    for name, value, kind in (
        ("temperature", temperature, float),
        ("top_p", top_p, float),
        ("top_k", top_k, int),
    ):
        chex.assert_rank(value, 0, custom_message=f"{where}: {name} must be a scalar")
        chex.assert_type(value, kind, custom_message=f"{where}: {name} must be {kind.__name__}")
    chex.assert_rank(stop_seqs, 2, custom_message=f"{where}: stop_seqs must be [K, M]")
    chex.assert_type(stop_seqs, int, custom_message=f"{where}: stop_seqs must be integer")
    chex.assert_rank(eos_ids, 1, custom_message=f"{where}: eos_ids must be [E]")
    chex.assert_type(eos_ids, int, custom_message=f"{where}: eos_ids must be integer")
    for name, decoder in (("state", model), ("prefill_state", prefill_model)):
        embedding = decoder.embed.embedding[...]
        d = decoder.config.d_model
        chex.assert_rank(embedding, 2, custom_message=f"{where}: {name} embedding must be [V, D]")
        chex.assert_axis_dimension(
            embedding,
            1,
            d,
            custom_message=f"{where}: {name} embedding must be [V, d_model={d}]",
        )


def check_train_batch(config: LMConfig, tokens: jax.Array, mask: jax.Array) -> None:
    """A training step's batch (`train.train`).

    tokens [B, T] integer ids, T >= 2 (an input and a target); a GPT-2 model has learned
    positions for at most `max_seq_len` inputs (T - 1), and past them jnp indexing would clamp
    silently. loss mask [B, T] bool.
    """
    where = "train step"
    chex.assert_rank(tokens, 2, custom_message=f"{where}: tokens must be [B, T]")
    chex.assert_type(tokens, int, custom_message=f"{where}: tokens must be integer")
    inputs = tokens.shape[1] - 1
    limit = config.max_seq_len if config.arch == "gpt2" else None
    if inputs < 1 or (limit is not None and inputs > limit):
        raise ValueError(
            f"{where}: tokens must be [B, T] with 2 <= T"
            + ("" if limit is None else f" <= max_seq_len + 1 = {limit + 1}")
            + f", got shape {tokens.shape}"
        )
    chex.assert_equal_shape(
        [tokens, mask], custom_message=f"{where}: mask must have the tokens' shape [B, T]"
    )
    chex.assert_type(mask, bool, custom_message=f"{where}: mask must be bool")
