"""PPO over programs, as pure functions of arrays (tested on hand-computed inputs).

An episode is one program: its tokens are the steps, and the simulator's score arrives after
the last one. As in RL fine-tuning of language models, every token also pays the KL penalty to
the frozen stage-2 model, `-kl_coef * (log pi(a_t) - log pi_ref(a_t))` (the sampled estimate of
KL(pi || pi_ref)), so the policy is kept near the model whose programs work. Advantages are GAE
over the tokens of each program (value 0 after the last one), and the losses are PPO's clipped
surrogate and clipped value loss. All tensors are [B, T] with a mask of real tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def token_rewards(
    score: jax.Array, mask: jax.Array, logp: jax.Array, ref_logp: jax.Array, kl_coef: float
) -> jax.Array:
    """Per-token rewards [B, T]: -kl_coef * (logp - ref_logp) on every real token, plus the
    program's `score` [B] on its last real token (a program with no token gets nothing)."""
    m = mask.astype(jnp.float32)
    r = -kl_coef * (logp - ref_logp) * m
    t = mask.shape[1]
    last = jnp.max(jnp.where(mask, jnp.arange(t)[None], -1), axis=1)  # [B]
    at_last = (jnp.arange(t)[None] == last[:, None]) & (last[:, None] >= 0)
    return r + jnp.where(at_last, score[:, None], 0.0)


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float
) -> tuple[jax.Array, jax.Array]:
    """(advantages, returns) [B, T] by generalised advantage estimation over each row's real
    tokens; the value after the last real token is 0 (the program has ended), padding gets 0."""
    m = mask.astype(jnp.float32)
    v = values * m
    next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
    next_m = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
    delta = (rewards + gamma * next_v * next_m - v) * m

    def back(carry: jax.Array, x: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        d, nm = x
        a = d + gamma * lam * nm * carry
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros_like(delta[:, 0]), (delta.T, next_m.T), reverse=True)
    adv = adv.T * m
    return adv, (adv + v) * m


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(jnp.float32)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def whiten(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / std over the real tokens (padding stays 0)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * jax.lax.rsqrt(var + eps) * mask


class LossParts(NamedTuple):
    total: jax.Array
    policy: jax.Array
    value: jax.Array
    entropy: jax.Array
    approx_kl: jax.Array  # mean (old logp - new logp): how far this update moved the policy
    clip_fraction: jax.Array


def ppo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    entropy: jax.Array,
    mask: jax.Array,
    clip: float,
    value_clip: float,
    value_coef: float,
) -> LossParts:
    """PPO's clipped surrogate + value_coef * clipped value loss, token-averaged over `mask`."""
    ratio = jnp.exp(logp - old_logp)
    surrogate = jnp.minimum(
        ratio * advantages, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantages
    )
    policy = -masked_mean(surrogate, mask)
    v_clipped = old_values + jnp.clip(values - old_values, -value_clip, value_clip)
    value = 0.5 * masked_mean(
        jnp.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask
    )
    return LossParts(
        total=policy + value_coef * value,
        policy=policy,
        value=value,
        entropy=masked_mean(entropy, mask),
        approx_kl=masked_mean(old_logp - logp, mask),
        clip_fraction=masked_mean((jnp.abs(ratio - 1.0) > clip).astype(jnp.float32), mask),
    )


def program_scores(
    distance: jax.Array, ok: jax.Array, reward_scale: float, invalid_penalty: float
) -> jax.Array:
    """Each program's terminal reward: scale * distance toward the goal when it ran and walked,
    scale * invalid_penalty when it failed (syntax, sandbox, invalid walker)."""
    return reward_scale * jnp.where(ok, distance, invalid_penalty)
