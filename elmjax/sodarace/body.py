"""Walkers -> padded, batch-last arrays in a few size buckets.

The simulator works on a batch of bodies at once. Its arrays are *batch-last*: joint arrays are
`[J, B]`, spring arrays `[S, B]`, so every elementwise operation of the step runs over contiguous
batch lanes (SIMD on CPU, coalesced on GPU) and the per-spring gather/scatter is one flat index
per lane. `body[k]`-style access is `jax.tree.map(lambda a: a[..., k], body)`.

Bodies are padded to a *size bucket* (`JOINT_BUCKETS` x `SPRING_BUCKETS`) so a 5-joint walker does
not pay for a 60-joint one, while the number of compiled shapes stays bounded
(`len(JOINT_BUCKETS) * len(SPRING_BUCKETS)` at most). Padding is inert: padded joints have zero
mass and zero inverse mass and never move; padded springs have `spring_mask = 0` and join joint 0
to itself with zero weight.

Mass model (matches `walker.descriptors`): each joint weighs `JOINT_MASS`, and each connection's
mass `RHO * rest_length` is split evenly between its two ends, so the body's total mass is exactly
the descriptor "mass".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import jax
import numpy as np
from flax import struct

from elmjax.sodarace.walker import JOINT_MASS, RHO, Walker

#: Joint counts of the size buckets. Seeds have 5-16 joints; the largest equals MAX_JOINTS.
#: Steps of ~1.5x: padding costs at most a third of the work (measured: padding CPPN-Mutable's 35
#: springs to 64 instead of 48 cost ~30% of throughput), at most 7 x 9 compiled shapes.
JOINT_BUCKETS: tuple[int, ...] = (8, 12, 16, 24, 32, 48, 64)
#: Spring counts of the size buckets; the largest equals MAX_MUSCLES.
SPRING_BUCKETS: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 256, 512)


@struct.dataclass
class Body:
    """A batch of padded walkers; every array is batch-last (see module docstring)."""

    x0: jax.Array  # [J, B] initial joint x (units, as the program gave it)
    y0: jax.Array  # [J, B] initial joint y (units)
    mass: jax.Array  # [J, B] joint mass incl. half of each attached connection; 0 if padded
    inv_mass: jax.Array  # [J, B] 1 / mass, 0 if padded
    joint_mask: jax.Array  # [J, B] 1.0 for a real joint
    degree: jax.Array  # [J, B] number of real springs at the joint, at least 1 (Jacobi average)
    spring_i: jax.Array  # [S, B] int32 first joint
    spring_j: jax.Array  # [S, B] int32 second joint
    rest: jax.Array  # [S, B] rest length (units)
    amplitude: jax.Array  # [S, B] program amplitude (0 = passive bone)
    phase: jax.Array  # [S, B] program phase (cycles)
    spring_mask: jax.Array  # [S, B] 1.0 for a real spring
    is_muscle: jax.Array  # [S, B] 1.0 for an oscillating connection
    valid: jax.Array  # [B] bool: a packed walker (False for batch padding)
    width: jax.Array  # [B] initial bounding-box width (units)

    @property
    def num_joints(self) -> int:
        return int(self.x0.shape[0])

    @property
    def num_springs(self) -> int:
        return int(self.rest.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.x0.shape[-1])


def check_body(body: Body, where: str) -> None:
    """The shape contract of a packed batch at the entry of a device function (`where`, e.g.
    "physics.rollout"), checked with chex while tracing (free once compiled).

    Per-joint fields [J, B] float, per-spring fields [S, B] (joint indices int32, the rest
    float), per-body `valid` [B] bool and `width` [B] float, one B throughout. A body packed
    by hand with a field transposed or a batch cut short fails here, naming the field, instead
    of gathering from the wrong lanes.
    """
    chex.assert_rank(body.valid, 1, custom_message=f"{where}: body.valid must be [B]")
    chex.assert_type(body.valid, bool, custom_message=f"{where}: body.valid must be bool")
    batch = body.valid.shape[0]
    chex.assert_shape(
        body.width, (batch,), custom_message=f"{where}: body.width must be [B={batch}]"
    )
    chex.assert_shape(
        body.x0, (None, batch), custom_message=f"{where}: body.x0 must be [J, B={batch}]"
    )
    chex.assert_shape(
        body.spring_i,
        (None, batch),
        custom_message=f"{where}: body.spring_i must be [S, B={batch}]",
    )
    joints, springs = body.x0.shape[0], body.spring_i.shape[0]
    for name in ("x0", "y0", "mass", "inv_mass", "joint_mask", "degree"):
        value = getattr(body, name)
        message = f"{where}: body.{name} must be [J={joints}, B={batch}]"
        chex.assert_shape(value, (joints, batch), custom_message=message)
        chex.assert_type(value, float, custom_message=f"{where}: body.{name} must be floating")
    for name in ("spring_i", "spring_j", "rest", "amplitude", "phase", "spring_mask", "is_muscle"):
        value = getattr(body, name)
        message = f"{where}: body.{name} must be [S={springs}, B={batch}]"
        chex.assert_shape(value, (springs, batch), custom_message=message)
        kind = int if name in ("spring_i", "spring_j") else float
        chex.assert_type(value, kind, custom_message=f"{where}: body.{name} dtype")


def as_dict(walker: Walker | dict[str, Any]) -> dict[str, Any]:
    """A Walker or its dict form -> the dict form (no copy for dicts)."""
    if isinstance(walker, Walker):
        return walker.to_dict()
    if not isinstance(walker, dict) or "joints" not in walker or "muscles" not in walker:
        raise ValueError("a walker must be a Walker or a dict with 'joints' and 'muscles'")
    return walker


def sizes(walker: Walker | dict[str, Any]) -> tuple[int, int]:
    """(joints, springs) of one walker."""
    data = as_dict(walker)
    return len(data["joints"]), len(data["muscles"])


def bucket_for(num_joints: int, num_springs: int) -> tuple[int, int]:
    """The smallest (joints, springs) bucket that holds a walker of this size."""
    try:
        j = next(b for b in JOINT_BUCKETS if b >= num_joints)
        s = next(b for b in SPRING_BUCKETS if b >= num_springs)
    except StopIteration:
        raise ValueError(
            f"walker with {num_joints} joints and {num_springs} springs exceeds the largest "
            f"bucket ({JOINT_BUCKETS[-1]}, {SPRING_BUCKETS[-1]})"
        ) from None
    return j, s


def pack(
    walkers: Sequence[Walker | dict[str, Any]],
    bucket: tuple[int, int] | None = None,
    batch_size: int | None = None,
) -> Body:
    """Pack walkers (dict form or `Walker`) into one `Body` batch.

    `bucket` defaults to the smallest one holding every walker; `batch_size` (>= len(walkers))
    pads the batch with inert rows whose `valid` is False. Raises ValueError for a malformed
    walker (the sandbox's `check_walker` output never is).
    """
    datas = [as_dict(w) for w in walkers]
    if bucket is None:
        nj = max((len(d["joints"]) for d in datas), default=2)
        ns = max((len(d["muscles"]) for d in datas), default=1)
        bucket = bucket_for(nj, ns)
    J, S = bucket
    B = len(datas) if batch_size is None else batch_size
    if len(datas) > B:
        raise ValueError(f"batch_size {B} is smaller than the {len(datas)} walkers")
    f32 = np.float32
    x0 = np.zeros((J, B), f32)
    y0 = np.zeros((J, B), f32)
    mass = np.zeros((J, B), f32)
    joint_mask = np.zeros((J, B), f32)
    degree = np.ones((J, B), f32)
    si = np.zeros((S, B), np.int32)
    sj = np.zeros((S, B), np.int32)
    rest = np.zeros((S, B), f32)
    amplitude = np.zeros((S, B), f32)
    phase = np.zeros((S, B), f32)
    spring_mask = np.zeros((S, B), f32)
    valid = np.zeros((B,), bool)
    width = np.zeros((B,), f32)
    for b, data in enumerate(datas):
        joints = np.asarray(data["joints"], np.float64).reshape(-1, 2)
        muscles = data["muscles"]
        n, m = len(joints), len(muscles)
        if n > J or m > S:
            raise ValueError(f"walker {b} ({n} joints, {m} springs) exceeds bucket {bucket}")
        if n < 2 or m < 1 or not np.isfinite(joints).all():
            raise ValueError(f"walker {b} needs >= 2 finite joints and >= 1 connection")
        ij = np.array([[int(e[0]), int(e[1])] for e in muscles], np.int64).reshape(-1, 2)
        if ij.min() < 0 or ij.max() >= n or (ij[:, 0] == ij[:, 1]).any():
            raise ValueError(f"walker {b} has a connection that does not join two joints")
        lengths = np.linalg.norm(joints[ij[:, 1]] - joints[ij[:, 0]], axis=1)
        amp = np.array([_amplitude(e[2]) for e in muscles], np.float64)
        ph = np.array([float(e[2].get("phase", 0.0)) for e in muscles], np.float64)
        jm = np.full(n, JOINT_MASS, np.float64)
        np.add.at(jm, ij[:, 0], 0.5 * RHO * lengths)
        np.add.at(jm, ij[:, 1], 0.5 * RHO * lengths)
        deg = np.zeros(n, np.float64)
        np.add.at(deg, ij.ravel(), 1.0)
        x0[:n, b], y0[:n, b] = joints[:, 0], joints[:, 1]
        mass[:n, b] = jm
        joint_mask[:n, b] = 1.0
        degree[:n, b] = np.maximum(deg, 1.0)
        si[:m, b], sj[:m, b] = ij[:, 0], ij[:, 1]
        rest[:m, b] = lengths
        amplitude[:m, b] = amp
        phase[:m, b] = ph
        spring_mask[:m, b] = 1.0
        valid[b] = True
        width[b] = joints[:, 0].max() - joints[:, 0].min()
    inv_mass = np.where(mass > 0, 1.0 / np.where(mass > 0, mass, 1.0), 0.0).astype(f32)
    return Body(
        x0=x0,
        y0=y0,
        mass=mass,
        inv_mass=inv_mass,
        joint_mask=joint_mask,
        degree=degree,
        spring_i=si,
        spring_j=sj,
        rest=rest,
        amplitude=amplitude,
        phase=phase,
        spring_mask=spring_mask,
        is_muscle=(amplitude != 0).astype(f32),
        valid=valid,
        width=width,
    )


def _amplitude(spec: Any) -> float:
    """A "distance" connection is passive whatever amplitude it carries (walker.from_dict)."""
    if not isinstance(spec, dict):
        raise ValueError("muscle spec must be a dict")
    if spec.get("type", "muscle") == "distance":
        return 0.0
    return float(spec.get("amplitude", 0.0))


def group_by_bucket(
    walkers: Sequence[Walker | dict[str, Any]],
) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Indices of a mixed batch grouped by size bucket: [(bucket, original indices)], buckets in
    sorted order, indices ascending, so the grouping is a pure function of the walkers."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, w in enumerate(walkers):
        groups.setdefault(bucket_for(*sizes(w)), []).append(k)
    return [(b, np.asarray(groups[b], np.int64)) for b in sorted(groups)]


def pack_by_bucket(
    walkers: Sequence[Walker | dict[str, Any]],
) -> list[tuple[tuple[int, int], np.ndarray, Body]]:
    """`group_by_bucket`, then `pack` each group: [(bucket, original indices, Body)]."""
    return [
        (bucket, idx, pack([walkers[k] for k in idx], bucket))
        for bucket, idx in group_by_bucket(walkers)
    ]


def take(body: Body, index: np.ndarray | slice) -> Body:
    """Select batch lanes (last axis) of a Body."""
    return jax.tree.map(lambda a: a[..., index], body)


def concat(bodies: Sequence[Body]) -> Body:
    """Concatenate Bodies of one bucket along the batch axis."""
    return jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a], axis=-1), *bodies)
