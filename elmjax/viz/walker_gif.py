"""Animate a walker's run: joints, springs coloured by muscle activity, and the terrain.

`render_gif(walker, path)` simulates one walker with the real simulator (the same `SimParams` and
terrain an evaluation uses) and writes an animated GIF with matplotlib + imageio. Bones are grey;
a muscle is red while it is longer than its rest length and blue while shorter, its saturation the
size of the stroke, so the gait's wave of contractions is visible; a legend says so in every
frame, and a scale bar gives lengths in units and metres (10 units = 1 m). The camera follows the
walker at one zoom chosen from the whole run, so no pose leaves the frame (`camera`). Each
frame's title shows the mass-weighted centre of mass's travel; the last frame's is the scored dx
(see `trajectory`). The GIF plays in real time (`gif_frame_ms`).
`render_frames` returns the RGB frames for callers that compose their own pictures (side-by-side
comparisons, reports).
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from elmjax.sodarace.body import Body
from elmjax.sodarace.env import record_walker
from elmjax.sodarace.physics import SimParams
from elmjax.sodarace.terrain import Terrain, ceiling_height, floor_height, get_terrain

#: Walker coordinates are in "units"; one unit reads as 0.1 m (`elmjax.sodarace.physics`).
UNITS_PER_METRE = 10.0
#: Frames per simulated second. 10 fps is a 100 ms delay, which GIF (10 ms resolution) stores
#: exactly, and `trajectory` records exactly (every 6th 60 Hz step).
DEFAULT_FPS = 10
#: GIF frame delays are whole centiseconds.
GIF_RESOLUTION_MS = 10
#: browsers play a GIF delay of 10 ms or less as 100 ms; 20 ms is the shortest they honour.
MIN_DELAY_MS = 20
BONE, LONG, SHORT = "#595959", "#d62728", "#1f4fd6"
#: grey level of a muscle at its rest length (so it still shows on the white background)
REST = 0.85


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
    fps: int = DEFAULT_FPS,
    size: tuple[float, float] = (6.4, 3.2),
    dpi: int = 70,
    title: str | None = None,
    run: Trajectory | None = None,
) -> list[np.ndarray]:
    """RGB frames [H, W, 3] uint8 of one walker's run (see module docstring).

    The camera follows the walker's bounding box at one zoom for the whole run, chosen so that
    the widest and tallest pose of the run fits (a walker that stretches or climbs makes the
    camera zoom out, never leave it out of frame); the scale bar is therefore the same in every
    frame. Pass `run` to draw a trajectory already simulated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    terrain = get_terrain(terrain)
    if run is None:
        run = trajectory(walker, terrain, seconds, params, fps)
    body, times, xs, ys = run.body, run.times, run.x, run.y
    m = int(np.asarray(body.spring_mask)[:, 0].sum())
    si = np.asarray(body.spring_i)[:m, 0]
    sj = np.asarray(body.spring_j)[:m, 0]
    rest = np.asarray(body.rest)[:m, 0]
    muscle = np.asarray(body.is_muscle)[:m, 0] > 0
    mass = np.asarray(body.mass, np.float64)[: xs.shape[1], 0]

    fig = plt.figure(figsize=size, dpi=dpi)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.88))
    view = camera(xs, ys, terrain, aspect=(size[1] * 0.88) / (size[0] * 0.98))
    ground_x = np.linspace(xs.min() - view.width, xs.max() + view.width, 800)
    ground_y = np.asarray(floor_height(terrain, jnp.asarray(ground_x)))
    ax.set_ylim(view.low_y, view.low_y + view.height)
    ax.set_aspect("equal")
    ax.fill_between(ground_x, view.low_y - view.height, ground_y, color="#8d6e63", zorder=0)
    if "ceiling" in terrain.features:
        top = np.asarray(ceiling_height(terrain, jnp.asarray(ground_x)))
        ax.fill_between(ground_x, top, view.low_y + 2 * view.height, color="#8d6e63", zorder=0)
    for wall in (float(terrain.wall_left), float(terrain.wall_right)):
        if abs(wall) < 1e5:
            ax.axvline(wall, color="#5d4037", lw=4)
    ax.axvline(float(xs[0] @ mass / mass.sum()), color="k", lw=0.6, ls=":")
    ax.set_xticks([])
    ax.set_yticks([])
    bar = scale_bar_units(view.width)
    ax.add_artist(
        AnchoredSizeBar(
            ax.transData,
            bar,
            f"{bar:g} units = {bar / UNITS_PER_METRE:g} m",
            "upper left",
            pad=0.3,
            borderpad=0.4,
            sep=3,
            size_vertical=view.height / 80,
            fontproperties={"size": 7},
            frameon=True,
        )
    )
    ax.legend(
        handles=[
            Line2D([], [], color=BONE, lw=2, label="bone"),
            Line2D([], [], color=LONG, lw=2, label="muscle longer than rest"),
            Line2D([], [], color=SHORT, lw=2, label="muscle shorter than rest"),
            Line2D([], [], color=(REST,) * 3, lw=2, label="muscle near rest length"),
            Line2D([], [], color="k", lw=0.6, ls=":", label="start"),
        ],
        loc="upper right",
        fontsize=7,
        framealpha=0.85,
        handlelength=1.5,
    )
    springs = LineCollection([], linewidths=2, zorder=2)
    ax.add_collection(springs)
    (joints,) = ax.plot([], [], "o", color="k", ms=3, zorder=3)
    heading = fig.suptitle("", fontsize=8, y=0.985)

    frames = []
    for k in range(xs.shape[0]):
        cx = 0.5 * (float(xs[k].min()) + float(xs[k].max()))
        ax.set_xlim(cx - view.width / 2, cx + view.width / 2)
        seg = np.stack(
            [np.stack([xs[k, si], ys[k, si]], -1), np.stack([xs[k, sj], ys[k, sj]], -1)], 1
        )
        length = np.hypot(xs[k, sj] - xs[k, si], ys[k, sj] - ys[k, si])
        springs.set_segments(seg)
        springs.set_color(spring_colours(length, rest, muscle))
        joints.set_data(xs[k], ys[k])
        label = (
            f"t = {times[k]:4.1f} s   dx = {run.dx[k]:+6.1f} units "
            f"({run.dx[k] / UNITS_PER_METRE:+.2f} m)"
        )
        if k == xs.shape[0] - 1 and not run.valid:
            label += "   exploded: scored 0"
        heading.set_text(f"{title}   {label}" if title else label)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return frames


