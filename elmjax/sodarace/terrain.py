"""Terrains: ground, walls and ceiling as pure functions of x.

A `Terrain` is a pytree of a few numbers. Its numeric fields are arrays that broadcast against the
simulator's batch-last `[joints, batch]` positions, so one terrain serves a whole batch (scalars)
or every body gets its own (shape `[batch]`): terrains are batched like bodies.

The ground is `floor(x)`, a continuous, piecewise-smooth height, so the contact normal follows
from its slope (`floor_and_slope`): a joint that walks into a stair riser is pushed back, not
lifted onto the step. Walls are vertical planes at `wall_left` / `wall_right`, the tunnel's
ceiling is `floor(x) + ceiling`; "no wall" and "no ceiling" are +-`FAR`.

Every terrain starts flat under the walker (floor(0) = 0, zero slope at 0 for the smooth ones),
and `anchor` says where the walker is placed along x: centred on 0, or with its left (right) edge
at 0 next to a wall at `-WALL_GAP` (`+WALL_GAP`). `goal` is the direction the walker is asked to
travel: 0 (either way, fitness |dx|), +1 (right, away from a LEFT-WALL) or -1 (left).

The paper's stage-3 terrains are LEFT-WALL, RIGHT-WALL and TUNNEL; hills, bumpy and stairs are
the usual rough-ground variants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct

#: A coordinate beyond any reachable position (walker coordinates are within +-100 units and the
#: simulator invalidates bodies beyond 1e4); used for "no wall" / "no ceiling".
FAR = 1.0e6
#: Gap (units) between a wall and the walker's nearest joint at the start: close enough that
#: walking into the wall is blocked at once, far enough that the first muscle stroke is free.
WALL_GAP = 2.0


@struct.dataclass
class Terrain:
    """Ground profile parameters (units: simulator length units, see physics.SimParams)."""

    hills_amplitude: jax.Array  # height of the rolling hills (units)
    hills_wavelength: jax.Array  # their wavelength (units)
    bumps_amplitude: jax.Array  # height of the short irregular bumps (units)
    bumps_wavelength: jax.Array  # base wavelength of the bumps (units)
    stair_height: jax.Array  # rise of one stair (units); stairs climb away from x = 0
    stair_width: jax.Array  # run of one stair (units)
    wall_left: jax.Array  # x of the left wall (units), -FAR for none
    wall_right: jax.Array  # x of the right wall (units), +FAR for none
    ceiling: jax.Array  # ceiling height above the floor (units), FAR for none
    name: str = struct.field(pytree_node=False, default="flat")
    goal: int = struct.field(pytree_node=False, default=0)
    anchor: str = struct.field(pytree_node=False, default="center")
    #: Which parts of the profile exist (static, so a flat terrain costs no transcendental ops):
    #: any of "hills", "bumps", "stairs", "walls", "ceiling".
    features: tuple[str, ...] = struct.field(
        pytree_node=False, default=("hills", "bumps", "stairs", "walls", "ceiling")
    )


def check_terrain(terrain: Terrain, batch: int, where: str) -> None:
    """Each numeric field is a scalar (one terrain for the batch) or [batch] (one per body),
    and floating; checked with chex while tracing, naming the field (see `body.check_body`)."""
    for field in dataclasses.fields(terrain):
        if not field.metadata.get("pytree_node", True):
            continue  # static metadata (name, goal, anchor, features)
        name, value = field.name, getattr(terrain, field.name)
        message = f"{where}: terrain.{name} must be a scalar or [B={batch}]"
        if jnp.ndim(value) == 0:
            continue
        chex.assert_shape(value, (batch,), custom_message=message)
        chex.assert_type(value, float, custom_message=f"{where}: terrain.{name} must be floating")


def _make(name: str, goal: int = 0, anchor: str = "center", **values: float) -> Terrain:
    fields = dict(
        hills_amplitude=0.0,
        hills_wavelength=60.0,
        bumps_amplitude=0.0,
        bumps_wavelength=8.0,
        stair_height=0.0,
        stair_width=10.0,
        wall_left=-FAR,
        wall_right=FAR,
        ceiling=FAR,
    )
    fields.update(values)
    arrays = {k: jnp.asarray(v, jnp.float32) for k, v in fields.items()}
    present = {
        "hills": fields["hills_amplitude"] != 0,
        "bumps": fields["bumps_amplitude"] != 0,
        "stairs": fields["stair_height"] != 0,
        "walls": abs(fields["wall_left"]) < FAR or abs(fields["wall_right"]) < FAR,
        "ceiling": fields["ceiling"] < FAR,
    }
    features = tuple(k for k, v in present.items() if v)
    return Terrain(**arrays, name=name, goal=goal, anchor=anchor, features=features)


def flat() -> Terrain:
    """Stage 1 of the paper: flat ground, fitness |dx|."""
    return _make("flat")


def hills() -> Terrain:
    """Rolling hills 4 units high, 60 units long: a slope of up to ~12 degrees."""
    return _make("hills", hills_amplitude=4.0, hills_wavelength=60.0)


def bumpy() -> Terrain:
    """Short irregular bumps 1 unit high, a few units apart: trips feet, not bodies."""
    return _make("bumpy", bumps_amplitude=1.0, bumps_wavelength=8.0)


def stairs() -> Terrain:
    """Stairs of 1.5 units rise and 10 units run, climbing away from the start both ways."""
    return _make("stairs", stair_height=1.5, stair_width=10.0)


def left_wall() -> Terrain:
    """A wall just left of the walker; the goal is to travel right (dx > 0)."""
    return _make("left_wall", goal=1, anchor="left", wall_left=-WALL_GAP)


def right_wall() -> Terrain:
    """A wall just right of the walker; the goal is to travel left (dx < 0)."""
    return _make("right_wall", goal=-1, anchor="right", wall_right=WALL_GAP)


def tunnel() -> Terrain:
    """A ceiling 12 units above flat ground: tall walkers must crouch to move."""
    return _make("tunnel", ceiling=12.0)


TERRAINS: dict[str, Callable[[], Terrain]] = {
    "flat": flat,
    "hills": hills,
    "bumpy": bumpy,
    "stairs": stairs,
    "left_wall": left_wall,
    "right_wall": right_wall,
    "tunnel": tunnel,
}


def get_terrain(name: str | Terrain) -> Terrain:
    """Terrain by name (case-insensitive, '-' or '_'); a Terrain passes through."""
    if isinstance(name, Terrain):
        return name
    key = str(name).lower().replace("-", "_")
    if key not in TERRAINS:
        raise ValueError(f"unknown terrain {name!r}; choose one of {sorted(TERRAINS)}")
    return TERRAINS[key]()


# ---- profile -------------------------------------------------------------------------------------


def floor_height(terrain: Terrain, x: jax.Array) -> jax.Array:
    """Ground height at x. Continuous everywhere; smooth except at stair corners."""
    two_pi = 2.0 * jnp.pi
    h = jnp.zeros_like(x)
    if "hills" in terrain.features:
        phase = two_pi * x / terrain.hills_wavelength
        h = h + terrain.hills_amplitude * 0.5 * (1.0 - jnp.cos(phase))
    if "bumps" in terrain.features:
        # Incommensurate wavelengths so the bumps never repeat within a run; each term starts
        # at 0 with zero slope at x = 0 (1 - cos), so the walker starts on level ground.
        k = two_pi / terrain.bumps_wavelength
        bumps = (1.0 - jnp.cos(k * x)) + 0.5 * (1.0 - jnp.cos(1.618 * k * x))
        h = h + terrain.bumps_amplitude * bumps / 3.0
    if "stairs" in terrain.features:
        # A linear riser over the last `riser` fraction of each run, so the profile is
        # continuous and its slope (steep on the riser) turns the contact normal sideways.
        riser = 0.1
        u = jnp.abs(x) / terrain.stair_width
        whole = jnp.floor(u)
        rise = jnp.clip((u - whole - (1.0 - riser)) / riser, 0.0, 1.0)
        h = h + terrain.stair_height * (whole + rise)
    return h


def floor_and_slope(terrain: Terrain, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(floor(x), d floor / dx), elementwise, by forward-mode differentiation."""
    return jax.jvp(lambda z: floor_height(terrain, z), (x,), (jnp.ones_like(x),))


def ceiling_height(terrain: Terrain, x: jax.Array) -> jax.Array:
    """Ceiling height at x (FAR-ish when there is none)."""
    return floor_height(terrain, x) + terrain.ceiling
