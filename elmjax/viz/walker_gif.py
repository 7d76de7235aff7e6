"""Animate a walker's run: joints, springs coloured by muscle activity, and the terrain.

`render_gif(walker, path)` simulates one walker with the real simulator (the same `SimParams` and
terrain an evaluation uses) and writes an animated GIF with matplotlib + imageio. Bones are grey;
a muscle is red while it is longer than its rest length and blue while shorter, its saturation the
size of the stroke, so the gait's wave of contractions is visible. Each frame's title shows the
mass-weighted centre of mass's travel; the last frame's is the scored dx (see `trajectory`).
`render_frames` returns the RGB frames for callers that compose their own pictures (side-by-side
comparisons, reports).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from elmjax.sodarace.body import Body
from elmjax.sodarace.env import record_walker
from elmjax.sodarace.physics import SimParams
from elmjax.sodarace.terrain import Terrain, ceiling_height, floor_height, get_terrain


class Trajectory(NamedTuple):
    """One walker's recorded run (its real joints only); row 0 is the start, the last row the
    state the score was measured on."""

    body: Body  # the packed batch; lane 0 is the walker
    times: np.ndarray  # [F] seconds
    x: np.ndarray  # [F, J] joint x
    y: np.ndarray  # [F, J] joint y
    dx: np.ndarray  # [F] centre-of-mass travel along x; dx[-1] is the scored dx itself
    valid: bool  # what the evaluation says: False when the body left the finite world


def trajectory(
    walker: Any,
    terrain: str | Terrain = "flat",
    seconds: float = 10.0,
    params: SimParams | None = None,
    fps: int = 15,
) -> Trajectory:
    """Simulate one walker and keep about `fps` frames per simulated second.

    This is the run `Sodarace.evaluate` scores, not a re-enactment of it: `record_walker` packs
    the walker as the evaluation does and runs the same traced simulation, so the last row is
    the scored final state and `dx[-1]` the scored dx, bitwise (tests/test_sodarace_env.py).
    `dx` is the mass-weighted centre of mass's travel, as scored (the plain mean of the joints
    is not: a heavy bar and a light joint weigh differently)."""
    params = (params or SimParams()).replace(seconds=seconds)
    terrain = get_terrain(terrain)
    every = max(1, int(round(1.0 / (fps * params.dt))))
    body, rec = record_walker(walker, terrain, params, record_every=every)
    n = int(np.asarray(body.joint_mask)[:, 0].sum())
    x = np.asarray(rec.x)[:, :n, 0]
    y = np.asarray(rec.y)[:, :n, 0]
    mass = np.asarray(body.mass, np.float64)[:n, 0]
    com = x.astype(np.float64) @ mass / mass.sum()
    dx = com - com[0]
    valid = bool(np.asarray(rec.result.valid)[0])
    if valid:
        dx[-1] = float(np.asarray(rec.result.dx)[0])
    times = np.asarray(rec.frame) * params.dt
    return Trajectory(body, times, x, y, dx, valid)


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
    run = trajectory(walker, terrain, seconds, params, fps)
    body, times, xs, ys = run.body, run.times, run.x, run.y
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
        label = f"t={times[k]:4.1f}s  dx={run.dx[k]:+6.1f}"
        if k == xs.shape[0] - 1 and not run.valid:
            label += "  exploded: scored 0"
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
