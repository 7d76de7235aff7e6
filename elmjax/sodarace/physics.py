"""Batched 2-D mass-spring physics for Sodarace walkers: XPBD, pure JAX, differentiable.

Integrator: extended position-based dynamics (XPBD; Macklin, Mueller & Chentanez 2016) with
substeps (Macklin et al. 2019, "Small steps in physics simulation"). Each substep predicts
positions with gravity and damping (semi-implicit Euler), then runs a few Jacobi iterations that
project every spring onto its (time-varying) length, with joints moving by the average of their
springs' corrections, and projects joints out of ground, walls and ceiling with Coulomb friction.

Why XPBD and not force-based springs with substeps: bones must stay rigid. A force-based spring
stiff enough for 2% bone-length error needed 6 explicit substeps per 1/60 s frame in the
prototype and still rang; XPBD with zero compliance holds bones to the error reported by
`bone_length_error` with 3 substeps x 2 iterations and cannot blow up from stiffness (a
constraint projection is bounded by the constraint's violation). Jacobi (not Gauss-Seidel)
because every spring is solved in parallel: one gather and one merged scatter-add per iteration.
Measured in benchmarks/sim_vs_openelm.py.

Layout: batch-last (see body.py). State never becomes non-finite: a body whose joints leave
`max_coordinate` or go non-finite is frozen where it was and flagged `alive = False`; evaluation
reports it invalid.

Units: length in "units" (walker coordinates; one unit reads as 0.1 m), time in seconds, mass in
walker mass units (1 per joint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from elmjax.sodarace.body import Body
from elmjax.sodarace.terrain import Terrain, ceiling_height, floor_and_slope


@struct.dataclass
class SimParams:
    """Every constant of the simulator, with its unit and the reason for its value.

    All fields are static (hashable, not traced): changing one compiles a new program.
    """

    #: Frame length (s). 60 Hz, Box2D's (and OpenELM's) usual step; muscles and recording use it.
    dt: float = struct.field(pytree_node=False, default=1.0 / 60.0)
    #: XPBD substeps per frame. 3 keeps bone-length error ~1% at 1/180 s (measured, see module).
    substeps: int = struct.field(pytree_node=False, default=3)
    #: Jacobi constraint iterations per substep. 2 was the fastest setting whose bone error stays
    #: within a few percent; substeps buy more rigidity per FLOP than iterations (Macklin 2019).
    iterations: int = struct.field(pytree_node=False, default=2)
    #: Over-relaxation of the averaged Jacobi update (1 = plain averaging). Averaging alone
    #: under-corrects joints shared by several springs; 1.5 recovers most of Gauss-Seidel's rate.
    relaxation: float = struct.field(pytree_node=False, default=1.5)
    #: Simulated time T (s) of an evaluation: 10 s by default, i.e. 10 muscle periods.
    seconds: float = struct.field(pytree_node=False, default=10.0)
    #: Gravity (units/s^2): 9.81 m/s^2 with one unit = 0.1 m. Walkers are 1-3 m tall.
    gravity: float = struct.field(pytree_node=False, default=98.1)
    #: Linear velocity damping (1/s): air drag and joint losses; settles bounces in ~2 s without
    #: masking gait dynamics (a 1 Hz stroke loses ~10% of its speed per period).
    damping: float = struct.field(pytree_node=False, default=0.1)
    #: Muscle frequency (Hz). One stroke per second: a walker's natural ~1 Hz gait at this size,
    #: and 10 strokes in T.
    frequency: float = struct.field(pytree_node=False, default=1.0)
    #: Largest relative length change of a muscle (dimensionless): L in [0.5, 1.5] * L0 at most.
    max_stretch: float = struct.field(pytree_node=False, default=0.5)
    #: Program amplitude at which the stretch reaches tanh(1) = 76% of `max_stretch`. The paper
    #: uses 2, 5 and 10: stretches 0.12, 0.28 and 0.42, legal and distinct, saturating beyond.
    amplitude_scale: float = struct.field(pytree_node=False, default=8.0)
    #: Time (s) over which muscle stretch ramps from 0 to full: a muscle whose phase starts it
    #: mid-stroke would otherwise jerk the body in the first frame.
    ramp: float = struct.field(pytree_node=False, default=0.25)
    #: XPBD compliance of passive connections (units/force); 0 = rigid bones.
    bone_compliance: float = struct.field(pytree_node=False, default=0.0)
    #: XPBD compliance of muscles; 0 = they follow their target length as hard as bones.
    muscle_compliance: float = struct.field(pytree_node=False, default=1.0e-5)
    #: Coulomb friction coefficient (dimensionless), isotropic: the same both ways along the
    #: surface. 1.0 is rubber on concrete; enough grip that a pushing foot does not slip.
    friction: float = struct.field(pytree_node=False, default=1.0)
    #: "hard" (projection onto the surface, exact) or "smooth" (softplus penetration, smooth
    #: friction) contact. Smooth contact gives gradients through touch-down and lift-off.
    contact: str = struct.field(pytree_node=False, default="hard")
    #: Softplus width (units) of smooth contact: the surface is felt ~this far above it.
    smooth_width: float = struct.field(pytree_node=False, default=0.05)
    #: |x|, |y| (units) beyond which a body counts as exploded (walkers start within +-100).
    max_coordinate: float = struct.field(pytree_node=False, default=1.0e4)

    @property
    def frames(self) -> int:
        return int(round(self.seconds / self.dt))

    @property
    def substep_dt(self) -> float:
        return self.dt / self.substeps


@struct.dataclass
class SimState:
    """Positions and velocities of a batch (batch-last), time, and the alive flag."""

    x: jax.Array  # [J, B] joint x (units)
    y: jax.Array  # [J, B] joint y (units)
    vx: jax.Array  # [J, B] (units/s)
    vy: jax.Array  # [J, B]
    t: jax.Array  # () simulated time (s)
    alive: jax.Array  # [B] bool: finite and within bounds so far
    modulation: jax.Array  # [S, B] multiplies each muscle's stretch (1 = as programmed)


def muscle_stretch(params: SimParams, amplitude: jax.Array) -> jax.Array:
    """Relative stretch alpha of a muscle: `max_stretch * tanh(amplitude / amplitude_scale)`.

    Saturating, odd (a negative amplitude is the same stroke half a period later) and smooth, so
    gradients with respect to amplitude exist everywhere.
    """
    return params.max_stretch * jnp.tanh(amplitude / params.amplitude_scale)


def target_length(params: SimParams, body: Body, t: jax.Array, modulation: jax.Array) -> jax.Array:
    """Rest length of every spring at time t: L0 * (1 + alpha sin(omega t + 2 pi phase))."""
    omega = 2.0 * jnp.pi * params.frequency
    ramp = jnp.clip(t / params.ramp, 0.0, 1.0) if params.ramp > 0 else 1.0
    alpha = muscle_stretch(params, body.amplitude) * body.is_muscle * modulation * ramp
    return body.rest * (1.0 + alpha * jnp.sin(omega * t + 2.0 * jnp.pi * body.phase))


def placement(body: Body, terrain: Terrain) -> tuple[jax.Array, jax.Array]:
    """Initial positions: the walker centred on x = 0 (or its edge at 0 next to a wall), its
    lowest joint on the ground. Padded joints sit on joint 0, which they never leave."""
    big = 1.0e9
    m = body.joint_mask
    xmin = jnp.min(jnp.where(m > 0, body.x0, big), axis=0)
    xmax = jnp.max(jnp.where(m > 0, body.x0, -big), axis=0)
    if terrain.anchor == "left":
        shift = -xmin
    elif terrain.anchor == "right":
        shift = -xmax
    else:
        shift = -0.5 * (xmin + xmax)
    x = body.x0 + shift
    ground, _ = floor_and_slope(terrain, x)
    lift = jnp.max(jnp.where(m > 0, ground - body.y0, -big), axis=0)
    y = body.y0 + lift
    x = jnp.where(m > 0, x, x[:1])
    y = jnp.where(m > 0, y, y[:1])
    return x, y


def init_state(body: Body, terrain: Terrain) -> SimState:
    """Rest state at t = 0 (see `placement`)."""
    x, y = placement(body, terrain)
    zeros = jnp.zeros_like(x)
    return SimState(
        x=x,
        y=y,
        vx=zeros,
        vy=zeros,
        t=jnp.zeros((), x.dtype),
        alive=jnp.asarray(body.valid, bool),
        modulation=jnp.ones_like(body.rest),
    )


def centre_of_mass_x(body: Body, x: jax.Array) -> jax.Array:
    """Mass-weighted mean x per body [B] (0 for an empty padding lane)."""
    total = jnp.sum(body.mass, axis=0)
    return jnp.sum(body.mass * x, axis=0) / jnp.maximum(total, 1e-12)


# ---- the step ------------------------------------------------------------------------------------


def _gather(a: jax.Array, idx: jax.Array) -> jax.Array:
    """a[idx[s, b], b] for batch-last a [J, B] and idx [S, B]."""
    return jnp.take_along_axis(a, idx, axis=0)


SpringSolver = Callable[
    [jax.Array, jax.Array, jax.Array, jax.Array, jax.Array],
    tuple[jax.Array, jax.Array, jax.Array],
]


def spring_solver(params: SimParams, body: Body) -> SpringSolver:
    """One Jacobi XPBD iteration over all springs: `(x, y, lam, target, alpha_tilde) -> (x, y,
    lam)`, with everything that depends only on the body (end weights, indices) computed once.

    Layout: gather both ends of every spring (flat per-lane indices), then scatter-add the
    corrections back with one merged flat scatter; work ~ springs. (A dense all-pairs variant,
    contracting with each body's [S, J] incidence matrix, was 15x slower here even at 16 joints:
    XLA materialised the [S, J, B] products.)
    """
    J, B = body.x0.shape
    si, sj = body.spring_i, body.spring_j
    wi, wj = _gather(body.inv_mass, si), _gather(body.inv_mass, sj)
    w_sum = wi + wj
    scale = params.relaxation / body.degree
    lane = jnp.arange(B, dtype=si.dtype)
    flat = jnp.concatenate([si * B + lane, sj * B + lane], axis=0).reshape(-1)
    signed_w = jnp.concatenate([-wi, wj], axis=0)

    def ends(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _gather(x, sj) - _gather(x, si), _gather(y, sj) - _gather(y, si)

    def apply(px: jax.Array, py: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Merged scatter-add: both ends of every spring, x and y, into one flat buffer.
        vals = jnp.stack(
            [jnp.concatenate([px, px], 0) * signed_w, jnp.concatenate([py, py], 0) * signed_w],
            axis=-1,
        ).reshape(-1, 2)
        corr = jnp.zeros((J * B, 2), px.dtype).at[flat].add(vals).reshape(J, B, 2)
        return scale * corr[..., 0], scale * corr[..., 1]

    def solve(
        x: jax.Array, y: jax.Array, lam: jax.Array, target: jax.Array, alpha_tilde: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        dx, dy = ends(x, y)
        length = jnp.sqrt(dx * dx + dy * dy + 1e-12)
        c = length - target
        denom = w_sum + alpha_tilde
        dlam = -(c + alpha_tilde * lam) / jnp.where(denom > 0, denom, 1.0) * body.spring_mask
        cx, cy = apply(dlam * dx / length, dlam * dy / length)
        return x + cx, y + cy, lam + dlam

    return solve


def _penetration(params: SimParams, depth: jax.Array) -> jax.Array:
    """How far to push a joint out along the normal: max(depth, 0), or its softplus."""
    if params.contact == "smooth":
        w = params.smooth_width
        return w * jax.nn.softplus(depth / w)
    return jnp.maximum(depth, 0.0)


def _friction(params: SimParams, slide: jax.Array, push: jax.Array) -> jax.Array:
    """Tangential displacement friction removes: min(|slide|, mu * push) * sign(slide)."""
    limit = params.friction * push
    if params.contact == "smooth":
        return slide * limit / jnp.sqrt(slide * slide + limit * limit + 1e-12)
    return jnp.clip(slide, -limit, limit)


def _contacts(
    params: SimParams,
    terrain: Terrain,
    body: Body,
    x: jax.Array,
    y: jax.Array,
    x_start: jax.Array,
    y_start: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Project joints out of floor, ceiling and walls, with Coulomb friction against the
    displacement since the substep started (position-level friction, Mueller et al. 2020)."""
    m = body.joint_mask
    # Floor: normal (-h', 1)/|.|, distance below the surface along it.
    h, slope = floor_and_slope(terrain, x)
    norm = jnp.sqrt(1.0 + slope * slope)
    nx, ny = -slope / norm, 1.0 / norm
    push = _penetration(params, (h - y) / norm) * m
    x, y = x + push * nx, y + push * ny
    slide = (x - x_start) * ny - (y - y_start) * nx  # along the tangent (ny, -nx)
    stop = _friction(params, slide, push)
    x, y = x - stop * ny, y + stop * nx
    # Ceiling (tunnel): flat-normal approximation, pushes down, friction along x.
    if "ceiling" in terrain.features:
        top = ceiling_height(terrain, x)
        push = _penetration(params, y - top) * m
        y = y - push
        x = x - _friction(params, x - x_start, push)
    # Walls: push along x, friction along y. "No wall" sits at +-FAR, never touched.
    if "walls" in terrain.features:
        for wall, sign in ((terrain.wall_left, 1.0), (terrain.wall_right, -1.0)):
            push = _penetration(params, sign * (wall - x)) * m
            x = x + sign * push
            y = y - _friction(params, y - y_start, push)
    return x, y


