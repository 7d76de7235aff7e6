"""Controllers for evolved bodies: SodaraceEnv under Brax's training API and agents."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elmjax.rl.controllers import ControllerBudget, brax_compat, compare, episode_distance, make_env
from elmjax.sodarace.env import simulate_walkers
from elmjax.sodarace.params import SimParams
from elmjax.sodarace.seeds import load_seed
from elmjax.sodarace.walker import walker_creator


@pytest.fixture(scope="module")
def galloper():
    ns = {"walker_creator": walker_creator}
    exec(load_seed("galloper"), ns)  # a trusted seed, not a model's program
    return ns["make_walker"]().to_dict()


def test_env_runs_under_brax_training_wrappers_in_a_scan(galloper):
    """Brax's trainers scan `step` over the wrapped env: the state's pytree (metrics included:
    the wrappers add their own keys) must be the same before and after a step."""
    from brax.envs import training

    env = training.wrap(make_env(galloper, "flat", 0.2), episode_length=4)
    state = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(0), 2))  # Brax: raw keys

    def body(s, _):
        return env.step(s, jnp.zeros((2, env.action_size))), None

    final, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=6))(state)  # crosses a reset
    assert set(final.metrics) == set(state.metrics) and "dx" in final.metrics
    assert np.isfinite(np.asarray(final.obs)).all()


@pytest.mark.parametrize("terrain, rel", [("flat", 5e-3), ("right_wall", 5e-2)])
def test_open_loop_episode_is_the_scored_distance(galloper, terrain, rel):
    """Zero actions = the body's own muscles: the episode's distance toward the goal is the
    distance the scoring simulator reports for the same time (the goal's sign included). The
    env steps frame by frame and sums each frame's travel, the scorer runs one scan: float
    order differs, and pushing against a wall amplifies that (measured 2% after 1 s; on flat
    ground 0.13% under physics version 3)."""
    env = make_env(galloper, terrain, 1.0)
    got = episode_distance(env, None, env.params.frames, jax.random.key(0))
    dx, valid, _, _ = simulate_walkers([galloper], terrain, SimParams(seconds=1.0), mesh=None)
    assert valid[0]
    goal = env.terrain.goal or 1
    assert got == pytest.approx(goal * float(dx[0]), rel=rel, abs=1e-3)


def test_brax_compat_is_scoped():
    with brax_compat():
        out = jax.device_put_replicated({"a": jnp.ones(3)}, jax.local_devices()[:1])
        assert out["a"].shape == (1, 3)
    with pytest.raises(AttributeError):
        jax.device_put_replicated  # noqa: B018


@pytest.mark.slow
def test_ppo_and_apg_train_controllers_for_a_body(galloper):
    budget = ControllerBudget(
        seconds=0.5, ppo_timesteps=640, ppo_envs=8, apg_updates=2, apg_envs=2, apg_horizon=10
    )
    (row,) = compare(galloper, ["flat"], budget)
    assert row["terrain"] == "flat" and row["frames"] == 30
    for name in ("open_loop", "ppo", "apg"):
        assert row[name] is not None and math.isfinite(row[name]), row.get(f"{name}_error")
