"""Batched 2-D mass-spring physics for Sodarace walkers: XPBD, pure JAX, differentiable.

Integrator: extended position-based dynamics (XPBD; Macklin, Mueller & Chentanez 2016) with
substeps (Macklin et al. 2019, "Small steps in physics simulation"). Each substep predicts
positions with gravity and damping (semi-implicit Euler), then runs a Gauss-Seidel sweep that
projects every spring, one after another, onto its (time-varying) length, and projects joints
out of ground, walls and ceiling with Coulomb friction.

**Internal forces conserve momentum.** Every spring's correction is applied equal and opposite
to its two joints, weighted by inverse mass (one step per spring, never one per joint: an early
per-joint Jacobi average `relaxation / degree` gave the two ends of a spring different impulses,
so a body in free flight pushed its own centre of mass around; evolution found and exploited
that). The XPBD multiplier
accumulates exactly the scaled increment that moved the joints, so a muscle's compliance and the
force read from the multiplier (`lambda / h^2`) are the ones configured. Damping acts only on
the non-rigid part of the joints' velocities (tissue losses), so it changes neither momentum nor
angular momentum and in free flight the centre of mass follows gravity exactly; optional
`air_drag` (default 0) damps the body as a whole.

**Muscles are physically limited** (all `SimParams` fields with unit and reason):

* stroke: target length `L0 * (1 + alpha * sin(omega t + 2 pi phase))`, with
  `alpha = max_stretch * tanh(amplitude / amplitude_scale)` (the paper's 2, 5 and 10 are legal
  and strictly increasing; distinct wherever the stroke-speed limit does not bind);
* stroke speed: `alpha` is shrunk smoothly so the peak target speed `L0 * alpha * omega` stays
  below `stroke_speed` (units/s): a long muscle cannot move its ends arbitrarily fast just because
  it is long (the old model let stroke speed grow with length, so size paid by itself). The limit
  also bounds hops: a leg extending at `v` launches the body at about `v`, i.e. `v^2 / 2g` high.
  Version 5 halves it to 15 units/s (1.1-unit hops; version 4's 30 gave 4.6, and a long GP run
  under version 4 evolved hoppers airborne 63% of the time), with `amplitude_scale` 3 instead of
  4 so that the seeds' small amplitudes still move them;
* force cap: the muscle's multiplier is clamped to `muscle_force * h^2`, i.e. its force to
  `muscle_force` (force units). Every connection has the same cross-section (mass per length is
  `RHO`), hence the same peak force; a muscle that cannot reach its target within the cap lags.

Compared with OpenELM's Box2D Sodarace (muscles are soft distance joints at 3 Hz with damping
ratio 0.3, linear damping 1.1 /s, and Box2D clamps translation to 2 world units per step, i.e. a
speed cap of 120 units/s at 60 Hz): we keep bones rigid (XPBD, zero compliance) instead of soft
joints because the descriptor and the paper's listings treat "distance" connections as bones; we
bound muscles by force and stroke speed, which are physical, instead of by softness and a
translation clamp, which are solver artifacts (the clamp alone stops nothing that tumbles slower
than 120 units/s; our 15 units/s stroke limit is 8x tighter and bounds the push itself, not the
body's speed after it); our damping acts only on non-rigid motion (deformation), because
Box2D's 1.1 /s drag on the whole body would mean a 1 m walker falling through syrup (real air drag
on it is ~0.01 /s) and would break the free-flight law `a_com = g` that the tests check. Its rate
(2 /s, stronger than Box2D's muscle damping ratio of 0.3 at 3 Hz, i.e. ~5.7 /s on the muscle
alone, but on every deformation) is what keeps scores from being chaotic: with 0.5 /s a 0.001-unit
jitter of the joints or a change of substeps reshuffled the ranking of evolved elites.
Friction is 0.3 (version 6), near Box2D's mixed node-on-ground friction in OpenELM (1.0 on the
nodes, the ground fixture's default 0.2: sqrt(1.0 * 0.2) = 0.45); with 1.0 (versions 1-5) a
planted foot never slipped, and long GP runs evolved bodies that vaulted off it in small hops.
Version 7 runs 3 substeps of 2 sweeps each (versions 4-6: 4 substeps of 1): over-constrained
bodies (dozens of muscles fighting over the same joints, which GP finds from the CPPN seeds) were
left unconverged by one sweep, and the contacts turned that residual into flight; 2 x 2 (the
cost of 4 x 1) left evolved scores 26-27% above the 12-substep reference. And a muscle on the same two joints as a bone is solved as
part of the bone (`muscle_beside_bone`): a rigid bone fixes that distance, so the muscle can do
no work, but left free it fought the bone every substep and GP turned the churn into hops whose
length depended on the substep.

Why XPBD and not force-based springs with substeps: bones must stay rigid and the solve cannot blow
up from stiffness (a projection is bounded by the constraint's violation). Why Gauss-Seidel and not
Jacobi (version 3 ran 6 substeps x 2 Jacobi iterations, every spring at once with its step divided
by the larger degree of its joints, to stay stable): the Jacobi solve was left unconverged (bones
1.5% soft on CPPN-Mutable), how soft depended on the substep count, and evolution selected bodies
that exploited it, so evolved elites scored 27-71% more than under the 12-substep reference. A
Gauss-Seidel sweep (springs in the walker's connection order, each seeing its predecessors'
corrections, full step) has no degree penalty, and it costs less: per spring it is a few fused
multiply-adds and reductions over dense [J, B] rows (+1/-1 and the ends' inverse masses, built once
per rollout), with no gathers or scatter-adds, which dominated the Jacobi step on CPU. The sweep is
a `lax.scan` over springs whose inputs are the per-spring constants and whose outputs are the new
multipliers (nothing [S, B]-sized is carried, so XLA copies nothing per spring): ~1.9x less CPU per
walker-frame than version 3's Jacobi step, measured. x and y go through it stacked ([2, J, B]), so
a spring costs one reduce over the joints (`springs._sums`, a variadic reduce) and one update
instead of two of each: the sweep takes ~half the CPU it took as two arrays and a CPPN-Mutable
rollout at the default 128 lanes 1.4-1.7x less (same floats; benchmarks/RESULTS.md), and because
XLA never hands a variadic reduce to YNNPACK, it is as fast in a program compiled without
`env.COMPILER_OPTIONS` (one `jnp.sum` of the stacked array ran 12x slower there). Large buckets
(see `springs.GS_DENSE_MAX_JOINTS`) scan over springs with per-lane gathers and scatters instead;
same arithmetic. `solver="jacobi"` keeps the old solve for comparison. The solvers live in
`springs.py`. Measured in benchmarks/sim_vs_openelm.py and experiments/physics_audit.py.

Diagnostics (`Diagnostics`), accumulated in the same scan as the score: the share of 60 Hz frames
in which no joint is within `touch_distance` of a surface (`airborne_fraction`), the largest
centre-of-mass speed between frames (`peak_speed`, units/s), the muscles' positive mechanical work
per unit mass (`muscle_work`, units^2/s^2; per frame, the mean force over its substeps times the
length change over the frame), and the largest relative bone-length error at the final frame
(`bone_error`).

Layout: batch-last (see body.py). State never becomes non-finite: a body whose joints leave
`max_coordinate` or go non-finite is frozen where it was and flagged `alive = False`; evaluation
reports it invalid (`exploded`).

Units: length in "units" (walker coordinates; one unit reads as 0.1 m), time in seconds, mass in
walker mass units (1 per joint plus RHO per unit of connection), force in mass * units/s^2.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from elmjax import tracing
from elmjax.sodarace.body import Body, check_body
from elmjax.sodarace.contact import contacts, touching
from elmjax.sodarace.params import (  # noqa: F401  (re-exported: physics.SimParams etc.)
    PHYSICS_VERSION,
    SimParams,
    check_params,
    params_dict,
    physics_identity,
    with_overrides,
)
from elmjax.sodarace.springs import (  # noqa: F401  (re-exported: physics.spring_solver etc.)
    SpringSolver,
    _gather,
    gauss_seidel_solver,
    jacobi_solver,
    spring_solver,
)
from elmjax.sodarace.terrain import Terrain, check_terrain, floor_and_slope


@struct.dataclass
class SimState:
    """Positions and velocities of a batch (batch-last), time, the alive flag, and the running
    diagnostics (see `Diagnostics`)."""

    x: jax.Array  # [J, B] joint x (units)
    y: jax.Array  # [J, B] joint y (units)
    vx: jax.Array  # [J, B] (units/s)
    vy: jax.Array  # [J, B]
    t: jax.Array  # () simulated time (s)
    alive: jax.Array  # [B] bool: finite and within bounds so far
    modulation: jax.Array  # [S, B] multiplies each muscle's stretch (1 = as programmed)
    airborne_frames: jax.Array  # [B] frames so far in which no joint touched a surface
    peak_speed: jax.Array  # [B] largest centre-of-mass speed between frames so far (units/s)
    muscle_work: jax.Array  # [B] positive mechanical work of all muscles so far (mass units^2/s^2)


@struct.dataclass
class Diagnostics:
    """Physical diagnostics of a rollout, per body [B] (definitions in the module docstring)."""

    airborne_fraction: jax.Array  # share of 60 Hz frames with no joint within touch_distance
    peak_speed: jax.Array  # largest centre-of-mass speed (units/s)
    bone_error: jax.Array  # largest relative bone-length error at the final frame
    muscle_work: jax.Array  # positive muscle work per unit mass (units^2/s^2)


def muscle_stretch(params: SimParams, amplitude: jax.Array) -> jax.Array:
    """Relative stretch alpha of a muscle: `max_stretch * tanh(amplitude / amplitude_scale)`.

    Saturating, odd (a negative amplitude is the same stroke half a period later) and smooth, so
    gradients with respect to amplitude exist everywhere. Before the stroke-speed limit
    (`stroke_alpha`).
    """
    return params.max_stretch * jnp.tanh(amplitude / params.amplitude_scale)


def stroke_alpha(params: SimParams, amplitude: jax.Array, rest: jax.Array) -> jax.Array:
    """Relative stretch after the stroke-speed limit: `alpha * v / sqrt(v^2 + (L0 alpha w)^2)`,
    so the peak target speed `L0 * alpha' * w` stays below `stroke_speed` = v. Smooth, odd and
    strictly increasing in alpha, so distinct amplitudes stay distinct."""
    alpha = muscle_stretch(params, amplitude)
    omega = 2.0 * jnp.pi * params.frequency
    v = params.stroke_speed
    speed = rest * alpha * omega
    return alpha * v / jnp.sqrt(v * v + speed * speed)


def target_length(params: SimParams, body: Body, t: jax.Array, modulation: jax.Array) -> jax.Array:
    """Rest length of every spring at time t: L0 * (1 + alpha' sin(omega t + 2 pi phase)), for
    the body as the solve sees it (`solved_body`: a muscle held by a bone keeps L0)."""
    body = solved_body(params, body)
    omega = 2.0 * jnp.pi * params.frequency
    ramp = jnp.clip(t / params.ramp, 0.0, 1.0) if params.ramp > 0 else 1.0
    alpha = stroke_alpha(params, body.amplitude, body.rest) * body.is_muscle * modulation * ramp
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
    """Rest state at t = 0 (see `placement`), diagnostics zeroed."""
    x, y = placement(body, terrain)
    zeros = jnp.zeros_like(x)
    lanes = 0.0 * x[0]  # zeros per lane, derived from x: varying along a shard_map's data axis
    return SimState(
        x=x,
        y=y,
        vx=zeros,
        vy=zeros,
        t=jnp.zeros((), x.dtype),
        alive=jnp.asarray(body.valid, bool),
        modulation=jnp.ones_like(body.rest),
        airborne_frames=lanes,
        peak_speed=lanes,
        muscle_work=lanes,
    )


def total_mass(body: Body) -> jax.Array:
    """Mass of each body [B] (at least 1e-12, so an empty padding lane divides safely)."""
    return jnp.maximum(jnp.sum(body.mass, axis=0), 1e-12)


def centre_of_mass_x(body: Body, x: jax.Array) -> jax.Array:
    """Mass-weighted mean x per body [B] (0 for an empty padding lane). Works for y too."""
    return jnp.sum(body.mass * x, axis=0) / total_mass(body)


# ---- the step ------------------------------------------------------------------------------------


class Prepared(NamedTuple):
    """Per-body constants of a rollout, computed once instead of once per substep."""

    solve: SpringSolver
    stroke_sin: jax.Array  # [S, B] L0 * alpha' * cos(2 pi phase): coefficient of sin(omega t)
    stroke_cos: jax.Array  # [S, B] L0 * alpha' * sin(2 pi phase): coefficient of cos(omega t)
    alpha_tilde: jax.Array  # [S, B] XPBD compliance / h^2
    total_mass: jax.Array  # [B]
    is_muscle: jax.Array  # [S, B] the muscles the solve strokes (`solved_body`)


def muscles_beside_bones(body: Body) -> jax.Array:
    """[S, B] 1.0 for a muscle that joins the same two joints as a bone (`muscle_beside_bone`):
    the bone fixes their distance, so the muscle cannot change it."""
    lo = jnp.minimum(body.spring_i, body.spring_j)
    hi = jnp.maximum(body.spring_i, body.spring_j)
    bone = (body.spring_mask > 0) & (body.is_muscle == 0)
    same_pair = (lo[:, None] == lo[None, :]) & (hi[:, None] == hi[None, :])  # [S, S, B]
    beside = jnp.any(same_pair & bone[None, :], axis=1) & (body.is_muscle > 0)
    return beside.astype(body.is_muscle.dtype)


def solved_body(params: SimParams, body: Body) -> Body:
    """The body as the constraint solve sees it: with `muscle_beside_bone="held"`, a muscle
    beside a bone is passive (no stroke, rigid, no force cap), i.e. part of the bone."""
    if params.muscle_beside_bone != "held":
        return body
    return body.replace(is_muscle=body.is_muscle * (1.0 - muscles_beside_bones(body)))


def prepare(params: SimParams, body: Body) -> Prepared:
    """Hoist everything that depends only on the body out of the time loop. The muscle target
    uses sin(wt + p) = sin(wt) cos(p) + cos(wt) sin(p), so a substep costs two scalar
    transcendentals instead of one per spring. Strokes, compliances and the sweep are those of
    `solved_body`."""
    body = solved_body(params, body)
    alpha = stroke_alpha(params, body.amplitude, body.rest) * body.is_muscle * body.rest
    angle = 2.0 * jnp.pi * body.phase
    h = params.substep_dt
    compliance = jnp.where(body.is_muscle > 0, params.muscle_compliance, params.bone_compliance)
    return Prepared(
        solve=spring_solver(params, body),
        stroke_sin=alpha * jnp.cos(angle),
        stroke_cos=alpha * jnp.sin(angle),
        alpha_tilde=(compliance / (h * h)).astype(body.rest.dtype),
        total_mass=total_mass(body),
        is_muscle=body.is_muscle,
    )


def _target(params: SimParams, body: Body, prep: Prepared, t: jax.Array, mod: jax.Array):
    """`target_length` from the hoisted strokes."""
    omega = 2.0 * jnp.pi * params.frequency
    ramp = jnp.clip(t / params.ramp, 0.0, 1.0) if params.ramp > 0 else 1.0
    stroke = prep.stroke_sin * jnp.sin(omega * t) + prep.stroke_cos * jnp.cos(omega * t)
    return body.rest + (ramp * mod) * stroke


def _lengths(body: Body, x: jax.Array, y: jax.Array) -> jax.Array:
    """Spring lengths [S, B]. Outside the substep loops (per frame) `take_along_axis` is the fast
    gather: the flat 1-D gather of `_take` ran 4x slower there (measured; XLA CPU)."""
    dx = _gather(x, body.spring_j) - _gather(x, body.spring_i)
    dy = _gather(y, body.spring_j) - _gather(y, body.spring_i)
    return jnp.sqrt(dx * dx + dy * dy + 1e-12)


def _damp_deformation(
    params: SimParams, body: Body, prep: Prepared, state: SimState
) -> tuple[jax.Array, jax.Array]:
    """Velocities with their non-rigid part decayed by exp(-damping * h): tissue losses.
    (Applied every substep: once per frame saved ~8% of the step but left float32 rounding a
    0.5% bias on the free-flight acceleration, which the per-substep rigid-part split removes.)

    The rigid part (centre-of-mass velocity plus the best-fit spin, omega = L / I about the
    centre of mass) is kept, so damping changes neither momentum nor angular momentum: a body in
    free flight still follows the gravity parabola, and a rolling wheel is not braked by it.
    """
    keep = jnp.exp(-params.damping * params.substep_dt)
    m = body.mass
    vcx = jnp.sum(m * state.vx, axis=0) / prep.total_mass
    vcy = jnp.sum(m * state.vy, axis=0) / prep.total_mass
    rx = state.x - jnp.sum(m * state.x, axis=0) / prep.total_mass
    ry = state.y - jnp.sum(m * state.y, axis=0) / prep.total_mass
    spin = jnp.sum(m * (rx * (state.vy - vcy) - ry * (state.vx - vcx)), axis=0)
    inertia = jnp.sum(m * (rx * rx + ry * ry), axis=0)
    omega = spin / jnp.maximum(inertia, 1e-9)
    rigid_x = vcx - omega * ry
    rigid_y = vcy + omega * rx
    return rigid_x + (state.vx - rigid_x) * keep, rigid_y + (state.vy - rigid_y) * keep


def substep(
    params: SimParams, body: Body, terrain: Terrain, state: SimState, prep: Prepared
) -> tuple[SimState, jax.Array]:
    """One XPBD substep of length h = dt / substeps (`prep` from `prepare`).

    Returns the new state and the springs' multipliers `lam` [S, B] (a spring's force over the
    substep is `lam / h^2` along it, tension when `lam < 0`), from which `_frame` counts the
    muscles' work.
    """
    h = params.substep_dt
    m = body.joint_mask
    vx, vy = _damp_deformation(params, body, prep, state)
    vy = vy - params.gravity * h
    if params.air_drag > 0:
        drag = jnp.exp(-params.air_drag * h)
        vx, vy = vx * drag, vy * drag
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
        x, y = contacts(params, terrain, body, x, y, x_start, y_start)
        return x, y, lam

    lam0 = jnp.zeros_like(body.rest)
    x, y, lam = jax.lax.fori_loop(0, params.iterations, iteration, (x, y, lam0))
    new = state.replace(x=x, y=y, vx=(x - x_start) / h, vy=(y - y_start) / h, t=t_next)
    return new, lam


def step(
    params: SimParams, body: Body, state: SimState, terrain: Terrain, prep: Prepared | None = None
) -> SimState:
    """One frame (dt) = `substeps` XPBD substeps; freezes bodies that leave the finite world.
    `prep` (from `prepare`) saves rebuilding the per-body constants when stepping repeatedly."""
    prep = prepare(params, body) if prep is None else prep
    return _frame(params, body, terrain, prep, state)


def _frame(
    params: SimParams, body: Body, terrain: Terrain, prep: Prepared, state: SimState
) -> SimState:
    def one(_: int, carry: tuple[SimState, jax.Array]) -> tuple[SimState, jax.Array]:
        s, lam_sum = carry
        s, lam = substep(params, body, terrain, s, prep)
        return s, lam_sum + lam

    new, lam_sum = jax.lax.fori_loop(0, params.substeps, one, (state, jnp.zeros_like(body.rest)))
    # Muscle work of the frame, sampled at 60 Hz like every diagnostic: the muscle's mean force
    # over the frame's substeps (sum of lam / substeps / h^2) times its length change over the
    # frame; the positive part of each muscle counts. (Per substep it cost two spring-length
    # gathers per substep, a third of the step's time.)
    h = params.substep_dt
    stretch = _lengths(body, new.x, new.y) - _lengths(body, state.x, state.y)
    work = jnp.maximum(lam_sum * stretch, 0.0) * prep.is_muscle / (params.substeps * h * h)
    muscle_work = state.muscle_work + jnp.sum(work, axis=0)
    ok = (
        jnp.all(jnp.isfinite(new.x) & jnp.isfinite(new.y), axis=0)
        & jnp.all((jnp.abs(new.x) < params.max_coordinate), axis=0)
        & jnp.all((jnp.abs(new.y) < params.max_coordinate), axis=0)
        & jnp.isfinite(muscle_work)
    )  # finite positions at both ends of the last substep make its velocities finite
    alive = state.alive & ok

    def pick(a_new: jax.Array, a_old: jax.Array) -> jax.Array:
        return jnp.where(alive, a_new, a_old)

    # Diagnostics of the frame, on the state it ends in (frozen bodies keep their last values).
    x, y = pick(new.x, state.x), pick(new.y, state.y)
    step_x = centre_of_mass_x(body, x - state.x)
    step_y = centre_of_mass_x(body, y - state.y)
    speed = jnp.sqrt(step_x * step_x + step_y * step_y) / params.dt
    airborne = ~touching(params, terrain, body, x, y)
    zero = jnp.zeros_like(state.vx)
    return new.replace(
        x=x,
        y=y,
        vx=pick(new.vx, zero),
        vy=pick(new.vy, zero),
        alive=alive,
        airborne_frames=state.airborne_frames + airborne.astype(x.dtype),
        peak_speed=jnp.maximum(state.peak_speed, jnp.where(alive, speed, 0.0)),
        muscle_work=pick(muscle_work, state.muscle_work),
    )


@tracing.checked
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
    check_rollout_args(body, terrain, state)
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


def check_rollout_args(body: Body, terrain: Terrain, state: SimState | None) -> None:
    """Shape contract of `rollout` (chex, at trace time): see `body.check_body`."""
    check_body(body, "physics.rollout")
    check_terrain(terrain, body.batch_size, "physics.rollout")
    if state is not None:
        for name in ("x", "y", "vx", "vy"):
            message = f"physics.rollout: state.{name} must be body.x0's [J, B] {body.x0.shape}"
            chex.assert_shape(getattr(state, name), body.x0.shape, custom_message=message)
        chex.assert_shape(
            state.alive, (body.batch_size,), custom_message="physics.rollout: state.alive"
        )


def bone_length_error(body: Body, x: jax.Array, y: jax.Array) -> jax.Array:
    """Largest relative length error |L - L0| / L0 over passive connections, per body [B]."""
    dx = _gather(x, body.spring_j) - _gather(x, body.spring_i)
    dy = _gather(y, body.spring_j) - _gather(y, body.spring_i)
    length = jnp.sqrt(dx * dx + dy * dy)
    bone = body.spring_mask * (1.0 - body.is_muscle)
    err = jnp.abs(length - body.rest) / jnp.maximum(body.rest, 1e-6) * bone
    return jnp.max(err, axis=0)


def diagnostics(params: SimParams, body: Body, start: SimState, final: SimState) -> Diagnostics:
    """The diagnostics of the rollout from `start` to `final` (see `Diagnostics`)."""
    frames = jnp.maximum(jnp.round((final.t - start.t) / params.dt), 1.0)
    return Diagnostics(
        airborne_fraction=(final.airborne_frames - start.airborne_frames) / frames,
        peak_speed=final.peak_speed,
        bone_error=bone_length_error(body, final.x, final.y),
        muscle_work=(final.muscle_work - start.muscle_work) / total_mass(body),
    )


def simulate_dx(params: SimParams, body: Body, terrain: Terrain) -> tuple[jax.Array, jax.Array]:
    """(dx [B], alive [B]): centre-of-mass travel along x over `params.seconds`."""
    start = init_state(body, terrain)
    final, _ = rollout(params, body, terrain, state=start)
    dx = centre_of_mass_x(body, final.x) - centre_of_mass_x(body, start.x)
    return jnp.where(final.alive, dx, 0.0), final.alive
