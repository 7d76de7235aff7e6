"""The only randomness of a generation: `fold_in(PRNGKey(seed), k)` split per purpose.

Parents (`select`), children (`mutate`) and scores (`evaluate`) of generation k each get their
own key, derived from the run seed and k alone, never from what ran before in the process, so
a resumed run draws exactly what an uninterrupted one would (docs/architecture.md,
"Determinism").
"""

from __future__ import annotations

import jax

PURPOSES = ("select", "mutate", "evaluate")


def generation_keys(seed: int, generation: int) -> dict[str, jax.Array]:
    """`fold_in(run key, generation)` split per purpose: the only randomness of a generation."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), generation)
    return dict(zip(PURPOSES, jax.random.split(key, len(PURPOSES))))


def key_to_int(key: jax.Array) -> int:
    """A 31-bit integer seed from a key (for host-side code that takes an int seed)."""
    return int(jax.random.randint(key, (), 0, 2**31 - 1))
