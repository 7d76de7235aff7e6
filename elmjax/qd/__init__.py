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
from elmjax.qd.cvt import (
    CVTSpec,
    build_bucket_index,
    cvt_centroids,
    indexed_nearest_centroid,
    kmeans,
    nearest_centroid,
    to_unit,
)
from elmjax.qd.metrics import clipped_cells, coverage_text, metrics, metrics_host
from elmjax.qd.selection import cell_weights, sample_cells, sample_parents

__all__ = [
    "IMPROVED",
    "NEW_CELL",
    "REJECTED",
    "Archive",
    "CVTSpec",
    "GridSpec",
    "InsertInfo",
    "build_bucket_index",
    "cell_weights",
    "cells_of",
    "clipped_cells",
    "coverage_text",
    "cvt_centroids",
    "grid_cells",
    "indexed_nearest_centroid",
    "init",
    "insert",
    "kmeans",
    "metrics",
    "metrics_host",
    "nearest_centroid",
    "sample_cells",
    "sample_parents",
    "to_unit",
]