class Prepared(NamedTuple):
    """Per-body constants of a rollout, computed once instead of once per substep."""

    solve: SpringSolver
    stroke_sin: jax.Array  # [S, B] L0 * alpha * cos(2 pi phase): coefficient of sin(omega t)
    stroke_cos: jax.Array  # [S, B] L0 * alpha * sin(2 pi phase): coefficient of cos(omega t)
    alpha_tilde: jax.Array  # [S, B] XPBD compliance / h^2


def prepare(params: SimParams, body: Body) -> Prepared:
    """Hoist everything that depends only on the body out of the time loop. The muscle target
    uses sin(wt + p) = sin(wt) cos(p) + cos(wt) sin(p), so a substep costs two scalar
    transcendentals instead of one per spring."""
    alpha = muscle_stretch(params, body.amplitude) * body.is_muscle * body.rest
    angle = 2.0 * jnp.pi * body.phase
    h = params.substep_dt
    compliance = jnp.where(body.is_muscle > 0, params.muscle_compliance, params.bone_compliance)
    return Prepared(
        solve=spring_solver(params, body),
        stroke_sin=alpha * jnp.cos(angle),
        stroke_cos=alpha * jnp.sin(angle),
        alpha_tilde=(compliance / (h * h)).astype(body.rest.dtype),
    )


