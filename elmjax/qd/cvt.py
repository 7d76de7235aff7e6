"""Centroidal Voronoi tessellation (CVT) cells: k-means centroids and nearest-centroid lookup.

A grid of 12^3 cells is cheap to index (arithmetic on the descriptor), but grids grow as n^D.
A CVT archive spreads a fixed number of cells (10^4-10^5) over the descriptor box instead; the
price is a nearest-centroid search per candidate. A full [candidates, cells] distance matrix at
65,536 x 10^5 is 26 GB of float32, so the lookup scans the centroids in fixed-size chunks inside
`lax.map` over candidate chunks, keeping only a running (best distance, best index) pair: memory
is O(candidate_chunk x centroid_chunk), whatever the archive and batch sizes.

Distances are computed as sum_d (x_d - c_d)^2 directly rather than via |x|^2 - 2 x.c + |c|^2:
with D = 3 the matmul form saves nothing and loses precision near cell boundaries. Ties go to
the lowest centroid index, so the lookup is deterministic and matches a naive reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class CVTSpec:
    """A CVT archive: `num_cells` centroids over the box `low`..`high` (one bound per dimension).

    `candidate_chunk` and `centroid_chunk` bound the lookup's working memory to
    candidate_chunk * centroid_chunk * 4 bytes (default 1024 * 4096 -> 16 MiB).
    `qd_offset` is subtracted from every elite's fitness in the QD score (see `metrics`).
    """

    num_cells: int
    low: tuple[float, ...]
    high: tuple[float, ...]
    candidate_chunk: int = 1024
    centroid_chunk: int = 4096
    qd_offset: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "high", tuple(float(v) for v in self.high))
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError("CVTSpec: low and high must be non-empty and the same length")
        if any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"CVTSpec: low must be below high: {self.low} vs {self.high}")
        if self.num_cells < 1 or self.candidate_chunk < 1 or self.centroid_chunk < 1:
            raise ValueError("CVTSpec: num_cells and chunk sizes must be positive")

    @property
    def dim(self) -> int:
        return len(self.low)


def _pad_rows(x: jax.Array, multiple: int, value: float) -> jax.Array:
    pad = (-x.shape[0]) % multiple
    if pad == 0:
        return x
    return jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], value, x.dtype)], axis=0)


@partial(jax.jit, static_argnames=("candidate_chunk", "centroid_chunk"))
def nearest_centroid(
    points: jax.Array,
    centroids: jax.Array,
    candidate_chunk: int = 1024,
    centroid_chunk: int = 4096,
) -> jax.Array:
    """Index [N] int32 of the nearest centroid of each point [N, D]; ties -> lowest index.

    Memory is bounded by candidate_chunk * centroid_chunk distances, independent of N and C.
    """
    n, d = points.shape
    c = centroids.shape[0]
    if n == 0:
        return jnp.zeros((0,), jnp.int32)
    points = points.astype(jnp.float32)
    centroids = centroids.astype(jnp.float32)
    bc = min(candidate_chunk, n)
    cc = min(centroid_chunk, c)
    # Padding centroids sit at +inf distance, so they never win.
    cents = _pad_rows(centroids, cc, jnp.inf).reshape(-1, cc, d)
    pts = _pad_rows(points, bc, 0.0).reshape(-1, bc, d)
    offsets = jnp.arange(cents.shape[0], dtype=jnp.int32) * cc

    def one_chunk(p: jax.Array) -> jax.Array:
        def scan_centroids(carry, block):
            best_d, best_i = carry
            cblock, offset = block
            dist = jnp.zeros((p.shape[0], cc), jnp.float32)
            for k in range(d):  # D is tiny (3): unrolled, fused into one loop by XLA
                diff = p[:, k, None] - cblock[None, :, k]
                dist = dist + diff * diff
            local = jnp.argmin(dist, axis=1).astype(jnp.int32)  # first minimum in the block
            local_d = jnp.take_along_axis(dist, local[:, None], axis=1)[:, 0]
            better = local_d < best_d  # strict: an earlier block keeps ties
            return (
                jnp.where(better, local_d, best_d),
                jnp.where(better, local + offset, best_i),
            ), None

        init = (jnp.full((p.shape[0],), jnp.inf, jnp.float32), jnp.zeros((p.shape[0],), jnp.int32))
        (_, best_i), _ = jax.lax.scan(scan_centroids, init, (cents, offsets))
        return best_i

    return jax.lax.map(one_chunk, pts).reshape(-1)[:n]


@partial(
    jax.jit,
    static_argnames=("num_cells", "num_samples", "iterations", "candidate_chunk", "centroid_chunk"),
)
def kmeans(
    key: jax.Array,
    low: jax.Array,
    high: jax.Array,
    num_cells: int,
    num_samples: int,
    iterations: int = 10,
    candidate_chunk: int = 1024,
    centroid_chunk: int = 4096,
) -> jax.Array:
    """Lloyd's k-means on `num_samples` uniform points in the box: centroids [num_cells, D].

    Centroids start at the first `num_cells` samples; a centroid whose cluster empties keeps
    its position (it still covers part of the box). Deterministic for a given key.
    """
    low = jnp.asarray(low, jnp.float32)
    high = jnp.asarray(high, jnp.float32)
    d = low.shape[0]
    samples = jax.random.uniform(key, (num_samples, d), jnp.float32, low, high)
    init = samples[:num_cells]

    def step(cents: jax.Array, _) -> tuple[jax.Array, None]:
        idx = nearest_centroid(samples, cents, candidate_chunk, centroid_chunk)
        sums = jax.ops.segment_sum(samples, idx, num_segments=num_cells)
        counts = jax.ops.segment_sum(jnp.ones((num_samples,), jnp.float32), idx, num_cells)
        moved = sums / jnp.maximum(counts, 1.0)[:, None]
        return jnp.where(counts[:, None] > 0, moved, cents), None

    cents, _ = jax.lax.scan(step, init, None, length=iterations)
    return cents


def cvt_centroids(
    spec: CVTSpec, seed: int = 0, num_samples: int | None = None, iterations: int = 10
) -> np.ndarray:
    """Centroids for `spec` from jit-compiled k-means over uniform samples of the box.

    `num_samples` defaults to 10 samples per cell (at least 10^4, at most 10^6).
    """
    if num_samples is None:
        num_samples = int(min(max(10 * spec.num_cells, 10_000), 1_000_000))
    if num_samples < spec.num_cells:
        raise ValueError("k-means needs at least as many samples as cells")
    cents = kmeans(
        jax.random.PRNGKey(seed),
        jnp.asarray(spec.low),
        jnp.asarray(spec.high),
        spec.num_cells,
        num_samples,
        iterations,
        spec.candidate_chunk,
        spec.centroid_chunk,
    )
    return np.asarray(cents)
