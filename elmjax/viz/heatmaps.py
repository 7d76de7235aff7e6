"""Pictures of an archive: where the elites are and how good they are.

For the 3-D Sodarace grid (height, width, mass): one height x width panel per mass slice, plus a
max-over-mass projection, all on one fitness colour scale. Empty cells are drawn in a light grey
with a hatch, so "empty" never looks like "low fitness". A 2-D grid is one panel; a CVT archive
is a scatter of its filled centroids over the first two descriptor dimensions.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors  # noqa: E402

from elmjax.qd.archive import Archive, GridSpec  # noqa: E402

EMPTY_COLOUR = "#e6e6e6"
DEFAULT_NAMES = ("height", "width", "mass")


def archive_grid(archive: Archive) -> np.ndarray:
    """Elite fitness in the grid's shape, NaN for empty cells."""
    fit = np.asarray(archive.fitness, np.float64).copy()
    fit[np.asarray(archive.program_id) < 0] = np.nan
    return fit.reshape(archive.spec.shape)


def _panel(ax, values: np.ndarray, spec: GridSpec, dims: tuple[int, int], norm, cmap, names):
    rows, cols = dims
    extent = (spec.low[cols], spec.high[cols], spec.low[rows], spec.high[rows])
    ax.set_facecolor(EMPTY_COLOUR)
    # Hatch the background: only empty (masked, transparent) cells show it.
    ax.add_patch(
        matplotlib.patches.Rectangle(
            (extent[0], extent[2]),
            extent[1] - extent[0],
            extent[3] - extent[2],
            facecolor=EMPTY_COLOUR,
            hatch="///",
            edgecolor="#c4c4c4",
            linewidth=0,
            zorder=0,
        )
    )
    image = ax.imshow(
        np.ma.masked_invalid(values),
        origin="lower",
        extent=extent,
        aspect="auto",
        cmap=cmap,
        norm=norm,
        interpolation="nearest",
        zorder=1,
    )
    ax.set_xlabel(names[cols])
    ax.set_ylabel(names[rows])
    return image


def plot_archive(
    archive: Archive,
    spec: GridSpec | None = None,
    path: str | Path = "archive.png",
    names: tuple[str, ...] | None = None,
    title: str | None = None,
) -> Path:
    """Draw the archive to `path` (PNG); returns the path. `spec` defaults to `archive.spec`."""
    spec = archive.spec if spec is None else spec
    names = names or (DEFAULT_NAMES if spec.dim == 3 else tuple(f"d{i}" for i in range(spec.dim)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    filled = np.asarray(archive.program_id) >= 0
    fit = np.asarray(archive.fitness)[filled]
    lo, hi = (float(fit.min()), float(fit.max())) if fit.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    norm = colors.Normalize(lo, hi)
    cmap = plt.get_cmap("viridis")
    coverage = f"{int(filled.sum())}/{filled.size} cells filled"
    heading = (
        f"{title + ': ' if title else ''}{coverage}, best {hi if fit.size else float('nan'):.3g}"
    )

    if not isinstance(spec, GridSpec):
        fig, ax = plt.subplots(figsize=(6, 5))
        cents = np.asarray(archive.centroids)
        ax.scatter(cents[~filled, 1], cents[~filled, 0], s=4, c=EMPTY_COLOUR)
        image = ax.scatter(cents[filled, 1], cents[filled, 0], s=8, c=fit, cmap=cmap, norm=norm)
        ax.set_xlabel(names[1])
        ax.set_ylabel(names[0])
        fig.colorbar(image, ax=ax, label="fitness")
        fig.suptitle(heading)
    elif spec.dim == 2:
        fig, ax = plt.subplots(figsize=(6, 5))
        image = _panel(ax, archive_grid(archive), spec, (0, 1), norm, cmap, names)
        fig.colorbar(image, ax=ax, label="fitness")
        fig.suptitle(heading)
    elif spec.dim == 3:
        grid = archive_grid(archive)
        slices = spec.shape[2]
        ncols = min(5, slices + 1)
        nrows = math.ceil((slices + 1) / ncols)
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(3.3 * ncols, 3.0 * nrows + 0.6), squeeze=False
        )
        width = (spec.high[2] - spec.low[2]) / slices
        with np.errstate(all="ignore"):
            projection = np.where(
                np.isnan(grid).all(axis=2), np.nan, np.nanmax(np.nan_to_num(grid, nan=-np.inf), 2)
            )
        image = _panel(axes[0, 0], projection, spec, (0, 1), norm, cmap, names)
        axes[0, 0].set_title(f"max over {names[2]}", fontweight="bold")
        for k in range(slices):
            ax = axes.flat[k + 1]
            _panel(ax, grid[:, :, k], spec, (0, 1), norm, cmap, names)
            a, b = spec.low[2] + k * width, spec.low[2] + (k + 1) * width
            ax.set_title(f"{names[2]} {a:.3g}-{b:.3g}")
        for ax in axes.flat[slices + 1 :]:
            ax.axis("off")
        fig.suptitle(heading + "   (grey hatched: empty)")
        # Fixed margins instead of tight_layout: same picture, a fraction of the layout time.
        fig.subplots_adjust(left=0.06, right=0.9, bottom=0.07, top=0.9, wspace=0.35, hspace=0.5)
        cax = fig.add_axes((0.92, 0.15, 0.012, 0.7))
        fig.colorbar(image, cax=cax, label="fitness")
    else:
        raise ValueError(f"cannot draw a {spec.dim}-D grid archive")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
