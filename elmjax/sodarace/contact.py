"""How joints meet the terrain: contact projection with Coulomb friction, and the touch test.

This stands alone because it is the one place the physics reads the terrain's shape (floor
height and slope, ceiling, walls) at a joint: the step (`physics.substep`) projects joints out of
every surface with `contacts`, and the per-frame diagnostics (`physics.rollout`) count airborne
frames with `touching`. Both read `SimParams.contact` ("hard" or "smooth", the differentiable
softplus variant), `friction` and `touch_distance`, and nothing else of a rollout, so the contact
model can be read, tested and changed without the integrator around it. `physics` re-exports
`touching`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from elmjax.sodarace.body import Body
from elmjax.sodarace.params import SimParams
from elmjax.sodarace.terrain import Terrain, ceiling_height, floor_and_slope


def touching(
    params: SimParams, terrain: Terrain, body: Body, x: jax.Array, y: jax.Array
) -> jax.Array:
    """[B] bool: some real joint is within `touch_distance` of the floor, ceiling or a wall."""
    h, slope = floor_and_slope(terrain, x)
    gap = (y - h) / jnp.sqrt(1.0 + slope * slope)
    near = gap <= params.touch_distance
    if "ceiling" in terrain.features:
        near = near | (ceiling_height(terrain, x) - y <= params.touch_distance)
    if "walls" in terrain.features:
        near = near | (x - terrain.wall_left <= params.touch_distance)
        near = near | (terrain.wall_right - x <= params.touch_distance)
    return jnp.any(near & (body.joint_mask > 0), axis=0)


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


def contacts(
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