def _target(params: SimParams, body: Body, prep: Prepared, t: jax.Array, mod: jax.Array):
    """`target_length` from the hoisted strokes."""
    omega = 2.0 * jnp.pi * params.frequency
    ramp = jnp.clip(t / params.ramp, 0.0, 1.0) if params.ramp > 0 else 1.0
    stroke = prep.stroke_sin * jnp.sin(omega * t) + prep.stroke_cos * jnp.cos(omega * t)
    return body.rest + (ramp * mod) * stroke


def substep(
    params: SimParams, body: Body, terrain: Terrain, state: SimState, prep: Prepared
) -> SimState:
    """One XPBD substep of length dt / substeps (`prep` from `prepare`)."""
    h = params.substep_dt
    m = body.joint_mask
    keep = jnp.exp(-params.damping * h)
    vx = state.vx * keep
    vy = (state.vy - params.gravity * h) * keep
    vx, vy = vx * m, vy * m
    x_start, y_start = state.x, state.y
    x = x_start + vx * h
    y = y_start + vy * h
    t_next = state.t + h
    target = _target(params, body, prep, t_next, state.modulation)
    alpha_tilde = prep.alpha_tilde
    solve = prep.solve

    def iteration(_: int, carry: tuple[jax.Array, jax.Array, jax.Array]):
        x, y, lam = carry
        x, y, lam = solve(x, y, lam, target, alpha_tilde)
        x, y = _contacts(params, terrain, body, x, y, x_start, y_start)
        return x, y, lam

    lam0 = jnp.zeros_like(body.rest)
    x, y, _ = jax.lax.fori_loop(0, params.iterations, iteration, (x, y, lam0))
    return state.replace(x=x, y=y, vx=(x - x_start) / h, vy=(y - y_start) / h, t=t_next)