class View(NamedTuple):
    """The camera of a whole run: a fixed-size window that follows the walker along x."""

    width: float  # units of x shown
    height: float  # units of y shown (width * the axes' aspect)
    low_y: float  # bottom edge


def camera(xs: np.ndarray, ys: np.ndarray, terrain: Terrain, aspect: float) -> View:
    """The smallest steady window that holds every pose of the run with a margin.

    Width: at least 3.2 body sizes (some ground to see the walker move over), and 1.3 times the
    widest pose. Height (width * `aspect`, so that one unit is as long across as up) must hold
    the ground below the lowest joint up to the highest joint of the run plus room for the scale
    bar and legend; when it cannot, the window widens. Centring each frame on the walker's
    bounding box then keeps every joint in view."""
    size = max(float(np.ptp(xs[0])), float(np.ptp(ys[0])), 5.0)
    widest = float(np.max(np.ptp(xs, axis=1)))
    centres = 0.5 * (xs.min(axis=1) + xs.max(axis=1))
    near = np.linspace(centres.min() - size, centres.max() + size, 400)
    ground = float(np.min(np.asarray(floor_height(terrain, jnp.asarray(near)))))
    low_y = min(ground, float(ys.min())) - 0.15 * size
    tall = float(ys.max()) - low_y + 0.6 * size  # room above for the legend and scale bar
    width = max(3.2 * size, 1.3 * widest, tall / aspect)
    return View(width, width * aspect, low_y)


def scale_bar_units(view_width: float) -> float:
    """A round length (1, 2 or 5 x 10^k units) about a fifth of the view."""
    target = view_width / 5.0
    power = 10.0 ** math.floor(math.log10(target))
    return max(s * power for s in (1.0, 2.0, 5.0) if s * power <= target)


def spring_colours(length: np.ndarray, rest: np.ndarray, muscle: np.ndarray) -> np.ndarray:
    """RGB per spring: grey bones; muscles red while longer than rest, blue while shorter, the
    saturation the stroke (full at 40% of the rest length)."""
    strain = np.clip((length - rest) / (0.4 * rest), -1.0, 1.0)[:, None]
    white = np.ones((len(length), 3))
    red = white + np.clip(strain, 0, 1) * (np.asarray(colors_rgb(LONG)) - 1.0)
    blue = white + np.clip(-strain, 0, 1) * (np.asarray(colors_rgb(SHORT)) - 1.0)
    shade = np.where(strain > 0, red, blue)
    # A muscle at rest length would be white on white: keep a light grey floor.
    shade = np.minimum(shade, REST)
    return np.where(muscle[:, None], shade, np.asarray(colors_rgb(BONE)))


def colors_rgb(name: str) -> tuple[float, float, float]:
    from matplotlib import colors

    return colors.to_rgb(name)


def gif_frame_ms(times: np.ndarray) -> list[int]:
    """GIF delay of each frame in milliseconds, so that the animation plays in real time.

    GIF stores delays in whole centiseconds, so frame k shows from its time rounded to 10 ms to
    the next frame's: at 15 fps (66.7 ms) the delays run 70, 60, 70, ... and the whole GIF lasts
    exactly the simulated time. The last frame holds for one typical step. No delay is below
    `MIN_DELAY_MS`: browsers replace shorter ones by 100 ms."""
    times = np.asarray(times, np.float64)
    if len(times) < 2:
        return [100] * len(times)
    edges = np.round((times - times[0]) * 1000.0 / GIF_RESOLUTION_MS) * GIF_RESOLUTION_MS
    step = float(np.median(np.diff(edges)))
    delays = [*np.diff(edges), step]
    return [int(max(MIN_DELAY_MS, d)) for d in delays]


def render_gif(
    walker_dict: Any,
    path: str | os.PathLike[str],
    terrain: str | Terrain = "flat",
    seconds: float = 10.0,
    params: SimParams | None = None,
    fps: int = DEFAULT_FPS,
    title: str | None = None,
) -> str:
    """Simulate `walker_dict` (dict form or Walker) and write an animated GIF to `path` that
    plays in real time (for a frame rate GIF cannot hold exactly, such as 15 fps, the delays
    alternate so that the total is exact).

    imageio's pillow plugin (imageio >= 2.28) takes `duration` in milliseconds per frame (older
    versions took seconds, which is why a `1 / fps` here once wrote 0 ms delays that browsers
    replace by their own guess); GIF stores centiseconds, hence `gif_frame_ms`."""
    import imageio.v2 as imageio

    terrain = get_terrain(terrain)
    run = trajectory(walker_dict, terrain, seconds, params, fps)
    frames = render_frames(walker_dict, terrain, seconds, params, fps, title=title, run=run)
    imageio.mimsave(os.fspath(path), frames, duration=gif_frame_ms(run.times), loop=0)
    return os.fspath(path)
