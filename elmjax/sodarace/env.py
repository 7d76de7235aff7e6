"""The Sodarace domain: walker programs scored by the batched simulator.

`Sodarace.evaluate(results)` takes the sandbox's checked walkers (dict form, as
`walker.check_walker` returns them), packs them into size buckets, simulates every bucket in
fixed-size chunks (the last one padded with inert lanes), and returns fitness, descriptor and
validity per walker in input order:

* fitness = |dx| on terrains without a goal direction (stage 1 of the paper: flat ground), and
  goal * dx on LEFT-WALL / RIGHT-WALL, where dx is the travel of the mass-weighted centre of mass
  along x over `SimParams.seconds`;
* descriptor = (height, width, mass) from `walker.descriptors` (the `descriptor` entry of each
  checked result), so `elmjax exec` and the archive agree;
* valid = the walker packed, is one connected piece, never left the finite world and held its
  bones; an invalid walker has fitness 0 and an error string that starts with its reason
  (`invalid walker`, `disconnected`, `exploded`, `bone_error`);
* extras = `dx` and the physical diagnostics of every evaluation, valid or not
  (`airborne_fraction`, `peak_speed`, `bone_error`, `muscle_work`; see `physics.Diagnostics`).

Every lane of the simulator is independent (no operation mixes lanes, no reduction runs across
the batch axis), so a walker's result is bitwise independent of its batch neighbours, its
position and the chunk width (tested). `record_bodies` / `record_walker` run the same traced
simulation and also keep the joints' path, so a GIF shows the run that was scored (bitwise, tested).
With several local devices each chunk is split over a `jax.sharding.Mesh` with
a `data` axis by `shard_map`: every device simulates its own lanes.

`SodaraceEnv`, the Brax `Env` face, lives in `elmjax.sodarace.brax_env` (importing Brax is slow);
`from elmjax.sodarace.env import SodaraceEnv` still works.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, PartitionSpec

from elmjax.envs.base import DescriptorSpace, Evaluation
from elmjax.mesh import data_mesh
from elmjax.sodarace import body as body_lib
from elmjax.sodarace.body import Body
from elmjax.sodarace.physics import (
    Diagnostics,
    SimParams,
    SimState,
    centre_of_mass_x,
    diagnostics,
    init_state,
    rollout,
)
from elmjax.sodarace.terrain import Terrain, check_terrain, get_terrain
from elmjax.sodarace.walker import check_walker, disconnected_joints, disconnected_message

#: The physical diagnostics every evaluation reports (`Evaluation.extras`, the program store,
#: `elmjax simulate --json`), in this order.
DIAGNOSTICS = tuple(f.name for f in dataclasses.fields(Diagnostics))

#: Descriptor ranges. Seeds span height 7-16, width 10-20 and mass 39-140; walkers may reach
#: 200 x 200 units (coordinates within +-100), but the grid's resolution goes where evolution
#: actually explores: up to 60 x 60 units and mass 600, i.e. the seeds sit in the lowest third
#: of each axis with room to grow. Values beyond a bound fall in the edge cell (the report lists
#: those elites and the metrics count them: `num_clipped`). Lengths are walker units (0.1 m);
#: mass is JOINT_MASS per joint plus RHO per unit of connection rest length (`walker.py`).
DESCRIPTOR_SPACE = DescriptorSpace(
    names=("height", "width", "mass"),
    low=(0.0, 0.0, 0.0),
    high=(60.0, 60.0, 600.0),
    units=("units", "units", "mass units"),
)
#: XLA options every compiled simulation uses (`evaluate_bodies`, `record_bodies`, the sharded
#: evaluation; the same for all, so a recording is the scored run). Why: from 256 lanes on, XLA's
#: CPU backend hands the small reductions over joints (the centre-of-mass sums of damping; the
#: Gauss-Seidel sweep's sums are variadic reduces, which it never takes) to YNNPACK, which sums in
#: another order than at <= 128 lanes, so a walker's score depended on the chunk width
#: (CPPN-Mutable: 32.5 units in 10 s at 256 lanes, 14.2 at <= 128; tested), and cost ~2x the
#: CPU per walker-frame there (measured). Without them every width sums the way XLA does at
#: <= 128 lanes: scores at the default chunk are unchanged, bitwise. Only XLA's CPU backend
#: reads this option.
COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}

#: Lanes per device per compiled call: small enough that a chunk's state stays in L2 cache on a
#: CPU (measured: ~128 was fastest, larger batches got slower per walker), large enough to fill
#: SIMD lanes. On a GPU pass a larger `chunk` (thousands).
DEFAULT_CHUNK_PER_DEVICE = 128


@struct.dataclass
class BodyResult:
    """Per-lane outcome of a batch simulation (arrays [B])."""

    dx: jax.Array  # centre-of-mass travel along x (units); 0 where not valid
    valid: jax.Array  # packed, stayed finite and in bounds, and bones held (max_bone_error)
    alive: jax.Array  # stayed finite and in bounds (not exploded)
    bone_error: jax.Array  # largest relative bone-length error at the end
    airborne_fraction: jax.Array  # share of frames with no joint touching a surface
    peak_speed: jax.Array  # largest centre-of-mass speed (units/s)
    muscle_work: jax.Array  # positive muscle work per unit mass (units^2/s^2)


@struct.dataclass
class Recording:
    """A recorded batch simulation: the scored outcome and the joints' path (`record_bodies`)."""

    result: BodyResult  # bitwise what `evaluate_bodies` returns for the same batch
    x: jax.Array  # [F, J, B] joint x: the start, every `record_every` frames, and the end
    y: jax.Array  # [F, J, B] joint y
    frame: jax.Array  # [F] int32 frame number of each row (0 = start, last = params.frames)