def step(params: SimParams, body: Body, state: SimState, terrain: Terrain) -> SimState:
    """One frame (dt) = `substeps` XPBD substeps; freezes bodies that leave the finite world."""
    return _frame(params, body, terrain, prepare(params, body), state)


def _frame(
    params: SimParams, body: Body, terrain: Terrain, prep: Prepared, state: SimState
) -> SimState:
    new = jax.lax.fori_loop(
        0, params.substeps, lambda _, s: substep(params, body, terrain, s, prep), state
    )
    ok = (
        jnp.all(jnp.isfinite(new.x) & jnp.isfinite(new.y), axis=0)
        & jnp.all(jnp.isfinite(new.vx) & jnp.isfinite(new.vy), axis=0)
        & jnp.all((jnp.abs(new.x) < params.max_coordinate), axis=0)
        & jnp.all((jnp.abs(new.y) < params.max_coordinate), axis=0)
    )
    alive = state.alive & ok

    def pick(a_new: jax.Array, a_old: jax.Array) -> jax.Array:
        return jnp.where(alive, a_new, a_old)

    zero = jnp.zeros_like(state.vx)
    return new.replace(
        x=pick(new.x, state.x),
        y=pick(new.y, state.y),
        vx=pick(new.vx, zero),
        vy=pick(new.vy, zero),
        alive=alive,
    )


