"""Archive heatmaps render, with empty cells in their own colour and fitness on a colour scale."""

from __future__ import annotations

import matplotlib.image
import numpy as np
from matplotlib import colors

from elmjax import qd
from elmjax.viz.heatmaps import EMPTY_COLOUR, archive_grid, plot_archive


def _filled(spec, n=300):
    rng = np.random.default_rng(0)
    lo, hi = np.asarray(spec.low), np.asarray(spec.high)
    desc = (rng.random((n, len(lo))) * 0.6 * (hi - lo) + lo).astype(np.float32)
    fit = rng.random(n).astype(np.float32) * 10
    archive, _ = qd.insert(qd.init(spec), fit, desc, np.ones(n, bool), np.arange(n, dtype=np.int32))
    return archive


def _has_colour(image: np.ndarray, rgb, tol=0.02) -> bool:
    return bool((np.abs(image[..., :3] - np.asarray(rgb)) < tol).all(-1).any())


def test_grid_3d_heatmap(tmp_path):
    spec = qd.GridSpec((12, 12, 12), (0, 0, 0), (60, 60, 300))
    archive = _filled(spec)
    grid = archive_grid(archive)
    assert grid.shape == (12, 12, 12) and np.isnan(grid).any() and np.isfinite(grid).any()
    path = plot_archive(archive, spec, tmp_path / "a.png", title="test")
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 800
    assert _has_colour(image, colors.to_rgb(EMPTY_COLOUR))
    # The best elite's colour (top of viridis) appears somewhere.
    assert _has_colour(image, colors.to_rgb("#fde725"), tol=0.08)


def test_grid_2d_cvt_and_empty(tmp_path):
    spec2 = qd.GridSpec((5, 7), (0, 0), (1, 1))
    assert plot_archive(_filled(spec2), path=tmp_path / "b.png").stat().st_size > 0
    assert plot_archive(qd.init(spec2), path=tmp_path / "empty.png").stat().st_size > 0
    cvt = qd.CVTSpec(40, (0, 0), (1, 1))
    rng = np.random.default_rng(1)
    archive = qd.init(cvt, centroids=rng.random((40, 2)).astype(np.float32))
    archive, _ = qd.insert(
        archive,
        np.ones(8, np.float32),
        rng.random((8, 2)).astype(np.float32),
        np.ones(8, bool),
        np.arange(8, dtype=np.int32),
    )
    assert plot_archive(archive, path=tmp_path / "c.png").stat().st_size > 0
