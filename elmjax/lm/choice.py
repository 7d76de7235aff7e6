"""Choosing the next token from logits: greedy, or temperature with top-k then top-p.

Top-k / top-p need only the largest logits of a row, so the filter first looks at the best
`TOP_CANDIDATES` (`lax.top_k`, a partial selection) and sorts the whole vocabulary only when a
row's decision does not lie among them. The draw itself is always over the full masked
vocabulary, so a key gives the same token whichever path ran.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

TOP_CANDIDATES = 64  # top-k / top-p look at the best 64 logits first


def _filter_threshold(
    sorted_logits: jax.Array,
    log_norm: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array,
    use_top_k: bool,
    use_top_p: bool,
) -> tuple[jax.Array, jax.Array]:
    """(smallest logit kept [B], whether the decision lies inside `sorted_logits` [B]).

    sorted_logits [B, C]: the C largest logits of each row, descending (C = V: all of them).
    log_norm [B]: log of the softmax normaliser over what top-k keeps. Top-k first, then
    top-p over the renormalised survivors: the smallest set whose mass reaches top_p.
    """
    c = sorted_logits.shape[-1]
    threshold = jnp.full(sorted_logits.shape[:1], -jnp.inf)
    inside = jnp.ones(sorted_logits.shape[:1], bool)
    if use_top_k:
        kth = jnp.take(sorted_logits, jnp.clip(top_k - 1, 0, c - 1), axis=-1)
        threshold = jnp.maximum(threshold, kth)
        inside = top_k <= c
    if use_top_p:
        probs = jnp.where(
            sorted_logits >= threshold[:, None], jnp.exp(sorted_logits - log_norm[:, None]), 0.0
        )
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each entry
        keep = before < top_p  # the top entry always kept
        smallest_kept = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1)
        threshold = jnp.maximum(threshold, smallest_kept)
        # the nucleus ends inside the candidates when their mass reaches top_p
        inside = inside & (jnp.sum(probs, axis=-1) >= top_p)
    return threshold, inside


def _top_k_log_norm(sorted_logits: jax.Array, top_k: jax.Array) -> jax.Array:
    """Log-normaliser of the softmax over the top_k largest of `sorted_logits` [B, C] (desc)."""
    c = sorted_logits.shape[-1]
    kth = jnp.take(sorted_logits, jnp.clip(top_k - 1, 0, c - 1), axis=-1)
    return jax.nn.logsumexp(jnp.where(sorted_logits >= kth[:, None], sorted_logits, -jnp.inf), -1)


def choose_tokens(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array,
    greedy: bool,
    use_top_k: bool,
    use_top_p: bool,
) -> jax.Array:
    """Next token per row from float32 logits [B, V].

    Top-k / top-p need only the largest logits: `lax.top_k` takes the best TOP_CANDIDATES,
    and the full-vocabulary sort runs (under `lax.cond`) only when some row's decision does not
    fall inside them (top_k larger than that, or a nucleus flatter than that). Both paths give
    the same threshold, and the draw is over the full masked vocabulary either way, so a key
    gives the same token whichever path ran.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if use_top_k or use_top_p:
        vocab = logits.shape[-1]
        c = min(TOP_CANDIDATES, vocab)
        best, _ = jax.lax.top_k(logits, c)
        # the normaliser of the top-k survivors (all inside `best` when top_k <= c)
        log_norm = _top_k_log_norm(best, top_k) if use_top_k else jax.nn.logsumexp(logits, -1)
        fast, inside = _filter_threshold(best, log_norm, top_p, top_k, use_top_k, use_top_p)

        def full_sort(_: Any) -> jax.Array:
            ordered = -jnp.sort(-logits, axis=-1)
            norm = _top_k_log_norm(ordered, top_k) if use_top_k else jax.nn.logsumexp(logits, -1)
            return _filter_threshold(ordered, norm, top_p, top_k, use_top_k, use_top_p)[0]

        threshold = jax.lax.cond(jnp.all(inside), lambda _: fast, full_sort, None)
        logits = jnp.where(logits >= threshold[:, None], logits, -jnp.inf)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
