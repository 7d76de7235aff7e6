"""A terrain as a soft prompt: `prefix_len` vectors in the language model's embedding space.

Two parts, added:

- a **learned code** per training terrain (`codes[i]`, zero at the start), which lets RL give
  each terrain it trains on whatever prompt works, whether or not the profile shows the
  difference;
- an **encoder of the terrain's profile** (a small MLP over `terrain_profile`: floor heights
  around the start, distances to the walls, the ceiling, the goal direction), so a terrain the
  policy never trained on still gets a meaningful prompt (index -1: the encoder alone).

Both sit on top of `base`, initialised to the embeddings of real tokens (`base_tokens`), so the
untrained prompt reads like text to the model and the policy starts close to the stage-2 model
(the KL penalty then starts small instead of at whatever a random vector provokes). The
encoder's last layer starts small for the same reason.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elmjax.sodarace.terrain import FAR, Terrain, ceiling_height, floor_height, get_terrain

#: Half-width (units) of the floor window the encoder reads, centred on the start: a walker
#: that travels 10 s covers a few tens of units, so the first +-40 units are what it meets.
PROFILE_HALF_WIDTH = 40.0
#: Scales that bring each feature to O(1): floor heights (units; bumps are 1 high, hills 4),
#: wall distances and ceiling clearance (units, clipped: anything beyond is "no obstacle").
HEIGHT_SCALE = 5.0
CLEARANCE = 40.0


def terrain_profile(terrain: str | Terrain, points: int) -> np.ndarray:
    """Features [points + 4] of a terrain (host numpy, float32): floor heights at `points`
    evenly spaced x in [-40, 40] / 5; the ceiling's clearance over the start, the distances
    from the start to the left and right walls (each clipped at 40 units, / 40, so 1 = none);
    the goal direction (-1, 0, +1)."""
    t = get_terrain(terrain)
    xs = jnp.linspace(-PROFILE_HALF_WIDTH, PROFILE_HALF_WIDTH, points)
    floor = np.asarray(floor_height(t, xs)) / HEIGHT_SCALE
    ceiling = float(ceiling_height(t, jnp.zeros(())) - floor_height(t, jnp.zeros(())))
    left = -float(t.wall_left) if float(t.wall_left) > -FAR else CLEARANCE
    right = float(t.wall_right) if float(t.wall_right) < FAR else CLEARANCE
    tail = [min(max(v, 0.0), CLEARANCE) / CLEARANCE for v in (ceiling, left, right)]
    return np.concatenate([floor, tail, [float(t.goal)]]).astype(np.float32)


class TerrainEmbedding(nnx.Module):
    """(terrain index [B] (-1 = not a training terrain), profile [B, F]) -> prefix [B, K, D]."""

    def __init__(
        self,
        num_terrains: int,
        prefix_len: int,
        d_model: int,
        profile_size: int,
        hidden: int,
        base: jax.Array,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        chex.assert_shape(base, (prefix_len, d_model))
        scale = float(jnp.std(base)) or 0.02
        self.num_terrains = num_terrains
        self.base = nnx.Param(jnp.asarray(base, jnp.float32))
        self.codes = nnx.Param(jnp.zeros((num_terrains, prefix_len, d_model), jnp.float32))
        self.hidden = nnx.Linear(profile_size, hidden, rngs=rngs)
        self.out = nnx.Linear(
            hidden,
            prefix_len * d_model,
            kernel_init=nnx.initializers.normal(0.1 * scale / np.sqrt(hidden)),
            rngs=rngs,
        )

    def __call__(self, index: jax.Array, profile: jax.Array) -> jax.Array:
        k, d = self.base.shape
        chex.assert_rank(index, 1)
        chex.assert_shape(profile, (index.shape[0], self.hidden.in_features))
        encoded = self.out(jnp.tanh(self.hidden(profile))).reshape(-1, k, d)
        known = (index >= 0)[:, None, None]
        code = jnp.where(known, self.codes[jnp.clip(index, 0, self.num_terrains - 1)], 0.0)
        return self.base[None] + code + encoded
