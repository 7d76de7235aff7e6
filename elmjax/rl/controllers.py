"""Closed-loop muscle controllers for an evolved body, trained with Brax's agents.

An evolved walker moves by open-loop muscles: each oscillates at its programmed amplitude and
phase whatever happens. `SodaraceEnv` (elmjax.sodarace.brax_env) lets a controller scale each
muscle's stroke every frame from what the body senses (joint positions relative to the centre
of mass, velocities, the muscle clock). Here the same body gets two controllers:

- `brax.training.agents.ppo` (model-free; trained on the scoring physics, hard contact);
- `brax.training.agents.apg` (analytic policy gradients: backpropagation through the
  differentiable simulator over short horizons; trained with smooth contact, whose gradients
  see touch-down and lift-off, since hard contact's projection has none there),

and all three (open loop, PPO, APG) are scored the same way: one episode of `seconds` on the
scoring physics (hard contact), distance = centre-of-mass travel toward the terrain's goal
(+x on terrains without one, as `SodaraceEnv` rewards), a body that leaves the finite world
scoring 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elmjax.sodarace.params import SimParams


@dataclasses.dataclass(frozen=True)
class ControllerBudget:
    """Training budgets (small defaults: a 2-core CPU; see experiments/RESULTS.md)."""

    seconds: float = 5.0  # episode length (simulated s)
    ppo_timesteps: int = 50_000
    ppo_envs: int = 16
    apg_updates: int = 20
    apg_envs: int = 8
    apg_horizon: int = 50  # frames backpropagated through per APG update
    seed: int = 0


def make_env(walker: Any, terrain: str, seconds: float, contact: str = "hard") -> Any:
    from elmjax.sodarace.brax_env import SodaraceEnv

    return SodaraceEnv(walker, terrain, SimParams(seconds=seconds, contact=contact))


def episode_distance(env: Any, policy: Callable | None, frames: int, key: jax.Array) -> float:
    """Distance toward the goal after `frames` steps driven by `policy(obs [1, O], key) ->
    (action [1, A], extras)` (None: zero action = the body's own open-loop muscles). Compiled
    with the simulator's `env.COMPILER_OPTIONS`, like every scored simulation."""
    from elmjax.sodarace.env import COMPILER_OPTIONS

    def act(obs: jax.Array, k: jax.Array) -> jax.Array:
        if policy is None:
            return jnp.zeros((env.action_size,))
        return policy(obs[None], k)[0][0]

    @functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)
    def run(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        state = env.reset(key)

        def body(s: Any, k: jax.Array) -> tuple[Any, None]:
            return env.step(s, act(s.obs, k)), None

        final, _ = jax.lax.scan(body, state, jax.random.split(key, frames))
        return final.metrics["dx"], final.pipeline_state.alive[0]

    dx, alive = jax.device_get(run(key))
    goal = env.terrain.goal or 1
    return float(goal * dx) if bool(alive) and np.isfinite(dx) else 0.0


@contextlib.contextmanager
def brax_compat() -> Iterator[None]:
    """Brax 0.14.2's agents call `jax.device_put_replicated`, which the pinned JAX (0.10) has
    removed; for the length of a training call it is put back, written as JAX's migration guide
    says (stack one copy per device, shard the new axis over the devices)."""
    try:
        jax.device_put_replicated  # noqa: B018
        yield
        return
    except AttributeError:
        pass

    def device_put_replicated(x: Any, devices: Sequence[Any]) -> Any:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        sharding = NamedSharding(Mesh(np.asarray(devices), ("d",)), PartitionSpec("d"))
        return jax.tree.map(
            lambda a: jax.device_put(jnp.stack([jnp.asarray(a)] * len(devices)), sharding), x
        )

    jax.device_put_replicated = device_put_replicated
    try:
        yield
    finally:
        del jax.device_put_replicated


def train_ppo(env: Any, budget: ControllerBudget, frames: int) -> tuple[Callable, dict[str, Any]]:
    from brax.training.agents.ppo import train as ppo

    with brax_compat():
        make_policy, params, metrics = ppo.train(
            environment=env,
            num_timesteps=budget.ppo_timesteps,
            episode_length=frames,
            num_envs=budget.ppo_envs,
            batch_size=budget.ppo_envs,
            num_minibatches=4,
            unroll_length=20,
            num_updates_per_batch=4,
            learning_rate=3e-4,
            entropy_cost=1e-3,
            discounting=0.99,
            normalize_observations=True,
            num_evals=2,
            num_eval_envs=4,
            seed=budget.seed,
        )
    return make_policy(params, deterministic=True), {k: float(v) for k, v in metrics.items()
                                                     if np.ndim(v) == 0}  # fmt: skip


def train_apg(env: Any, budget: ControllerBudget, frames: int) -> tuple[Callable, dict[str, Any]]:
    from brax.training.agents.apg import train as apg

    with brax_compat():
        make_policy, params, metrics = apg.train(
            environment=env,
            episode_length=frames,
            policy_updates=budget.apg_updates,
            horizon_length=budget.apg_horizon,
            num_envs=budget.apg_envs,
            num_evals=2,
            num_eval_envs=4,
            learning_rate=1e-3,
            max_gradient_norm=1.0,
            normalize_observations=True,
            seed=budget.seed,
        )
    return make_policy(params, deterministic=True), {k: float(v) for k, v in metrics.items()
                                                     if np.ndim(v) == 0}  # fmt: skip


def compare(
    walker: Any,
    terrains: Sequence[str],
    budget: ControllerBudget = ControllerBudget(),
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per terrain: open-loop, PPO and APG distances (units) and training seconds
    (`on_row` sees the rows so far after each terrain, so a long comparison keeps its part)."""
    rows = []
    key = jax.random.key(budget.seed)
    for terrain in terrains:
        env = make_env(walker, terrain, budget.seconds)
        frames = env.params.frames
        row: dict[str, Any] = {"terrain": terrain, "frames": frames}
        row["open_loop"] = episode_distance(env, None, frames, key)
        for name, trainer, contact in (("ppo", train_ppo, "hard"), ("apg", train_apg, "smooth")):
            t0 = time.process_time()
            wall = time.perf_counter()
            try:
                train_env = make_env(walker, terrain, budget.seconds, contact)
                policy, metrics = trainer(train_env, budget, frames)
                row[name] = episode_distance(env, policy, frames, key)
                row[f"{name}_train_reward"] = metrics.get("eval/episode_reward")
            except Exception as err:  # one failing agent must not lose the table
                row[name] = None
                row[f"{name}_error"] = f"{type(err).__name__}: {err}"[:300]
            row[f"{name}_cpu_seconds"] = time.process_time() - t0
            row[f"{name}_wall_seconds"] = time.perf_counter() - wall
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows
