"""Animate a walker's run: joints, springs coloured by muscle activity, and the terrain.

`render_gif(walker, path)` simulates one walker with the real simulator (the same `SimParams` and
terrain an evaluation uses) and writes an animated GIF with matplotlib + imageio. Bones are grey;
a muscle is red while it is longer than its rest length and blue while shorter, its saturation the
size of the stroke, so the gait's wave of contractions is visible. `render_frames` returns the RGB
frames for callers that compose their own pictures (side-by-side comparisons, reports).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elmjax.sodarace.body import Body, pack
from elmjax.sodarace.physics import SimParams, init_state, rollout
from elmjax.sodarace.terrain import Terrain, ceiling_height, floor_height, get_terrain


def trajectory(
    walker: Any,
    terrain: str | Terrain = "flat",
    seconds: float = 10.0,
    params: SimParams | None = None,
    fps: int = 15,
) -> tuple[Body, np.ndarray, np.ndarray, np.ndarray]:
    """Simulate one walker; returns (body, times [F], x [F, J], y [F, J]) of its real joints,
    frame 0 being the start.

    Lanes are independent, so this is the run `Sodarace.evaluate` scores, frame for frame."""
    params = (params or SimParams()).replace(seconds=seconds)
    terrain = get_terrain(terrain)
    body = pack([walker], batch_size=8)
    every = max(1, int(round(1.0 / (fps * params.dt))))
    start = init_state(body, terrain)
    run = jax.jit(rollout, static_argnums=(0, 3, 4))
    _, (xs, ys) = run(params, body, terrain, params.frames, every, start)
    n = int(np.asarray(body.joint_mask)[:, 0].sum())
    x = np.concatenate([np.asarray(start.x)[None, :n, 0], np.asarray(xs)[:, :n, 0]])
    y = np.concatenate([np.asarray(start.y)[None, :n, 0], np.asarray(ys)[:, :n, 0]])
    times = np.arange(x.shape[0]) * every * params.dt
    return body, times, x, y


def render_frames(
    walker: Any,
    terrain: str | Terrain = "flat",
    seconds: float = 10.0,
    params: SimParams | None = None,
    fps: int = 15,
    size: tuple[float, float] = (6.0, 3.0),
    dpi: int = 60,
    title: str | None = None,
) -> list[np.ndarray]:
    """RGB frames [H, W, 3] uint8 of one walker's run (see module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    terrain = get_terrain(terrain)
    body, times, xs, ys = trajectory(walker, terrain, seconds, params, fps)
    m = int(np.asarray(body.spring_mask)[:, 0].sum())
    si = np.asarray(body.spring_i)[:m, 0]
    sj = np.asarray(body.spring_j)[:m, 0]
    rest = np.asarray(body.rest)[:m, 0]
    muscle = np.asarray(body.is_muscle)[:m, 0] > 0
    span = max(float(np.ptp(xs[0])), float(np.ptp(ys[0])), 5.0)
    ground_x = np.linspace(xs.min() - span, xs.max() + span, 400)
    ground_y = np.asarray(floor_height(terrain, jnp.asarray(ground_x)))
    top = np.asarray(ceiling_height(terrain, jnp.asarray(ground_x)))
    lo_y = min(float(ground_y.min()), float(ys.min())) - 0.1 * span
    hi_y = max(float(ys.max()), lo_y + span) + 0.3 * span
    frames = []
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    for k in range(xs.shape[0]):
        ax.clear()
        cx = float(xs[k].mean())
        ax.set_xlim(cx - 1.6 * span, cx + 1.6 * span)
        ax.set_ylim(lo_y, hi_y)
        ax.set_aspect("equal")
        ax.fill_between(ground_x, lo_y - span, ground_y, color="#8d6e63", zorder=0)
        if "ceiling" in terrain.features:
            ax.fill_between(ground_x, top, hi_y + span, color="#8d6e63", zorder=0)
        for wall in (float(terrain.wall_left), float(terrain.wall_right)):
            if abs(wall) < 1e5:
                ax.axvline(wall, color="#5d4037", lw=4)
        ax.axvline(float(xs[0].mean()), color="k", lw=0.5, ls=":")
        seg = np.stack(
            [np.stack([xs[k, si], ys[k, si]], -1), np.stack([xs[k, sj], ys[k, sj]], -1)], 1
        )
        length = np.hypot(xs[k, sj] - xs[k, si], ys[k, sj] - ys[k, si])
        strain = np.clip((length - rest) / (0.4 * rest), -1.0, 1.0)
        colors = np.where(
            muscle[:, None],
            np.where(
                strain[:, None] > 0,
                np.stack([np.ones(m), 1 - strain, 1 - strain], -1) * [1.0, 0.8, 0.8],
                np.stack([1 + strain, 1 + strain, np.ones(m)], -1) * [0.8, 0.8, 1.0],
            ),
            np.array([0.35, 0.35, 0.35]),
        )
        ax.add_collection(LineCollection(seg, colors=np.clip(colors, 0, 1), linewidths=2))
        ax.plot(xs[k], ys[k], "o", color="k", ms=3)
        dx = float(xs[k].mean() - xs[0].mean())
        label = f"t={times[k]:4.1f}s  dx={dx:+6.1f}"
        ax.set_title(f"{title}  {label}" if title else label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return frames


def render_gif(
    walker_dict: Any,
    path: str | os.PathLike[str],
    terrain: str | Terrain = "flat",
    seconds: float = 10.0,
    params: SimParams | None = None,
    fps: int = 15,
    title: str | None = None,
) -> str:
    """Simulate `walker_dict` (dict form or Walker) and write an animated GIF to `path`."""
    import imageio.v2 as imageio

    frames = render_frames(walker_dict, terrain, seconds, params, fps, title=title)
    imageio.mimsave(os.fspath(path), frames, duration=1.0 / fps, loop=0)
    return os.fspath(path)
