"""Quality-diversity metrics of an archive.

QD score = sum over filled cells of (fitness - qd_offset), with the offset from the archive's
spec (0 by default: Sodarace's fitness |dx| is never negative). The offset makes the score
monotone in coverage for domains whose fitness can be negative: set it to a lower bound of the
fitness. Validity is the fraction of real (non-padding) candidates that were valid, both for the
last inserted batch and over the whole run.

Clipped elites: the archive keeps each elite's own descriptor, and a descriptor beyond the grid's
`low`..`high` was filed in an edge cell (`archive.insert` clips). `num_clipped` counts those
elites and `clipped_cells` finds them, so that a run's metrics and report say how many of its
edge cells hold bodies the range does not describe (the 60-unit cell holding a 71-unit body).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from elmjax.qd.archive import Archive, check_archive


def _outside(archive: Archive) -> jax.Array:
    """[C] bool: filled cells whose elite's descriptor lies outside the spec's box."""
    low = jnp.asarray(archive.spec.low, jnp.float32)
    high = jnp.asarray(archive.spec.high, jnp.float32)
    out = (archive.descriptor < low) | (archive.descriptor > high)
    return (archive.program_id >= 0) & out.any(axis=-1)


@jax.jit
def metrics(archive: Archive) -> dict[str, jax.Array]:
    """Scalars: coverage, num_filled, qd_score, max/mean fitness, validity (last batch, total),
    num_clipped (elites filed in an edge cell because their descriptor is out of range)."""
    check_archive(archive, "qd.metrics")
    filled = archive.program_id >= 0
    num_filled = filled.sum(dtype=jnp.int32)
    fit = jnp.where(filled, archive.fitness, 0.0)
    safe = jnp.maximum(num_filled, 1)
    any_filled = num_filled > 0

    def rate(num, den):
        return jnp.where(den > 0, num / jnp.maximum(den, 1), jnp.nan).astype(jnp.float32)

    return {
        "num_filled": num_filled,
        "coverage": (num_filled / archive.fitness.shape[0]).astype(jnp.float32),
        "qd_score": jnp.where(filled, archive.fitness - archive.spec.qd_offset, 0.0).sum(),
        "max_fitness": jnp.where(
            any_filled, jnp.max(jnp.where(filled, archive.fitness, -jnp.inf)), jnp.nan
        ),
        "mean_fitness": jnp.where(any_filled, fit.sum() / safe, jnp.nan),
        "validity": rate(archive.last_n_valid, archive.last_n_evaluated),
        "validity_total": rate(archive.n_valid, archive.n_evaluated),
        "evaluated": archive.n_evaluated,
        "num_clipped": _outside(archive).sum(dtype=jnp.int32),
    }


def metrics_host(archive: Archive) -> dict[str, float | int]:
    """`metrics` as plain Python numbers (for metrics.jsonl / TensorBoard)."""
    out = jax.device_get(metrics(archive))
    return {k: (int(v) if v.dtype.kind in "iu" else float(v)) for k, v in out.items()}


def clipped_cells(archive: Archive) -> np.ndarray:
    """[C] bool, host: cells whose elite was clipped into them (descriptor out of range)."""
    return np.asarray(jax.device_get(_outside(archive)))


def row_cells(row: dict) -> int:
    """The grid's number of cells from a metrics row: `num_cells`, or num_filled / coverage
    for a row that lacks it."""
    return int(row.get("num_cells") or round(row["num_filled"] / max(row["coverage"], 1e-12)))


def coverage_text(filled: int, total: int) -> str:
    """ "7 of 1,728 cells (0.4%)": the count a person can check, and the share."""
    return f"{filled:,} of {total:,} cells ({filled / max(1, total):.1%})"