def _run(
    params: SimParams, body: Body, terrain: Terrain, record_every: int = 0
) -> tuple[BodyResult, SimState, SimState, tuple[jax.Array, jax.Array] | None]:
    """The one simulation behind both scoring and recording: (result, start, final, path)."""
    start = init_state(body, terrain)
    final, path = rollout(params, body, terrain, record_every=record_every, state=start)
    dx = centre_of_mass_x(body, final.x) - centre_of_mass_x(body, start.x)
    diag = diagnostics(params, body, start, final)
    alive = final.alive & jnp.isfinite(dx)
    valid = alive & (diag.bone_error <= params.max_bone_error)

    def finite(a: jax.Array) -> jax.Array:
        return jnp.where(jnp.isfinite(a), a, 0.0)

    result = BodyResult(
        dx=jnp.where(valid, dx, 0.0),
        valid=valid,
        alive=alive,
        bone_error=finite(diag.bone_error),
        airborne_fraction=finite(diag.airborne_fraction),
        peak_speed=finite(diag.peak_speed),
        muscle_work=finite(diag.muscle_work),
    )
    return result, start, final, path


def _simulate(params: SimParams, body: Body, terrain: Terrain) -> BodyResult:
    return _run(params, body, terrain)[0]


@functools.partial(jax.jit, static_argnums=(0,), compiler_options=COMPILER_OPTIONS)
def evaluate_bodies(params: SimParams, bodies: Body, terrain: Terrain) -> BodyResult:
    """Simulate a packed batch for `params.seconds` on `terrain` (jit; one device)."""
    body_lib.check_body(bodies, "env.evaluate_bodies")
    check_terrain(terrain, bodies.batch_size, "env.evaluate_bodies")
    return _simulate(params, bodies, terrain)


@functools.partial(jax.jit, static_argnums=(0, 3), compiler_options=COMPILER_OPTIONS)
def record_bodies(
    params: SimParams, bodies: Body, terrain: Terrain, record_every: int
) -> Recording:
    """`evaluate_bodies` that also keeps the joints every `record_every` frames (jit).

    The same traced code as scoring (`_run`, one scan over frames in `rollout`), so for the same
    packed batch `result` equals `evaluate_bodies`' bitwise (tested), and the path's last row is
    the final state the score was measured on, even when `record_every` does not divide the
    number of frames.
    """
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    result, start, final, (xs, ys) = _run(params, bodies, terrain, record_every)
    frames = params.frames
    number = list(range(record_every, frames - frames % record_every + 1, record_every))
    rows_x, rows_y = [start.x[None], xs], [start.y[None], ys]
    if frames % record_every:
        rows_x.append(final.x[None])
        rows_y.append(final.y[None])
        number.append(frames)
    return Recording(
        result=result,
        x=jnp.concatenate(rows_x),
        y=jnp.concatenate(rows_y),
        frame=jnp.asarray([0] + number, jnp.int32),
    )