def rollout(
    params: SimParams,
    body: Body,
    terrain: Terrain,
    frames: int | None = None,
    record_every: int = 0,
    state: SimState | None = None,
) -> tuple[SimState, tuple[jax.Array, jax.Array] | None]:
    """Simulate `frames` frames (default `params.frames`) from `state` (default rest state).

    Returns the final state and, when `record_every` > 0, positions every `record_every`
    frames (`[frames // record_every, J, B]` x and y, first frame after `record_every` steps).
    The final state always covers all `frames` frames, recorded or not.

    Why one scan over frames for both: a recorded run must be the run that was scored, bitwise,
    and chaotic gaits amplify any change in the compiled step (fusion, contraction into FMA)
    within seconds. Both paths trace the same `frame` body into the same loop; recording only
    stacks each frame's positions, an exact copy, and thins them after the loop. (Nesting a
    fori_loop of `record_every` frames inside a scan, as an earlier version did, gave a
    different loop nest from evaluation's: it agreed bitwise on the seeds, but nothing made it.)
    Cost of recording: frames x J x B x 2 floats, 2.4 MB for 10 s of 8 lanes of 64 joints.
    """
    frames = params.frames if frames is None else frames
    state = init_state(body, terrain) if state is None else state
    prep = prepare(params, body)  # hoisted: computed once, not once per step
    record = record_every > 0

    def frame(s: SimState, _: None) -> tuple[SimState, tuple[jax.Array, jax.Array] | None]:
        s = _frame(params, body, terrain, prep, s)
        return s, ((s.x, s.y) if record else None)

    final, traj = jax.lax.scan(frame, state, None, length=frames)
    if not record:
        return final, None
    xs, ys = traj
    keep = slice(record_every - 1, frames - frames % record_every, record_every)
    return final, (xs[keep], ys[keep])


def bone_length_error(body: Body, x: jax.Array, y: jax.Array) -> jax.Array:
    """Largest relative length error |L - L0| / L0 over passive connections, per body [B]."""
    dx = _gather(x, body.spring_j) - _gather(x, body.spring_i)
    dy = _gather(y, body.spring_j) - _gather(y, body.spring_i)
    length = jnp.sqrt(dx * dx + dy * dy)
    bone = body.spring_mask * (1.0 - body.is_muscle)
    err = jnp.abs(length - body.rest) / jnp.maximum(body.rest, 1e-6) * bone
    return jnp.max(err, axis=0)


def simulate_dx(params: SimParams, body: Body, terrain: Terrain) -> tuple[jax.Array, jax.Array]:
    """(dx [B], alive [B]): centre-of-mass travel along x over `params.seconds`."""
    start = init_state(body, terrain)
    final, _ = rollout(params, body, terrain, state=start)
    dx = centre_of_mass_x(body, final.x) - centre_of_mass_x(body, start.x)
    return jnp.where(final.alive, dx, 0.0), final.alive
