"""Terrains: pure profiles with known values, and what bodies do against walls and ceilings."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from elmjax.sodarace.env import Sodarace
from elmjax.sodarace.physics import SimParams
from elmjax.sodarace.seeds import load_seed
from elmjax.sodarace.terrain import (
    TERRAINS,
    WALL_GAP,
    Terrain,
    ceiling_height,
    floor_and_slope,
    floor_height,
    get_terrain,
)
from elmjax.sodarace.walker import check_walker, walker_creator


def crawler(direction: float = 1.0):
    """The Galloper seed, mirrored so that it travels toward `direction` in the first 4 s (it
    goes +x there under physics versions 5 (15.4 units, all in the first 2 s; then it rocks in
    place), 4 (57 units) and 1, -x under versions 2 and 3 (10.5 units at version 3; at 3 s
    version 3 has it still rocking, +1.5))."""
    g = {"walker_creator": walker_creator}
    exec(load_seed("galloper"), g)
    w = check_walker(g["make_walker"]())
    return {**w, "joints": [[direction * x, y] for x, y in w["joints"]]}


@pytest.mark.parametrize("name", sorted(TERRAINS))
def test_every_terrain_starts_level_and_is_continuous(name):
    t = get_terrain(name)
    h, slope = floor_and_slope(t, jnp.asarray([0.0]))
    assert float(h[0]) == 0.0 and float(slope[0]) == 0.0
    x = jnp.linspace(-200.0, 200.0, 40001)
    step = np.abs(np.diff(np.asarray(floor_height(t, x))))
    assert step.max() < 0.2  # 0.01-unit steps: continuous (stair risers are steep ramps)
    assert np.isfinite(np.asarray(ceiling_height(t, x))).all()


def test_profiles_have_their_documented_shapes():
    assert float(floor_height(get_terrain("hills"), jnp.asarray(30.0))) == pytest.approx(4.0)
    stairs = get_terrain("stairs")
    assert float(floor_height(stairs, jnp.asarray(15.0))) == pytest.approx(1.5)
    assert float(floor_height(stairs, jnp.asarray(-25.0))) == pytest.approx(3.0)
    _, riser = floor_and_slope(stairs, jnp.asarray(9.5))
    assert float(riser) == pytest.approx(1.5 / 1.0)  # 1.5 rise over the last 10% of the run
    assert float(ceiling_height(get_terrain("tunnel"), jnp.asarray(3.0))) == pytest.approx(12.0)
    assert get_terrain("left-wall").goal == 1 and get_terrain("RIGHT_WALL").goal == -1
    assert get_terrain("flat").goal == 0 and get_terrain("flat").features == ()
    with pytest.raises(ValueError, match="unknown terrain"):
        get_terrain("lava")


def test_terrain_is_batched_like_bodies():
    hills = get_terrain("hills")
    batched = hills.replace(hills_amplitude=jnp.asarray([1.0, 2.0, 4.0]))
    assert isinstance(batched, Terrain)
    x = jnp.full((5, 3), 30.0)  # [joints, batch]
    h = np.asarray(floor_height(batched, x))
    chex.assert_trees_all_close(h[0], np.float32([1.0, 2.0, 4.0]), rtol=1e-6)


PARAMS = SimParams(seconds=4.0)


def test_walls_block_and_set_the_goal_direction():
    towards_left = crawler(-1.0)
    free = Sodarace(params=PARAMS, chunk=4).evaluate([towards_left, crawler(1.0)])
    left_going, right_going = free.extras["dx"]
    assert left_going < -1.0 and right_going > 1.0  # the crawlers do crawl both ways
    walled = Sodarace("left_wall", params=PARAMS, chunk=4).evaluate([towards_left, crawler(1.0)])
    # Against the wall the left-crawler gets (almost) nowhere and scores dx toward the goal (+x).
    assert walled.extras["dx"][0] > -WALL_GAP - 0.5
    assert walled.fitness[1] == walled.extras["dx"][1] > 1.0
    mirrored = Sodarace("right_wall", params=PARAMS, chunk=4).evaluate([crawler(1.0)])
    assert mirrored.extras["dx"][0] < WALL_GAP + 0.5
    assert mirrored.fitness[0] == -mirrored.extras["dx"][0]


def test_tunnel_ceiling_holds_tall_walkers_down():
    wc = walker_creator()
    a, b, c = wc.add_joint(0, 0), wc.add_joint(4, 0), wc.add_joint(2, 20)  # 20 tall, ceiling 12
    for p, q in ((a, b), (b, c), (c, a)):
        wc.add_muscle(p, q, 2.0, 0.0)
    tall = check_walker(wc.get_walker())
    from elmjax.sodarace.body import pack
    from elmjax.sodarace.physics import rollout

    body = pack([tall])
    final, _ = rollout(PARAMS, body, get_terrain("tunnel"), frames=60)
    assert float(final.y[:3].max()) <= 12.0 + 1e-3
    assert bool(final.alive[0])