@functools.cache
def _sharded(params: SimParams, mesh: Mesh, terrain_def: Any) -> Any:
    """`evaluate_bodies` split over the mesh's `data` axis (the batch axis is the last one)."""
    lanes = PartitionSpec(None, "data")

    def spec(leaf: Any) -> PartitionSpec:
        return PartitionSpec("data") if leaf.ndim == 1 else lanes

    def run(bodies: Body, terrain: Terrain) -> BodyResult:
        in_specs = (jax.tree.map(spec, bodies), jax.tree.map(lambda _: PartitionSpec(), terrain))
        out_specs = BodyResult(
            **{f: PartitionSpec("data") for f in BodyResult.__dataclass_fields__}
        )
        f = jax.shard_map(
            functools.partial(_simulate, params), mesh=mesh, in_specs=in_specs, out_specs=out_specs
        )
        return f(bodies, terrain)

    return jax.jit(run, compiler_options=COMPILER_OPTIONS)


def lanes_for(count: int, chunk: int, devices: int = 1) -> int:
    """Lanes of the compiled call for a bucket holding `count` walkers: the next power of two
    (at least 8 per device), capped at `chunk`. A few shapes per bucket, little padding.

    Lanes never interact and every operation is elementwise across them, so a walker's result
    does not depend on the lane count (tested bitwise); only compile count depends on it."""
    lanes = max(8 * devices, 1 << max(0, (count - 1).bit_length()))
    lanes = min(lanes, chunk)
    return -(-lanes // devices) * devices


def simulate_walkers(
    walkers: Sequence[Any],
    terrain: str | Terrain = "flat",
    params: SimParams | None = None,
    chunk: int | None = None,
    mesh: Mesh | None | str = "auto",
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[str | None]]:
    """Simulate walkers (dict form or Walker) of any sizes: (dx, valid, diagnostics, errors).

    `diagnostics` maps each name of `DIAGNOSTICS` to a float32 array (0 for a walker that was
    never simulated; kept for one that was simulated and found invalid). `errors[k]` starts with
    the reason: `invalid walker`, `disconnected`, `exploded` or `bone_error`.
    Walkers are grouped by size bucket, each bucket simulated in chunks of at most `chunk`
    lanes (default 128 per device; see `lanes_for`), the last chunk padded with inert lanes.
    """
    params = params or SimParams()
    terrain = get_terrain(terrain)
    mesh = data_mesh() if mesh == "auto" else mesh
    n_dev = 1 if mesh is None else mesh.size
    chunk = chunk or DEFAULT_CHUNK_PER_DEVICE * n_dev
    chunk = -(-chunk // n_dev) * n_dev  # a multiple of the device count
    n = len(walkers)
    dx = np.zeros(n, np.float32)
    valid = np.zeros(n, bool)
    diag = {name: np.zeros(n, np.float32) for name in DIAGNOSTICS}
    errors: list[str | None] = [None] * n
    ok: list[int] = []
    for k, w in enumerate(walkers):
        try:
            body_lib.bucket_for(*body_lib.sizes(w))
            data = body_lib.as_dict(w)
            loose = disconnected_joints(len(data["joints"]), data["muscles"])
        except Exception as e:  # malformed or oversized: recorded, never raised
            errors[k] = f"invalid walker: {e}"[:300]
            continue
        if loose:
            errors[k] = disconnected_message(loose)
            continue
        ok.append(k)
    ok_walkers = [walkers[k] for k in ok]
    for bucket, idx in body_lib.group_by_bucket(ok_walkers):
        lanes = lanes_for(len(idx), chunk, n_dev)
        for lo in range(0, len(idx), lanes):
            part = idx[lo : lo + lanes]
            members = [ok_walkers[k] for k in part]
            try:
                bodies = body_lib.pack(members, bucket, batch_size=lanes)
            except Exception:
                bodies = None
            if bodies is None:  # pack one by one to find the culprits
                good = []
                for k in part:
                    try:
                        body_lib.pack([ok_walkers[k]], bucket)
                        good.append(k)
                    except Exception as e:
                        errors[ok[k]] = f"invalid walker: {e}"[:300]
                part = np.asarray(good, np.int64)
                if len(part) == 0:
                    continue
                bodies = body_lib.pack([ok_walkers[k] for k in part], bucket, batch_size=lanes)
            if mesh is None:
                out = evaluate_bodies(params, bodies, terrain)
            else:
                out = _sharded(params, mesh, jax.tree.structure(terrain))(bodies, terrain)
            m = len(part)
            rows = np.asarray([ok[k] for k in part], np.int64)
            dx[rows] = np.asarray(out.dx)[:m]
            valid[rows] = np.asarray(out.valid)[:m]
            for name in DIAGNOSTICS:
                diag[name][rows] = np.asarray(getattr(out, name))[:m]
            alive = np.asarray(out.alive)[:m]
            for r, lives, fine in zip(rows, alive, np.asarray(out.valid)[:m]):
                if not lives:
                    errors[r] = (
                        "exploded: the body left the finite world (non-finite or "
                        f"|x|,|y| > {params.max_coordinate:g})"
                    )
                elif not fine:
                    errors[r] = (
                        f"bone_error: a bone ended {diag['bone_error'][r]:.1%} off its length "
                        f"(bound {params.max_bone_error:.0%}); the solver cannot hold this body"
                    )
    return dx, valid, diag, errors


def record_walker(
    walker: Any,
    terrain: str | Terrain = "flat",
    params: SimParams | None = None,
    record_every: int = 1,
    chunk: int | None = None,
) -> tuple[Body, Recording]:
    """Simulate one walker as `simulate_walkers` scores it alone, and record its path.

    Same size bucket, same lane count (`lanes_for(1, chunk)`), lane 0, and the same traced
    simulation (`record_bodies`), so `recording.result` lane 0 is the scored dx bitwise (tested).
    Lanes never interact, so it is also what the walker scored inside any other batch.
    Returns the packed body (lane 0 is the walker) and the recording. Raises ValueError for a
    walker that does not pack."""
    params = params or SimParams()
    terrain = get_terrain(terrain)
    chunk = chunk or DEFAULT_CHUNK_PER_DEVICE
    bucket = body_lib.bucket_for(*body_lib.sizes(walker))
    body = body_lib.pack([walker], bucket, batch_size=lanes_for(1, chunk))
    return body, record_bodies(params, body, terrain, record_every)


def _walker_of(result: Any) -> Any:
    """A sandbox ExecResult (its `.value`) or a checked dict."""
    if hasattr(result, "ok") and hasattr(result, "value"):
        return result.value
    return result


class Sodarace:
    """The Sodarace `Environment` (see module docstring)."""

    name = "sodarace"
    entry = "make_walker"
    descriptor_space = DESCRIPTOR_SPACE
    #: What the sandbox puts in a program's globals: the walker API, as in the paper's listings.
    inject = {"walker_creator": "elmjax.sodarace.walker:walker_creator"}

    def __init__(
        self,
        terrain: str | Terrain = "flat",
        params: SimParams | None = None,
        chunk: int | None = None,
        mesh: Mesh | None | str = "auto",
    ) -> None:
        self.terrain = get_terrain(terrain)
        self.params = params or SimParams()
        self.chunk = chunk
        self.mesh = mesh

    @property
    def check(self) -> Any:
        return check_walker

    def seed_programs(self) -> dict[str, str]:
        from elmjax.sodarace.seeds import load_seeds

        return load_seeds()

    def fitness(self, dx: np.ndarray) -> np.ndarray:
        """|dx| without a goal direction, goal * dx with one (walls)."""
        goal = self.terrain.goal
        return np.abs(dx) if goal == 0 else goal * dx

    def evaluate(self, results: Sequence[Any], seed: int = 0) -> Evaluation:
        """Score checked walkers. The simulator is deterministic, so `seed` is unused (kept for
        the Environment protocol: a stochastic terrain would draw from it)."""
        del seed
        walkers = [_walker_of(r) for r in results]
        dx, valid, diag, errors = simulate_walkers(
            walkers, self.terrain, self.params, self.chunk, self.mesh
        )
        n = len(walkers)
        descriptor = np.zeros((n, 3), np.float32)
        for k, w in enumerate(walkers):
            if not valid[k]:
                continue
            try:
                d = w["descriptor"] if isinstance(w, dict) else None
                if d is None:  # a Walker object or a dict without descriptors
                    from elmjax.sodarace.walker import Walker, descriptors

                    obj = w if isinstance(w, Walker) else Walker.from_dict(w)
                    d = dict(zip(("height", "width", "mass"), descriptors(obj)))
                descriptor[k] = [float(d["height"]), float(d["width"]), float(d["mass"])]
                if not np.isfinite(descriptor[k]).all():
                    raise ValueError("non-finite descriptor")
            except Exception as e:
                valid[k] = False
                descriptor[k] = 0.0
                errors[k] = f"invalid descriptor: {e}"[:300]
        fitness = np.where(valid, self.fitness(dx), 0.0).astype(np.float32)
        dx = np.where(valid, dx, 0.0).astype(np.float32)
        return Evaluation(
            fitness=fitness,
            descriptor=descriptor,
            valid=valid,
            error=errors,
            extras={"dx": dx, **diag},
        )


def __getattr__(name: str) -> Any:
    if name == "SodaraceEnv":
        from elmjax.sodarace.brax_env import SodaraceEnv

        return SodaraceEnv
    raise AttributeError(name)
