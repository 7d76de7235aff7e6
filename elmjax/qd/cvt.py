"""Centroidal Voronoi tessellation (CVT) cells: k-means centroids and nearest-centroid lookup.

A grid of 12^3 cells is cheap to index (arithmetic on the descriptor), but grids grow as n^D.
A CVT archive spreads a fixed number of cells (10^4-10^5) over the descriptor box instead; the
price is a nearest-centroid search per candidate. Distances are measured in the unit cube (each
descriptor divided by its range, as QDax samples its k-means), so no dimension dominates because
of its units.

Two exact lookups, same answer (ties -> lowest centroid index):

* `nearest_centroid`: brute force, chunked. A full [candidates, cells] distance matrix at
  65,536 x 10^5 is 26 GB of float32, so centroids are scanned in fixed-size chunks inside
  `lax.map` over candidate chunks, keeping a running (best distance, best index) pair: memory is
  O(candidate_chunk x centroid_chunk) whatever the sizes. Cost O(N x C).
* `indexed_nearest_centroid`: a bucket index. The unit cube is cut into G^D buckets (about one
  centroid each); for every bucket, `build_bucket_index` lists (on the host, once per archive)
  every centroid that can be the nearest one to SOME point of the bucket: with u = an upper bound
  of the nearest-centroid distance over the bucket (distance from its centre to the centre's
  nearest centroid + half its diagonal), centroid c qualifies iff its distance to the bucket box
  is <= u (+ a float32 slack). A lookup then compares a point with its bucket's K (~50 in 3-D)
  candidates only: O(N x K), chunked like the brute force. Used for D <= 4, where K stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class CVTSpec:
    """A CVT archive: `num_cells` centroids over the box `low`..`high` (one bound per dimension).

    `candidate_chunk` and `centroid_chunk` bound the lookup's working memory to
    candidate_chunk * centroid_chunk * 4 bytes (default 1024 * 4096 -> 16 MiB).
    `qd_offset` is subtracted from every elite's fitness in the QD score (see `metrics`).
    `lookup` picks the nearest-centroid search (see the module docstring).
    """

    num_cells: int
    low: tuple[float, ...]
    high: tuple[float, ...]
    candidate_chunk: int = 1024
    centroid_chunk: int = 4096
    qd_offset: float = 0.0
    lookup: str = "auto"  # "index" (bucket index), "brute" (chunked), "auto": index if D <= 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "high", tuple(float(v) for v in self.high))
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError("CVTSpec: low and high must be non-empty and the same length")
        if any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"CVTSpec: low must be below high: {self.low} vs {self.high}")
        if self.num_cells < 1 or self.candidate_chunk < 1 or self.centroid_chunk < 1:
            raise ValueError("CVTSpec: num_cells and chunk sizes must be positive")
        if self.lookup not in ("auto", "index", "brute"):
            raise ValueError(f"CVTSpec: lookup must be auto, index or brute, not {self.lookup!r}")

    @property
    def use_index(self) -> bool:
        return self.lookup == "index" or (self.lookup == "auto" and self.dim <= MAX_INDEX_DIM)

    @property
    def grid(self) -> int:
        """Buckets per dimension of the lookup index."""
        return buckets_per_dim(self.num_cells, self.dim)

    @property
    def dim(self) -> int:
        return len(self.low)


def _pad_rows(x: jax.Array, multiple: int, value: float) -> jax.Array:
    pad = (-x.shape[0]) % multiple
    if pad == 0:
        return x
    return jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], value, x.dtype)], axis=0)


def _check_points(
    points: jax.Array, centroids: jax.Array, where: str, p_name: str, c_name: str
) -> None:
    """points [N, D] and centroids [C, D] of one D, both floating (chex, at trace time)."""
    chex.assert_rank(points, 2, custom_message=f"{where}: {p_name} must be [N, D]")
    chex.assert_type(points, float, custom_message=f"{where}: {p_name} must be floating")
    dim = points.shape[1]
    message = f"{where}: {c_name} must be [C, D={dim}] floating"
    chex.assert_shape(centroids, (None, dim), custom_message=message)
    chex.assert_type(centroids, float, custom_message=message)


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
    _check_points(points, centroids, "qd.nearest_centroid", "points", "centroids")
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


def to_unit(x: jax.Array, low: tuple[float, ...], high: tuple[float, ...]) -> jax.Array:
    """Descriptor coordinates -> unit cube (float32); the one place this arithmetic lives."""
    lo = jnp.asarray(low, jnp.float32)
    inv = jnp.asarray(
        1.0 / (np.asarray(high, np.float64) - np.asarray(low, np.float64)), jnp.float32
    )
    return (jnp.asarray(x, jnp.float32) - lo) * inv


def buckets_per_dim(num_cells: int, dim: int) -> int:
    """G such that G^D buckets hold about one centroid each."""
    return max(1, int(round(num_cells ** (1.0 / dim))))


#: Bucket index only up to this dimension: beyond it the candidate lists explode.
MAX_INDEX_DIM = 4
#: Slack added to the bound u, in unit-cube distance: covers float32 rounding of the lookup.
_SLACK = 1e-5


def build_bucket_index(unit_centroids: np.ndarray, grid: int) -> np.ndarray:
    """Candidate lists [grid^D, K] int32 (padded with C, the sentinel) for the bucket lookup.

    Lists are sorted ascending, so the lookup's first minimum is the lowest tied index.
    """
    from scipy.spatial import cKDTree  # scipy is a JAX dependency; host-only, once per archive

    cents = np.asarray(unit_centroids, np.float64)
    c, d = cents.shape
    side = 1.0 / grid
    axes = np.meshgrid(*([np.arange(grid)] * d), indexing="ij")
    lo = np.stack([a.ravel() for a in axes], -1) * side  # bucket corners, row-major
    hi = lo + side
    centre = lo + side / 2
    half_diag = 0.5 * side * np.sqrt(d)
    tree = cKDTree(cents)
    d0, _ = tree.query(centre)
    bound = d0 + half_diag + _SLACK
    # Every centroid within bound + half_diag of the centre: a superset of those within
    # `bound` of the box. Ragged lists, flattened to (bucket, centroid) pairs.
    lists = tree.query_ball_point(centre, bound + half_diag, workers=-1, return_sorted=False)
    lengths = np.fromiter((len(x) for x in lists), np.int64, len(lists))
    idx = np.fromiter((i for x in lists for i in x), np.int64, int(lengths.sum()))
    bucket = np.repeat(np.arange(len(lists)), lengths)
    # Exact filter: distance from each candidate to its bucket's box must be <= bound.
    gap = np.maximum(np.maximum(lo[bucket] - cents[idx], cents[idx] - hi[bucket]), 0.0)
    keep = np.sqrt((gap**2).sum(-1)) <= bound[bucket]
    idx, bucket = idx[keep], bucket[keep]
    order = np.argsort(bucket * c + idx, kind="stable")  # by bucket, then centroid index
    idx, bucket = idx[order], bucket[order]
    counts = np.bincount(bucket, minlength=len(lists))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    width = int(max(1, counts.max()))
    cand = np.full((len(lists), width), c, np.int32)
    cand[bucket, np.arange(len(idx)) - starts[bucket]] = idx
    return cand


@partial(jax.jit, static_argnames=("grid", "candidate_chunk"))
def indexed_nearest_centroid(
    unit_points: jax.Array,
    unit_centroids: jax.Array,
    index: jax.Array,
    grid: int,
    candidate_chunk: int = 1024,
) -> jax.Array:
    """Nearest centroid [N] int32 of unit-cube points [N, D] through a `build_bucket_index`.

    Same result as `nearest_centroid` on the same unit coordinates (points outside the cube are
    clipped to it first). Memory: candidate_chunk x K x D per step.
    """
    where = "qd.indexed_nearest_centroid"
    _check_points(unit_points, unit_centroids, where, "unit_points", "unit_centroids")
    buckets = grid ** unit_points.shape[1]
    message = f"{where}: index must be [grid**D={buckets}, K] int (build_bucket_index)"
    chex.assert_shape(index, (buckets, None), custom_message=message)
    chex.assert_type(index, int, custom_message=message)
    n, d = unit_points.shape
    if n == 0:
        return jnp.zeros((0,), jnp.int32)
    c = unit_centroids.shape[0]
    cents = jnp.concatenate([unit_centroids, jnp.full((1, d), jnp.inf, jnp.float32)])
    pts = jnp.clip(unit_points.astype(jnp.float32), 0.0, 1.0)
    b = jnp.clip(jnp.floor(pts * grid), 0, grid - 1).astype(jnp.int32)
    strides = jnp.asarray([grid ** (d - 1 - k) for k in range(d)], jnp.int32)
    bucket = (b * strides).sum(-1)
    bc = min(candidate_chunk, n)
    pad = (-n) % bc
    pts = jnp.concatenate([pts, jnp.zeros((pad, d), jnp.float32)]).reshape(-1, bc, d)
    bucket = jnp.concatenate([bucket, jnp.zeros((pad,), jnp.int32)]).reshape(-1, bc)

    def one_chunk(args):
        p, bk = args
        cand = index[bk]  # [bc, K]
        dist = jnp.zeros(cand.shape, jnp.float32)
        rows = cents[cand]  # [bc, K, D]: one gather of whole rows
        for k in range(d):
            diff = p[:, None, k] - rows[:, :, k]
            dist = dist + diff * diff
        best = jnp.argmin(dist, axis=1)  # lists ascending: first minimum = lowest index
        return jnp.take_along_axis(cand, best[:, None], axis=1)[:, 0]

    out = jax.lax.map(one_chunk, (pts, bucket)).reshape(-1)[:n]
    return jnp.minimum(out, c - 1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("num_cells",))
def _lloyd_update(samples: jax.Array, cents: jax.Array, idx: jax.Array, num_cells: int):
    """Move each centroid to the mean of its samples; an emptied centroid stays put."""
    sums = jax.ops.segment_sum(samples, idx, num_segments=num_cells)
    counts = jax.ops.segment_sum(jnp.ones((samples.shape[0],), jnp.float32), idx, num_cells)
    moved = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, moved, cents)


@partial(
    jax.jit,
    static_argnames=(
        "num_cells",
        "dim",
        "num_samples",
        "iterations",
        "candidate_chunk",
        "centroid_chunk",
    ),
)
def kmeans(
    key: jax.Array,
    num_cells: int,
    dim: int,
    num_samples: int,
    iterations: int = 10,
    candidate_chunk: int = 1024,
    centroid_chunk: int = 4096,
) -> jax.Array:
    """Lloyd's k-means on `num_samples` uniform points of the unit cube: centroids [num_cells, dim].

    Centroids start at the first `num_cells` samples; a centroid whose cluster empties keeps
    its position (it still covers part of the cube). Deterministic for a given key.
    """
    samples = jax.random.uniform(key, (num_samples, dim), jnp.float32)
    init = samples[:num_cells]

    def step(cents: jax.Array, _) -> tuple[jax.Array, None]:
        idx = nearest_centroid(samples, cents, candidate_chunk, centroid_chunk)
        return _lloyd_update(samples, cents, idx, num_cells), None

    cents, _ = jax.lax.scan(step, init, None, length=iterations)
    return cents


def kmeans_indexed(
    key: jax.Array, num_cells: int, dim: int, num_samples: int, iterations: int = 10
) -> jax.Array:
    """`kmeans` with each Lloyd assignment done through a bucket index rebuilt on the host.

    Same iterations and result as `kmeans` (the assignment is exact either way), at
    O(samples x K) instead of O(samples x cells) per iteration: the way to 10^5 cells on a CPU.
    """
    samples = jax.random.uniform(key, (num_samples, dim), jnp.float32)
    cents = samples[:num_cells]
    grid = buckets_per_dim(num_cells, dim)
    for _ in range(iterations):
        index = jnp.asarray(build_bucket_index(np.asarray(cents), grid))
        idx = indexed_nearest_centroid(samples, cents, index, grid)
        cents = _lloyd_update(samples, cents, idx, num_cells)
    return cents


def cvt_centroids(
    spec: CVTSpec, seed: int = 0, num_samples: int | None = None, iterations: int = 10
) -> np.ndarray:
    """Centroids [C, D] in descriptor units, from k-means in the unit cube.

    `num_samples` defaults to 10 samples per cell (at least 10^4, at most 10^6). Large archives
    in low dimension (> 4096 cells, D <= 4) use `kmeans_indexed`, others the all-jit `kmeans`.
    """
    if num_samples is None:
        num_samples = int(min(max(10 * spec.num_cells, 10_000), 1_000_000))
    if num_samples < spec.num_cells:
        raise ValueError("k-means needs at least as many samples as cells")
    key = jax.random.PRNGKey(seed)
    if spec.num_cells > 4096 and spec.dim <= MAX_INDEX_DIM:
        unit = kmeans_indexed(key, spec.num_cells, spec.dim, num_samples, iterations)
    else:
        unit = kmeans(
            key,
            spec.num_cells,
            spec.dim,
            num_samples,
            iterations,
            spec.candidate_chunk,
            spec.centroid_chunk,
        )
    lo, hi = np.asarray(spec.low), np.asarray(spec.high)
    return (np.asarray(unit, np.float64) * (hi - lo) + lo).astype(np.float32)
