"""Pictures of an archive: where the elites are and how good they are.

For the 3-D Sodarace grid (height, width, mass): one height x width panel per mass slice, plus a
max-over-mass projection, all on one fitness colour scale. Empty cells are drawn in a light grey
with a hatch, so "empty" never looks like "low fitness". A 2-D grid is one panel; a CVT archive
is a scatter of its filled centroids over the first two descriptor dimensions.

Axes and the colour bar carry units when the caller gives them (`units`, `fitness_label`). The
grid's ranges are a calibration, not a limit: `archive.insert` files a descriptor beyond a bound
in the edge cell, so the upper edge bins are labelled open-ended ("55-60+", a "60+" tick) and a
cell whose elite lies outside the range is marked with a white "+" (`qd.clipped_cells`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors  # noqa: E402

from elmjax.qd.archive import Archive, GridSpec  # noqa: E402
from elmjax.qd.metrics import clipped_cells, coverage_text  # noqa: E402

EMPTY_COLOUR = "#e6e6e6"
CLIPPED_MARK = "+"
DEFAULT_NAMES = ("height", "width", "mass")


def archive_grid(archive: Archive) -> np.ndarray:
    """Elite fitness in the grid's shape, NaN for empty cells."""
    fit = np.asarray(archive.fitness, np.float64).copy()
    fit[np.asarray(archive.program_id) < 0] = np.nan
    return fit.reshape(archive.spec.shape)


def bin_label(low: float, high: float, n: int, k: int) -> str:
    """Range of bin k of n over low..high; the last bin is open-ended ("55-60+"), since
    descriptors beyond `high` are filed there."""
    width = (high - low) / n
    a, b = low + k * width, low + (k + 1) * width
    return f"{a:.3g}-{b:.3g}{'+' if k == n - 1 else ''}"


def axis_label(name: str, unit: str | None) -> str:
    return f"{name} ({unit})" if unit else name


def _edge_ticks(ax, axis: str, low: float, high: float, n: int) -> None:
    """Ticks on bin edges (about five), the top one open-ended ("60+")."""
    step = max(1, math.ceil(n / 5))
    ks = list(range(0, n + 1, step))
    if ks[-1] != n:
        ks.append(n)
    edges = [low + k * (high - low) / n for k in ks]
    labels = [f"{e:.3g}" for e in edges]
    labels[-1] += "+"
    getattr(ax, f"set_{axis}ticks")(edges)
    getattr(ax, f"set_{axis}ticklabels")(labels, fontsize=7)


def _panel(ax, values, spec: GridSpec, dims, norm, cmap, labels, clipped=None):
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
    if clipped is not None and clipped.any():
        r, c = np.nonzero(clipped)
        h = (spec.high[rows] - spec.low[rows]) / spec.shape[rows]
        w = (spec.high[cols] - spec.low[cols]) / spec.shape[cols]
        ax.plot(
            spec.low[cols] + (c + 0.5) * w,
            spec.low[rows] + (r + 0.5) * h,
            CLIPPED_MARK,
            color="white",
            mec="black",
            ms=7,
            mew=1.2,
            zorder=2,
        )
    ax.set_xlabel(labels[cols], fontsize=8)
    ax.set_ylabel(labels[rows], fontsize=8)
    _edge_ticks(ax, "x", spec.low[cols], spec.high[cols], spec.shape[cols])
    _edge_ticks(ax, "y", spec.low[rows], spec.high[rows], spec.shape[rows])
    return image


def plot_archive(
    archive: Archive,
    spec: GridSpec | None = None,
    path: str | Path = "archive.png",
    names: tuple[str, ...] | None = None,
    title: str | None = None,
    units: Sequence[str] | None = None,
    fitness_label: str = "fitness",
) -> Path:
    """Draw the archive to `path` (PNG); returns the path. `spec` defaults to `archive.spec`.

    `units` (one per descriptor dimension) go into the axis labels; `fitness_label` (say
    "fitness: |dx| in 10 s (units)") labels the colour bar."""
    spec = archive.spec if spec is None else spec
    names = names or (DEFAULT_NAMES if spec.dim == 3 else tuple(f"d{i}" for i in range(spec.dim)))
    units = tuple(units) if units else (None,) * len(names)
    labels = tuple(axis_label(n, u) for n, u in zip(names, units))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    filled = np.asarray(archive.program_id) >= 0
    fit = np.asarray(archive.fitness)[filled]
    lo, hi = (float(fit.min()), float(fit.max())) if fit.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    norm = colors.Normalize(lo, hi)
    cmap = plt.get_cmap("viridis")
    clipped = clipped_cells(archive)
    heading = f"{title + ': ' if title else ''}{coverage_text(int(filled.sum()), filled.size)}"
    heading += f", best {float(fit.max()):.3g}" if fit.size else ", no elite yet"
    if clipped.any():
        heading += (
            f"; {int(clipped.sum())} elite(s) beyond the grid's range, "
            f"marked {CLIPPED_MARK} in their edge cell"
        )

    if not isinstance(spec, GridSpec):
        fig, ax = plt.subplots(figsize=(6, 5))
        cents = np.asarray(archive.centroids)
        ax.scatter(cents[~filled, 1], cents[~filled, 0], s=4, c=EMPTY_COLOUR)
        image = ax.scatter(cents[filled, 1], cents[filled, 0], s=8, c=fit, cmap=cmap, norm=norm)
        ax.set_xlabel(labels[1])
        ax.set_ylabel(labels[0])
        fig.colorbar(image, ax=ax, label=fitness_label)
        fig.suptitle(heading, fontsize=9)
    elif spec.dim == 2:
        fig, ax = plt.subplots(figsize=(6, 5))
        cells = clipped.reshape(spec.shape)
        image = _panel(ax, archive_grid(archive), spec, (0, 1), norm, cmap, labels, cells)
        fig.colorbar(image, ax=ax, label=fitness_label)
        fig.suptitle(heading, fontsize=9)
    elif spec.dim == 3:
        grid = archive_grid(archive)
        cells = clipped.reshape(spec.shape)
        slices = spec.shape[2]
        ncols = min(5, slices + 1)
        nrows = math.ceil((slices + 1) / ncols)
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(3.3 * ncols, 3.0 * nrows + 0.6), squeeze=False
        )
        with np.errstate(all="ignore"):
            projection = np.where(
                np.isnan(grid).all(axis=2), np.nan, np.nanmax(np.nan_to_num(grid, nan=-np.inf), 2)
            )
        image = _panel(axes[0, 0], projection, spec, (0, 1), norm, cmap, labels, cells.any(axis=2))
        axes[0, 0].set_title(f"max over {names[2]}", fontweight="bold", fontsize=9)
        for k in range(slices):
            ax = axes.flat[k + 1]
            _panel(ax, grid[:, :, k], spec, (0, 1), norm, cmap, labels, cells[:, :, k])
            band = bin_label(spec.low[2], spec.high[2], slices, k)
            ax.set_title(axis_label(f"{names[2]} {band}", units[2]), fontsize=9)
        for ax in axes.flat[slices + 1 :]:
            ax.axis("off")
        fig.suptitle(heading + "   (grey hatched: empty)", fontsize=10)
        # Fixed margins instead of tight_layout: same picture, a fraction of the layout time.
        fig.subplots_adjust(left=0.06, right=0.9, bottom=0.07, top=0.9, wspace=0.4, hspace=0.6)
        cax = fig.add_axes((0.92, 0.15, 0.012, 0.7))
        fig.colorbar(image, cax=cax, label=fitness_label)
    else:
        raise ValueError(f"cannot draw a {spec.dim}-D grid archive")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
