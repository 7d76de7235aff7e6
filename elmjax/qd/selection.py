"""Parent selection: which elites the next generation mutates.

`uniform` picks filled cells with equal probability (MAP-Elites' default). `curiosity` weights a
cell by the Laplace-smoothed success rate of its offspring, (successes + 1) / (children + 2),
counted by `insert(..., parent_cell=...)` (Cully & Demiris 2018 call this curiosity: cells whose
children keep entering the archive are where the search is making progress). A cell with no
offspring yet weighs 1/2, so new elites are tried, and no filled cell ever weighs zero.

Sampling is inverse-CDF over a cumulative sum of cell weights (no sorting, no [n, C] Gumbel
matrix), so it scales to 10^5 cells. Deterministic for a given key.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from elmjax.qd.archive import Archive, check_archive

METHODS = ("uniform", "curiosity")


def cell_weights(archive: Archive, method: str = "uniform") -> jax.Array:
    """Unnormalised selection weight [C] of each cell (0 for empty cells)."""
    filled = archive.program_id >= 0
    if method == "uniform":
        w = jnp.ones_like(archive.fitness)
    elif method == "curiosity":
        w = (archive.successes + 1.0) / (archive.children + 2.0)
    else:
        raise ValueError(f"unknown selection method {method!r}; choose from {METHODS}")
    return jnp.where(filled, w, 0.0).astype(jnp.float32)


@partial(jax.jit, static_argnames=("n", "method"))
def sample_cells(archive: Archive, key: jax.Array, n: int, method: str = "uniform") -> jax.Array:
    """`n` cell indices [n] int32 drawn with replacement; all -1 when the archive is empty."""
    check_archive(archive, "qd.sample_cells")
    w = cell_weights(archive, method)
    cdf = jnp.cumsum(w)
    total = cdf[-1]
    r = jax.random.uniform(key, (n,), jnp.float32) * total
    idx = jnp.searchsorted(cdf, r, side="right").astype(jnp.int32)
    # r can round up to `total`; fall back to the last cell that has weight.
    last = (w.shape[0] - 1 - jnp.argmax(w[::-1] > 0)).astype(jnp.int32)
    idx = jnp.minimum(idx, last)
    return jnp.where(total > 0, idx, -1)


@partial(jax.jit, static_argnames=("n", "method"))
def sample_parents(archive: Archive, key: jax.Array, n: int, method: str = "uniform") -> jax.Array:
    """Program ids [n] int32 of `n` parents drawn with replacement; -1 when the archive is empty.

    Use `sample_cells` when the caller also wants the parents' cells (for `parent_cell`).
    """
    cells = sample_cells(archive, key, n, method)
    return jnp.where(cells >= 0, archive.program_id[jnp.maximum(cells, 0)], -1)
