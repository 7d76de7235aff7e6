"""`SodaraceEnv`: one evolved walker as a Brax environment, so Brax's wrappers and agents can drive it.

Actions modulate the muscles: action k in [-1, 1] scales muscle k's stroke by `1 + action`
(0 = as programmed, -1 = still, +1 = double), so a controller learns on top of the evolved gait.
Muscles beyond the walker's count (padding of the size bucket) ignore their action. One Brax step
is one simulator frame (`SimParams.dt`). The observation is joint positions relative to the
centre of mass, joint velocities, and sin/cos of the muscle clock; the reward is the frame's
centre-of-mass travel along the terrain's goal direction (+x when it has none).

The pipeline state is the simulator's `SimState` for a batch of one (batch-last arrays `[J, 1]`),
so `VmapWrapper` adds the environment batch in front.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State

from elmjax.sodarace.body import Body, pack
from elmjax.sodarace.physics import SimParams, SimState, centre_of_mass_x, init_state, step
from elmjax.sodarace.terrain import Terrain, get_terrain


class SodaraceEnv(Env):
    """A walker (dict form or `Walker`) on a terrain, stepped one frame per action."""

    def __init__(
        self,
        walker: Any,
        terrain: str | Terrain = "flat",
        params: SimParams | None = None,
    ) -> None:
        self.body: Body = jax.tree.map(jnp.asarray, pack([walker]))
        self.terrain = get_terrain(terrain)
        self.params = params or SimParams()
        self._goal = float(self.terrain.goal or 1)

    @property
    def observation_size(self) -> int:
        return 4 * self.body.num_joints + 2

    @property
    def action_size(self) -> int:
        return self.body.num_springs

    @property
    def backend(self) -> str:
        return "elmjax-xpbd"

    def _obs(self, s: SimState) -> jax.Array:
        cx = centre_of_mass_x(self.body, s.x)
        m = self.body.joint_mask
        omega = 2.0 * jnp.pi * self.params.frequency
        return jnp.concatenate(
            [
                ((s.x - cx) * m)[:, 0],
                (s.y * m)[:, 0],
                (s.vx * m)[:, 0],
                (s.vy * m)[:, 0],
                jnp.stack([jnp.sin(omega * s.t), jnp.cos(omega * s.t)]),
            ]
        )

    def reset(self, rng: jax.Array) -> State:
        del rng  # the start is deterministic: the walker at rest on the ground
        s = init_state(self.body, self.terrain)
        zero = jnp.zeros(())
        return State(
            pipeline_state=s,
            obs=self._obs(s),
            reward=zero,
            done=zero,
            metrics={"dx": zero},
            info={},
        )

    def step(self, state: State, action: jax.Array) -> State:
        s: SimState = state.pipeline_state
        modulation = 1.0 + jnp.clip(action, -1.0, 1.0)[:, None] * self.body.is_muscle
        s = s.replace(modulation=modulation.astype(s.modulation.dtype))
        before = centre_of_mass_x(self.body, s.x)[0]
        s = step(self.params, self.body, s, self.terrain)
        moved = centre_of_mass_x(self.body, s.x)[0] - before
        reward = self._goal * moved
        done = 1.0 - s.alive[0].astype(jnp.float32)
        return state.replace(
            pipeline_state=s,
            obs=self._obs(s),
            reward=reward,
            done=done,
            # keep the keys Brax's wrappers add (a scan over steps needs the same pytree)
            metrics={**state.metrics, "dx": state.metrics["dx"] + moved},
        )
