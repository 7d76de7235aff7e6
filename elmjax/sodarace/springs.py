"""The spring constraint solve of one XPBD substep: a Gauss-Seidel sweep (the default) or a
Jacobi iteration over every spring of a batch-last body.

A solver is built once per rollout from the body (`spring_solver(params, body)`: end weights,
indices, one-hot rows) and called once per substep as `(x, y, lam, target, alpha_tilde) -> (x, y,
lam)`. Both move the two ends of every spring equal and opposite (weighted by inverse mass), so
no spring moves the centre of mass, and both clamp a muscle's multiplier to its force cap. Why
Gauss-Seidel is the default, and the measured costs of each form, are in `physics`'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from elmjax.sodarace.body import Body
from elmjax.sodarace.params import SimParams


def _flat_index(idx: jax.Array, lanes: int) -> jax.Array:
    """Flat positions [S * B] of `a[idx[s, b], b]` in a batch-last `a [J, B]` seen as 1-D."""
    return (idx * lanes + jnp.arange(lanes, dtype=idx.dtype)).reshape(-1)


def _take(a: jax.Array, flat: jax.Array) -> jax.Array:
    """`a[idx[s, b], b]` for batch-last `a [J, B]`, from `flat = _flat_index(idx, B)`: a 1-D
    gather. Inside the constraint iterations, with `flat` computed once per rollout
    (`spring_solver`), XLA's CPU backend runs it ~20% faster than `take_along_axis`'s 2-D
    gather; with the index arithmetic inside the time loop it ran 3x slower (measured)."""
    return jnp.asarray(a).reshape(-1)[flat].reshape(-1, a.shape[-1])


def _gather(a: jax.Array, idx: jax.Array) -> jax.Array:
    """a[idx[s, b], b] for batch-last a [J, B] and idx [S, B] (outside the time loop)."""
    return jnp.take_along_axis(a, idx, axis=0)


@jax.custom_jvp
def _sums(*rows: jax.Array) -> tuple[jax.Array, ...]:
    """`sum(row, axis=0)` of every row as one variadic XLA reduce: one pass over all rows.

    Why (the dense sweep sums x and y over the joints for every spring): two `jnp.sum`s are two
    passes, and one `jnp.sum` of x and y stacked into [2, J, B] went to YNNPACK in any program
    compiled without `env.COMPILER_OPTIONS` (XLA's CPU backend hands it every single-operand
    reduce of >= 4096 elements, here from 128 lanes on; a Brax loop or a user's own
    `jax.jit(rollout)`), where the sweep ran 12x slower. A variadic reduce is never handed
    over, so this one is fast whatever the options. Same floats as `jnp.sum` (tested bitwise).
    The derivative is the rows' `jnp.sum`s, so autodiff sees plain sums."""
    zero = jnp.zeros((), rows[0].dtype)
    add = lambda p, q: tuple(a + b for a, b in zip(p, q))  # noqa: E731
    return tuple(jax.lax.reduce(rows, (zero,) * len(rows), add, (0,)))


@_sums.defjvp
def _sums_jvp(primals, tangents):
    return _sums(*primals), tuple(jnp.sum(t, axis=0) for t in tangents)


SpringSolver = Callable[
    [jax.Array, jax.Array, jax.Array, jax.Array, jax.Array],
    tuple[jax.Array, jax.Array, jax.Array],
]


def spring_solver(params: SimParams, body: Body) -> SpringSolver:
    """The constraint sweep `params.solver` names: `gauss_seidel_solver` or `jacobi_solver`."""
    if params.solver == "gauss_seidel":
        return gauss_seidel_solver(params, body)
    return jacobi_solver(params, body)


#: Buckets up to this many joints and springs run the Gauss-Seidel sweep as a scan over springs
#: reading and writing dense per-spring rows [J, B] (no gathers or scatters); larger ones scan
#: over springs with per-lane gathers and scatters (dense rows would cost J x S x B floats each).
#: Same arithmetic either way. Why a scan with the per-spring constants as its inputs and the new
#: multipliers as its outputs: the earlier fori_loop read and wrote `lam[s]` in a carried [S, B]
#: array, and XLA copied that whole array twice per spring (O(S^2 B) per sweep; 1.6x the CPU
#: time on CPPN-Mutable's (16, 48) bucket, measured). Unrolling (fully or by 2-8) gained little
#: over the scan and compiled up to 5x slower.
GS_DENSE_MAX_JOINTS = 24
GS_DENSE_MAX_SPRINGS = 64


def gauss_seidel_solver(params: SimParams, body: Body) -> SpringSolver:
    """One Gauss-Seidel XPBD sweep: springs one after another, each seeing its predecessors'
    corrections, with the full XPBD step `relaxation * dlam` (no division by the degree).

    Why: Jacobi must divide each spring's step by the joints' degree to stay stable, so a joint
    with many springs converges in ~degree times as many iterations, and an unconverged solve
    leaves bones and muscles soft by an amount that depends on the substep count, which evolution
    exploited (experiments/RESULTS.md, physics audit). A sweep in order converges a rigid truss
    in a few passes whatever the degrees. Momentum: each spring still moves its two ends equal
    and opposite (`-w_i dlam n`, `+w_j dlam n`), so no spring moves the centre of mass; `lam`
    accumulates the applied increment and muscles' `lam` is clamped to `muscle_force * h^2`.
    The order is the walker's connection order: deterministic, and the same for a mirror image.
    """
    J, B = body.x0.shape
    S = body.rest.shape[0]
    dtype = body.inv_mass.dtype
    wi = _gather(body.inv_mass, body.spring_i) * body.spring_mask  # [S, B]
    wj = _gather(body.inv_mass, body.spring_j) * body.spring_mask
    h = params.substep_dt
    cap = jnp.where(body.is_muscle > 0, params.muscle_force * h * h, jnp.inf).astype(dtype)
    per_spring = (wi + wj, params.relaxation * jnp.asarray(body.spring_mask), cap)

    def spring(lam_s, target_s, at_s, w_sum_s, scale_s, cap_s, dx, dy):
        """The XPBD step of one spring from its ends' offset: (x-step, y-step, new lam), where
        the joints move by -w_i * step (end i) and +w_j * step (end j)."""
        length = jnp.sqrt(dx * dx + dy * dy + 1e-12)
        denom = w_sum_s + at_s
        dlam = -(length - target_s + at_s * lam_s) / jnp.where(denom > 0, denom, 1.0)
        new = jnp.clip(lam_s + scale_s * dlam, -cap_s, cap_s)
        p = (new - lam_s) / length
        return p * dx, p * dy, new

    if J <= GS_DENSE_MAX_JOINTS and S <= GS_DENSE_MAX_SPRINGS:
        joints = jnp.arange(J, dtype=body.spring_i.dtype)[None, :, None]
        at_i = (body.spring_i[:, None, :] == joints).astype(dtype)  # [S, J, B] one-hot
        at_j = (body.spring_j[:, None, :] == joints).astype(dtype)
        rows = (at_j - at_i, at_j * wj[:, None] - at_i * wi[:, None])  # ends' offset, move

        def one_dense(xy, spring_s):
            lam_s, target_s, at_s, w_sum_s, scale_s, cap_s, diff_s, push_s = spring_s
            dx, dy = _sums(diff_s * xy[0], diff_s * xy[1])
            px, py, new = spring(lam_s, target_s, at_s, w_sum_s, scale_s, cap_s, dx, dy)
            return xy + push_s * jnp.stack([px, py])[:, None], new

        def solve_dense(x, y, lam, target, alpha_tilde):
            xy, lam = jax.lax.scan(
                one_dense,
                jnp.stack([x, y]),
                (lam, target, alpha_tilde, *per_spring, *rows),
            )
            return xy[0], xy[1], lam

        return solve_dense

    fi, fj = (
        _flat_index(body.spring_i, B).reshape(S, B),
        _flat_index(body.spring_j, B).reshape(S, B),
    )

    def one_flat(xy, spring_s):
        lam_s, target_s, at_s, w_sum_s, scale_s, cap_s, i, j, wi_s, wj_s = spring_s
        x, y = xy
        px, py, new = spring(lam_s, target_s, at_s, w_sum_s, scale_s, cap_s,
                             x[j] - x[i], y[j] - y[i])  # fmt: skip
        x = x.at[i].add(-wi_s * px).at[j].add(wj_s * px)
        return (x, y.at[i].add(-wi_s * py).at[j].add(wj_s * py)), new

    def solve_flat(x, y, lam, target, alpha_tilde):
        (x, y), lam = jax.lax.scan(
            one_flat,
            (x.reshape(-1), y.reshape(-1)),
            (lam, target, alpha_tilde, *per_spring, fi, fj, wi, wj),
        )
        return x.reshape(J, B), y.reshape(J, B), lam

    return solve_flat


