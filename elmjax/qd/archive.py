"""The MAP-Elites archive: one elite per cell, updated on the device with a whole batch at once.

An `Archive` is a pytree of fixed-size arrays (`fitness [C]`, `descriptor [C, D]`,
`program_id [C]` with -1 for an empty cell, optional `tokens [C, L]`), plus per-cell offspring
counters for curiosity selection and batch counters for the validity rate. Its layout (grid or
CVT, ranges) is static metadata (`spec`), so `insert` compiles once per batch size.

`insert` resolves a batch without sorting, with two scatters over the cells:

1. `best[c] = max f_i` over eligible candidates i mapped to cell c (scatter-max),
2. `first[c] = min i` over those candidates with `f_i == best[c]` (scatter-min),

and candidate i enters iff it is its cell's `first` and `f_i > archive.fitness[c]` (strict: an
incumbent keeps its cell on a tie, so inserting the same batch twice changes nothing). This is
exactly "best fitness, then lowest batch index" and does not depend on scatter order, so it is
deterministic on every backend.

Eligibility: `valid`, finite fitness, finite descriptor, and `program_id >= 0`. Rows with
`program_id < 0` are padding (batches are padded to fixed sizes to reuse compiled code): they are
ignored everywhere, including the counters. Descriptors outside `low`..`high` are CLIPPED to the
edge cells, as pyribs `GridArchive` and QDax do: the ranges are a calibration of where walkers
usually fall, and an unusually tall walker is still a tall walker (rejecting it would throw away
the most novel candidates). Non-finite descriptors are rejected (there is no edge to clip to).
A CVT archive clips too (in unit-cube coordinates), then takes the nearest centroid.

Curiosity counters: pass `parent_cell` (the cell each candidate's parent was sampled from, as
`selection.sample_cells` returns it; -1 for none) and `insert` credits that cell with one child,
and one success if the child entered. The program store records `parent_cell` so that `replay`
reproduces these counters too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from elmjax import tracing
from elmjax.qd.cvt import (
    CVTSpec,
    build_bucket_index,
    cvt_centroids,
    indexed_nearest_centroid,
    nearest_centroid,
    to_unit,
)

if TYPE_CHECKING:
    from elmjax.envs.base import DescriptorSpace

#: Per-candidate insert status.
REJECTED = 0
NEW_CELL = 1
IMPROVED = 2


@dataclass(frozen=True)
class GridSpec:
    """A regular grid: `shape[d]` bins over `low[d]`..`high[d]` per descriptor dimension.

    The default 12 x 12 x 12 is Sodarace's (height, width, mass); take the ranges from the
    environment's `DescriptorSpace` (`GridSpec.from_space`). `qd_offset` is subtracted from every
    elite's fitness in the QD score (0 for Sodarace's |dx| >= 0).
    """

    shape: tuple[int, ...] = (12, 12, 12)
    low: tuple[float, ...] = (0.0, 0.0, 0.0)
    high: tuple[float, ...] = (1.0, 1.0, 1.0)
    qd_offset: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "high", tuple(float(v) for v in self.high))
        if not (len(self.shape) == len(self.low) == len(self.high)) or not self.shape:
            raise ValueError("GridSpec: shape, low and high must be non-empty and the same length")
        if any(n < 1 for n in self.shape):
            raise ValueError(f"GridSpec: every dimension needs at least one bin: {self.shape}")
        if any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"GridSpec: low must be below high: {self.low} vs {self.high}")

    @classmethod
    def from_space(
        cls, space: DescriptorSpace, shape: tuple[int, ...] | None = None, qd_offset: float = 0.0
    ) -> GridSpec:
        """Grid over an `elmjax.envs.base.DescriptorSpace` (12 bins per dimension by default)."""
        shape = shape if shape is not None else (12,) * space.dim
        return cls(shape=tuple(shape), low=space.low, high=space.high, qd_offset=qd_offset)

    @property
    def dim(self) -> int:
        return len(self.shape)

    @property
    def num_cells(self) -> int:
        return int(np.prod(self.shape))

    def scale(self) -> np.ndarray:
        """Bins per descriptor unit, float32 (the one place the bin arithmetic is defined)."""
        lo = np.asarray(self.low, np.float32)
        hi = np.asarray(self.high, np.float32)
        return (np.asarray(self.shape, np.float32) / (hi - lo)).astype(np.float32)


Spec = GridSpec | CVTSpec


@flax.struct.dataclass
class Archive:
    """Elites by cell. Empty cells have `program_id == -1` and `fitness == -inf`."""

    fitness: jax.Array  # [C] float32
    descriptor: jax.Array  # [C, D] float32
    program_id: jax.Array  # [C] int32
    tokens: jax.Array | None  # [C, L] int32, the elite's token ids (optional)
    centroids: jax.Array | None  # [C, D] float32, CVT archives only (descriptor units)
    cvt_index: jax.Array | None  # [G^D, K] int32 bucket index of a CVT archive (see cvt.py)
    children: jax.Array  # [C] int32: offspring of this cell's elites evaluated so far
    successes: jax.Array  # [C] int32: ... of which entered the archive
    n_evaluated: jax.Array  # [] int32: real (non-padding) candidates offered, all batches
    n_valid: jax.Array  # [] int32: ... of which were valid
    last_n_evaluated: jax.Array  # [] int32: real candidates in the last batch
    last_n_valid: jax.Array  # [] int32: ... of which were valid
    spec: Spec = flax.struct.field(pytree_node=False)

    @property
    def num_cells(self) -> int:
        return int(self.fitness.shape[0])

    @property
    def filled(self) -> jax.Array:
        return self.program_id >= 0


@flax.struct.dataclass
class InsertInfo:
    """Per-candidate outcome of one `insert`, in batch order."""

    status: jax.Array  # [B] int32: REJECTED, NEW_CELL or IMPROVED
    cell: jax.Array  # [B] int32 cell index; -1 for padding and non-finite descriptors
    eligible: jax.Array  # [B] bool: valid, finite, not padding

    @property
    def entered(self) -> jax.Array:
        return self.status != REJECTED


def init(
    spec: Spec,
    token_length: int | None = None,
    centroids: np.ndarray | jax.Array | None = None,
    seed: int = 0,
    cvt_index: np.ndarray | jax.Array | None = None,
) -> Archive:
    """An empty archive. CVT archives take `centroids` [C, D] or compute them with k-means,
    and build their lookup index unless given one built for these centroids (`cvt_index` of an
    archive with the same spec and centroids: building it costs seconds at 10^5 cells)."""
    if isinstance(spec, CVTSpec):
        if centroids is None:
            centroids = cvt_centroids(spec, seed=seed)
        centroids = jnp.asarray(centroids, jnp.float32)
        if centroids.shape != (spec.num_cells, spec.dim):
            raise ValueError(
                f"centroids must be {(spec.num_cells, spec.dim)}, got {centroids.shape}"
            )
        num_cells, dim = spec.num_cells, spec.dim
        if not spec.use_index:
            cvt_index = None
        elif cvt_index is not None:
            cvt_index = jnp.asarray(cvt_index, jnp.int32)
        else:
            unit = np.asarray(to_unit(centroids, spec.low, spec.high))
            cvt_index = jnp.asarray(build_bucket_index(unit, spec.grid))
    elif isinstance(spec, GridSpec):
        if centroids is not None or cvt_index is not None:
            raise ValueError("a grid archive has no centroids")
        num_cells, dim = spec.num_cells, spec.dim
        cvt_index = None
    else:
        raise TypeError(f"unknown archive spec {type(spec).__name__}")
    zero = jnp.zeros((), jnp.int32)
    return Archive(
        fitness=jnp.full((num_cells,), -jnp.inf, jnp.float32),
        descriptor=jnp.zeros((num_cells, dim), jnp.float32),
        program_id=jnp.full((num_cells,), -1, jnp.int32),
        tokens=None if token_length is None else jnp.zeros((num_cells, token_length), jnp.int32),
        centroids=centroids,
        cvt_index=cvt_index,
        children=jnp.zeros((num_cells,), jnp.int32),
        successes=jnp.zeros((num_cells,), jnp.int32),
        n_evaluated=zero,
        n_valid=zero,
        last_n_evaluated=zero,
        last_n_valid=zero,
        spec=spec,
    )


def grid_cells(spec: GridSpec, descriptor: jax.Array) -> jax.Array:
    """Flat (row-major) cell index [B] of descriptors [B, D], clipped to the edge cells.

    Non-finite descriptors map to an arbitrary in-range cell: callers mask them out.
    """
    low = jnp.asarray(spec.low, jnp.float32)
    scale = jnp.asarray(spec.scale())
    shape = jnp.asarray(spec.shape, jnp.int32)
    x = jnp.nan_to_num(descriptor.astype(jnp.float32), nan=0.0, posinf=0.0, neginf=0.0)
    t = jnp.floor((x - low) * scale)
    # Clip in float first: a huge descriptor must not overflow the int conversion.
    t = jnp.clip(t, 0.0, (shape - 1).astype(jnp.float32)).astype(jnp.int32)
    strides = np.cumprod((1,) + spec.shape[::-1])[:-1][::-1].astype(np.int32)
    return (t * jnp.asarray(strides)).sum(axis=-1).astype(jnp.int32)


def cells_of(archive: Archive, descriptor: jax.Array) -> jax.Array:
    """Cell index [B] of each descriptor [B, D] in this archive (grid arithmetic or CVT lookup)."""
    spec = archive.spec
    if isinstance(spec, GridSpec):
        return grid_cells(spec, descriptor)
    x = jnp.nan_to_num(descriptor.astype(jnp.float32), nan=0.0, posinf=0.0, neginf=0.0)
    # Clip to the box (in unit coordinates), like the grid: outliers go to the edge cells.
    unit = jnp.clip(to_unit(x, spec.low, spec.high), 0.0, 1.0)
    cents = to_unit(archive.centroids, spec.low, spec.high)
    if archive.cvt_index is not None:
        return indexed_nearest_centroid(
            unit, cents, archive.cvt_index, spec.grid, spec.candidate_chunk
        )
    return nearest_centroid(unit, cents, spec.candidate_chunk, spec.centroid_chunk)


def check_archive(archive: Archive, where: str) -> None:
    """An archive's own shapes agree with each other and with its spec (chex, at trace time):
    `fitness [C]` float, `descriptor [C, D]` float with the spec's D, `program_id`, `children`,
    `successes [C]` int, scalar counters, `tokens [C, L]` and `centroids [C, D]` when present.
    Catches an archive restored or built for another layout before it is indexed with it."""
    dim = archive.spec.dim
    chex.assert_rank(archive.fitness, 1, custom_message=f"{where}: archive.fitness must be [C]")
    num_cells = archive.fitness.shape[0]
    chex.assert_type(archive.fitness, float, custom_message=f"{where}: archive.fitness dtype")
    chex.assert_shape(
        archive.descriptor,
        (num_cells, dim),
        custom_message=f"{where}: archive.descriptor must be [C={num_cells}, D={dim}]",
    )
    for name in ("program_id", "children", "successes"):
        value = getattr(archive, name)
        message = f"{where}: archive.{name} must be [C={num_cells}] int"
        chex.assert_shape(value, (num_cells,), custom_message=message)
        chex.assert_type(value, int, custom_message=message)
    for name in ("n_evaluated", "n_valid", "last_n_evaluated", "last_n_valid"):
        chex.assert_rank(getattr(archive, name), 0, custom_message=f"{where}: archive.{name}")
    if archive.tokens is not None:
        chex.assert_shape(
            archive.tokens, (num_cells, None), custom_message=f"{where}: archive.tokens [C, L]"
        )
    if archive.centroids is not None:
        chex.assert_shape(
            archive.centroids,
            (num_cells, dim),
            custom_message=f"{where}: archive.centroids must be [C={num_cells}, D={dim}]",
        )


def _check_insert_args(
    archive: Archive,
    fitness: jax.Array,
    descriptor: jax.Array,
    valid: jax.Array,
    program_id: jax.Array,
    tokens: jax.Array | None,
    parent_cell: jax.Array | None,
) -> None:
    """The shape contract of `insert`, checked at trace time (free once compiled).

    A batch with a wrong rank, length, descriptor width or id dtype would otherwise be
    broadcast or cast into a silently wrong archive, or fail deep inside a scatter.
    """
    check_archive(archive, "qd.insert")
    num_cells, dim = archive.descriptor.shape
    chex.assert_rank(fitness, 1, custom_message="qd.insert: fitness must be [B]")
    batch = fitness.shape[0]
    chex.assert_type(fitness, float, custom_message="qd.insert: fitness must be floating")
    chex.assert_shape(
        descriptor,
        (batch, dim),
        custom_message=f"qd.insert: descriptor must be [B={batch}, D={dim}]",
    )
    chex.assert_type(descriptor, float, custom_message="qd.insert: descriptor must be floating")
    chex.assert_shape(valid, (batch,), custom_message=f"qd.insert: valid must be [B={batch}]")
    chex.assert_type(valid, bool, custom_message="qd.insert: valid must be bool")
    chex.assert_shape(
        program_id, (batch,), custom_message=f"qd.insert: program_id must be [B={batch}]"
    )
    chex.assert_type(program_id, int, custom_message="qd.insert: program_id must be integer")
    if tokens is not None and archive.tokens is not None:
        length = archive.tokens.shape[1]
        chex.assert_shape(
            tokens,
            (batch, length),
            custom_message=f"qd.insert: tokens must be [B={batch}, L={length}]",
        )
        chex.assert_type(tokens, int, custom_message="qd.insert: tokens must be integer")
    if parent_cell is not None:
        chex.assert_shape(
            parent_cell, (batch,), custom_message=f"qd.insert: parent_cell must be [B={batch}]"
        )
        chex.assert_type(parent_cell, int, custom_message="qd.insert: parent_cell must be integer")


@jax.jit
@tracing.checked
def insert(
    archive: Archive,
    fitness: jax.Array,
    descriptor: jax.Array,
    valid: jax.Array,
    program_id: jax.Array,
    tokens: jax.Array | None = None,
    parent_cell: jax.Array | None = None,
) -> tuple[Archive, InsertInfo]:
    """Insert a batch of B evaluated candidates; returns the new archive and per-candidate info.

    `fitness [B]`, `descriptor [B, D]`, `valid [B]`, `program_id [B]` (int32; < 0 = padding),
    optional `tokens [B, L]` (stored with elites when the archive keeps tokens), optional
    `parent_cell [B]` (int32 cell of the candidate's parent, -1 if none): credits the parent's
    cell for curiosity selection (offspring evaluated / offspring that entered).
    """
    fitness, descriptor, valid, program_id = map(
        jnp.asarray, (fitness, descriptor, valid, program_id)
    )
    tokens = None if tokens is None else jnp.asarray(tokens)
    parent_cell = None if parent_cell is None else jnp.asarray(parent_cell)
    _check_insert_args(archive, fitness, descriptor, valid, program_id, tokens, parent_cell)
    num_cells = archive.fitness.shape[0]
    fitness = jnp.asarray(fitness, jnp.float32)
    descriptor = jnp.asarray(descriptor, jnp.float32)
    valid = jnp.asarray(valid, bool)
    program_id = jnp.asarray(program_id, jnp.int32)
    batch = fitness.shape[0]
    index = jnp.arange(batch, dtype=jnp.int32)

    real = program_id >= 0
    finite_desc = jnp.all(jnp.isfinite(descriptor), axis=-1)
    eligible = real & valid & jnp.isfinite(fitness) & finite_desc
    cell = cells_of(archive, descriptor)
    # Out-of-range scatter targets (== num_cells) are dropped: ineligible rows touch nothing.
    target = jnp.where(eligible, cell, num_cells)
    f = jnp.where(eligible, fitness, -jnp.inf)

    best = jnp.full((num_cells,), -jnp.inf, jnp.float32).at[target].max(f, mode="drop")
    cell_safe = jnp.minimum(cell, num_cells - 1)
    is_best = eligible & (f == best[cell_safe])
    first = (
        jnp.full((num_cells,), batch, jnp.int32)
        .at[jnp.where(is_best, cell, num_cells)]
        .min(index, mode="drop")
    )
    incumbent = archive.fitness[cell_safe]
    winner = is_best & (first[cell_safe] == index) & (f > incumbent)
    status = jnp.where(
        winner, jnp.where(archive.program_id[cell_safe] >= 0, IMPROVED, NEW_CELL), REJECTED
    ).astype(jnp.int32)

    # Winners are unique per cell, so these scatters have no write conflicts.
    put = jnp.where(winner, cell, num_cells)
    new_tokens = archive.tokens
    if archive.tokens is not None and tokens is not None:
        new_tokens = archive.tokens.at[put].set(jnp.asarray(tokens, jnp.int32), mode="drop")

    children, successes = archive.children, archive.successes
    if parent_cell is not None:
        parent_cell = jnp.asarray(parent_cell, jnp.int32)
        credited = real & (parent_cell >= 0) & (parent_cell < num_cells)
        ptarget = jnp.where(credited, parent_cell, num_cells)
        children = children.at[ptarget].add(1, mode="drop")
        successes = successes.at[ptarget].add(winner.astype(jnp.int32), mode="drop")

    n_real = real.sum(dtype=jnp.int32)
    n_valid = (real & valid).sum(dtype=jnp.int32)
    new = archive.replace(
        fitness=archive.fitness.at[put].set(f, mode="drop"),
        descriptor=archive.descriptor.at[put].set(descriptor, mode="drop"),
        program_id=archive.program_id.at[put].set(program_id, mode="drop"),
        tokens=new_tokens,
        children=children,
        successes=successes,
        n_evaluated=archive.n_evaluated + n_real,
        n_valid=archive.n_valid + n_valid,
        last_n_evaluated=n_real,
        last_n_valid=n_valid,
    )
    info = InsertInfo(
        status=status,
        cell=jnp.where(real & finite_desc, cell, -1).astype(jnp.int32),
        eligible=eligible,
    )
    return new, info
