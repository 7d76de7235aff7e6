"""The RL policy: the stage-2 decoder behind a terrain soft prompt, plus a value head.

The decoder (`elmjax.lm.model.Decoder`) embeds token ids itself; a soft prompt needs the
residual stream to start from vectors instead. Rather than change the decoder, this module runs
the decoder's own modules (`embed`, `layers`, `final_norm`, `logits`) on
`[prefix vectors; token embeddings]`, so the soft prompt is an input of the same network, and
after the prompt has been prefilled, decoding is the decoder's ordinary cached `__call__`.

Conventions: the soft prompt (K vectors) takes positions 0..K-1, the text prompt (P tokens)
K..K+P-1, the program's tokens follow; with no soft prompt (K = 0) this is exactly the
decoder run on `prompt + program` (tested against `Decoder.__call__`). The action is the whole
program: its log-probability is the sum of its tokens' log-probs under
softmax(logits / temperature), the distribution `sample` draws from.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elmjax.lm.model import Decoder, KVCache, init_cache
from elmjax.rl.embedding import TerrainEmbedding


class ValueHead(nnx.Module):
    """Expected return from the hidden state before each program token (a small MLP read off
    the decoder's stream with the gradient stopped: the value loss never edits the LM)."""

    def __init__(self, d_model: int, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(d_model, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(jax.lax.stop_gradient(h))))[..., 0]


class Policy(nnx.Module):
    """Decoder + terrain embedding + value head: the parameters PPO trains."""

    def __init__(self, decoder: Decoder, embedding: TerrainEmbedding, value: ValueHead) -> None:
        if decoder.scanned:
            raise ValueError("the RL policy runs unrolled layers (state.unstack_layers)")
        self.decoder = decoder
        self.embedding = embedding
        self.value = value


def run_layers(
    decoder: Decoder,
    x: jax.Array,
    positions: jax.Array,
    cache: KVCache | None = None,
    fresh: bool = False,
) -> tuple[jax.Array, KVCache | None]:
    """`Decoder.hidden_states` from input vectors x [B, T, D] instead of token ids."""
    return decoder.hidden_states_of_vectors(x, positions, cache, fresh_cache=fresh)


def _inputs(decoder: Decoder, prefix: jax.Array | None, ids: jax.Array) -> jax.Array:
    x = decoder.embed(ids).astype(jnp.float32)
    return x if prefix is None else jnp.concatenate([prefix.astype(jnp.float32), x], axis=1)


def score_actions(
    decoder: Decoder,
    prefix: jax.Array | None,
    prompt: jax.Array,
    actions: jax.Array,
    temperature: jax.Array | float = 1.0,
    value: ValueHead | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Per-token (log-prob [B, T], entropy [B, T], value [B, T] or None) of `actions` [B, T]
    written after `prompt` [P] behind `prefix` [B, K, D] (None: no soft prompt). Padding after
    a program's end is scored too; the caller masks it."""
    b, t = actions.shape
    chex.assert_rank(prompt, 1)
    ids = jnp.concatenate([jnp.broadcast_to(prompt, (b, prompt.shape[0])), actions], axis=1)
    x = _inputs(decoder, prefix, ids)
    k = 0 if prefix is None else prefix.shape[1]
    positions = jnp.broadcast_to(jnp.arange(x.shape[1]), (b, x.shape[1]))
    h, _ = run_layers(decoder, x, positions)
    before = jax.lax.dynamic_slice_in_dim(h, k + prompt.shape[0] - 1, t, axis=1)
    logp_all = jax.nn.log_softmax(decoder.logits(before) / temperature, axis=-1)
    logp = jnp.take_along_axis(logp_all, actions[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy, None if value is None else value(before)


def sample_actions(
    decoder: Decoder,
    prefix: jax.Array | None,
    prompt: jax.Array,
    key: jax.Array,
    temperature: jax.Array | float,
    *,
    rows: int,
    max_new: int,
    eos_id: int,
) -> tuple[jax.Array, jax.Array]:
    """Sample `rows` programs: (tokens [rows, max_new], mask [rows, max_new]).

    mask[r, s] says token s belongs to program r: up to and including its EOS. After the end a
    row writes `eos_id` (masked). Row r's draws come from fold_in(fold_in(key, r), step), so a
    row's program depends on the key, its prefix and its index only. The loop stops when every
    row has ended (a `while_loop`), so short programs cost short decodes.
    """
    if prefix is not None:
        chex.assert_shape(prefix, (rows, None, None))
    p = prompt.shape[0]
    k = 0 if prefix is None else prefix.shape[1]
    length = k + p
    x = _inputs(decoder, prefix, jnp.broadcast_to(prompt, (rows, p)))
    positions = jnp.broadcast_to(jnp.arange(length), (rows, length))
    cache = init_cache(decoder.config, rows, length + max_new, jnp.float32)
    h, cache = run_layers(decoder, x, positions, cache, fresh=True)
    logits = decoder.logits(h[:, -1])
    row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(rows))

    def cond(carry: Any) -> jax.Array:
        _, _, done, step, _ = carry
        return (step < max_new) & ~jnp.all(done)

    def body(carry: Any) -> Any:
        cache, logits, done, step, out = carry
        keys = jax.vmap(lambda kk: jax.random.fold_in(kk, step))(row_keys)
        tok = jax.vmap(jax.random.categorical)(keys, logits / temperature).astype(jnp.int32)
        tok = jnp.where(done, eos_id, tok)
        out = jax.lax.dynamic_update_slice(
            out, jnp.stack([tok, (~done).astype(jnp.int32)], -1)[:, None], (0, step, 0)
        )
        done = done | (tok == eos_id)
        pos = jnp.full((rows, 1), length, jnp.int32) + step
        logits, cache = decoder(tok[:, None], pos, cache)
        return cache, logits[:, 0], done, step + 1, out

    out0 = jnp.stack(
        [jnp.full((rows, max_new), eos_id, jnp.int32), jnp.zeros((rows, max_new), jnp.int32)], -1
    )
    carry = (cache, logits, jnp.zeros((rows,), bool), jnp.int32(0), out0)
    out = jax.lax.while_loop(cond, body, carry)[-1]
    return out[..., 0], out[..., 1].astype(bool)


def base_prefix(decoder: Decoder, token_ids: list[int], prefix_len: int) -> jax.Array:
    """The embeddings of `token_ids` cycled to `prefix_len` rows: the soft prompt's start."""
    if not token_ids:
        token_ids = [0]
    ids = np.resize(np.asarray(token_ids, np.int32), prefix_len)
    return decoder.embed(jnp.asarray(ids)).astype(jnp.float32)