def jacobi_solver(params: SimParams, body: Body) -> SpringSolver:
    """One Jacobi XPBD iteration over all springs: `(x, y, lam, target, alpha_tilde) -> (x, y,
    lam)`, with everything that depends only on the body (end weights, indices) computed once.

    Momentum: spring s moves its ends by `-w_i * k_s * dlam * n` and `+w_j * k_s * dlam * n`
    with one factor `k_s = relaxation / max(deg_i, deg_j)`; mass times displacement sums to zero,
    so no spring moves the centre of mass. `lam` accumulates `k_s * dlam`, the increment actually
    applied, and muscles' `lam` is clamped to `muscle_force * h^2` (the force cap).

    Layout: gather both ends of every spring (flat per-lane indices), then scatter-add the
    corrections back with one merged flat scatter; work ~ springs. (A dense all-pairs variant,
    contracting with each body's [S, J] incidence matrix, was 15x slower here even at 16 joints:
    XLA materialised the [S, J, B] products.)
    """
    J, B = body.x0.shape
    fi, fj = _flat_index(body.spring_i, B), _flat_index(body.spring_j, B)
    wi, wj = _take(body.inv_mass, fi), _take(body.inv_mass, fj)
    w_sum = wi + wj
    degree = jnp.maximum(_take(body.degree, fi), _take(body.degree, fj))
    scale = params.relaxation / degree * body.spring_mask
    h = params.substep_dt
    cap = jnp.where(body.is_muscle > 0, params.muscle_force * h * h, jnp.inf).astype(w_sum.dtype)
    flat = jnp.concatenate([fi, fj])
    signed_w = jnp.concatenate([-wi, wj], axis=0)

    def ends(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _take(x, fj) - _take(x, fi), _take(y, fj) - _take(y, fi)

    def apply(px: jax.Array, py: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Both ends of every spring: one 1-D scatter-add per axis.
        def scatter(p: jax.Array) -> jax.Array:
            vals = (jnp.concatenate([p, p]) * signed_w).reshape(-1)
            return jnp.zeros((J * B,), p.dtype).at[flat].add(vals).reshape(J, B)

        return scatter(px), scatter(py)

    def solve(
        x: jax.Array, y: jax.Array, lam: jax.Array, target: jax.Array, alpha_tilde: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        dx, dy = ends(x, y)
        length = jnp.sqrt(dx * dx + dy * dy + 1e-12)
        c = length - target
        denom = w_sum + alpha_tilde
        dlam = -(c + alpha_tilde * lam) / jnp.where(denom > 0, denom, 1.0)
        new_lam = jnp.clip(lam + scale * dlam, -cap, cap)
        applied = new_lam - lam
        cx, cy = apply(applied * dx / length, applied * dy / length)
        return x + cx, y + cy, new_lam

    return solve
