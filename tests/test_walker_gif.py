"""Walker GIFs play in real time, keep the walker in frame, and explain themselves."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib import colors
from PIL import Image

from elmjax.sodarace.seeds import load_seed
from elmjax.sodarace.terrain import get_terrain
from elmjax.sodarace.walker import check_walker, walker_creator
from elmjax.viz.walker_gif import (
    LONG,
    SHORT,
    UNITS_PER_METRE,
    camera,
    gif_frame_ms,
    render_gif,
    scale_bar_units,
    trajectory,
)


def _walker(name: str) -> dict:
    g = {"walker_creator": walker_creator}
    exec(load_seed(name), g)
    return check_walker(g["make_walker"]())


def _durations(path) -> list[int]:
    with Image.open(path) as im:
        out = []
        for k in range(im.n_frames):
            im.seek(k)
            out.append(im.info["duration"])
        return out


@pytest.mark.parametrize("fps", [10, 20])
def test_gif_frame_durations_match_fps(tmp_path, fps):
    path = render_gif(_walker("galloper"), tmp_path / "w.gif", seconds=1.5, fps=fps)
    durations = _durations(path)
    assert len(durations) == int(1.5 * fps) + 1  # the start and one frame per 1/fps
    assert set(durations) == {1000 // fps}  # real time: no 0 ms delays for a browser to guess
    assert sum(durations[1:]) == pytest.approx(1500, abs=1)


def test_frame_delays_add_up_to_the_simulated_time():
    fifteen = gif_frame_ms(np.arange(16) / 15)  # 1 s at 15 fps: 66.7 ms per frame
    assert set(fifteen) == {60, 70} and sum(fifteen[:-1]) == 1000
    assert gif_frame_ms(np.arange(0, 1, 0.1)) == [100] * 10
    assert min(gif_frame_ms(np.arange(0, 1, 0.001))) == 20  # never what browsers replace


def test_a_15_fps_gif_lasts_its_simulated_time(tmp_path):
    path = render_gif(_walker("wheel"), tmp_path / "w.gif", seconds=1.0, fps=15)
    durations = _durations(path)
    assert len(durations) == 16 and sum(durations[:-1]) == 1000
    assert all(abs(d - 1000 / 15) < 10 for d in durations)


@given(
    width=st.floats(1.0, 80.0),
    stretch=st.floats(1.0, 6.0),
    climb=st.floats(0.0, 60.0),
    drift=st.floats(-300.0, 300.0),
)
def test_camera_keeps_every_pose_in_view(width, stretch, climb, drift):
    """Whatever a walker does (stretch, fly up, run far), every joint of every frame is inside
    the frame the camera shows for it."""
    frames = 30
    t = np.linspace(0.0, 1.0, frames)[:, None]
    base = np.linspace(0.0, width, 6)[None, :]
    xs = drift * t + base * (1 + (stretch - 1) * t)
    ys = np.tile(np.array([0.0, 2.0, 0.0, 3.0, 0.0, 1.0])[None, :], (frames, 1)) + climb * t
    aspect = 0.5
    view = camera(xs, ys, get_terrain("flat"), aspect)
    assert view.height == pytest.approx(view.width * aspect)
    for k in range(frames):
        cx = 0.5 * (xs[k].min() + xs[k].max())
        assert xs[k].min() >= cx - view.width / 2 and xs[k].max() <= cx + view.width / 2
        assert ys[k].min() >= view.low_y and ys[k].max() <= view.low_y + view.height


def test_camera_holds_a_real_run():
    run = trajectory(_walker("runner"), seconds=3.0, fps=10)
    view = camera(run.x, run.y, get_terrain("flat"), 0.5)
    assert (np.ptp(run.x, axis=1) <= view.width).all()
    assert run.y.min() >= view.low_y and run.y.max() <= view.low_y + view.height


def test_scale_bar_is_a_round_length():
    for width in (3.0, 17.0, 64.0, 990.0):
        bar = scale_bar_units(width)
        assert bar <= width / 5 < 2.5 * bar
        assert f"{bar:e}"[0] in "125" and f"{bar:e}"[1:5] == ".000"
    assert UNITS_PER_METRE == 10.0  # "10 units = 1 m" in every frame's scale bar


def test_gif_shows_the_legend_colours(tmp_path):
    """The legend draws both muscle colours even in a frame where no muscle is stretched."""
    path = render_gif(_walker("square"), tmp_path / "s.gif", seconds=0.2, fps=10)
    with Image.open(path) as im:
        first = np.asarray(im.convert("RGB"), np.float64) / 255.0
    for name in (LONG, SHORT):
        rgb = np.asarray(colors.to_rgb(name))
        assert (np.abs(first - rgb) < 0.06).all(-1).any(), name
