"""MAP-Elites archives on the device: grid and CVT layouts, insertion, selection, metrics."""

from elmjax.qd.archive import (
    IMPROVED,
    NEW_CELL,
    REJECTED,
    Archive,
    GridSpec,
    InsertInfo,
    cells_of,
    grid_cells,
    init,
    insert,
)
from elmjax.qd.cvt import CVTSpec, cvt_centroids, kmeans, nearest_centroid
from elmjax.qd.metrics import metrics, metrics_host
from elmjax.qd.selection import cell_weights, sample_cells, sample_parents

__all__ = [
    "IMPROVED",
    "NEW_CELL",
    "REJECTED",
    "Archive",
    "CVTSpec",
    "GridSpec",
    "InsertInfo",
    "cell_weights",
    "cells_of",
    "cvt_centroids",
    "grid_cells",
    "init",
    "insert",
    "kmeans",
    "metrics",
    "metrics_host",
    "nearest_centroid",
    "sample_cells",
    "sample_parents",
]
