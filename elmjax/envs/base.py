"""What a domain provides to the ELM loop.

The loop (`elmjax/loop/`) knows nothing about walkers or parity functions. It asks a domain for
seed programs, for the name of the function every program defines (`entry`), for a `check` that
turns whatever that function returned into plain data *inside the sandbox worker* (so nothing a
program built is ever unpickled by the caller), for the descriptor space of the archive, and for
`evaluate`, which turns a batch of checked results into fitness, descriptor and validity.

`check` must be a module-level function importable without JAX: it runs in sandbox workers that
start fast and live under a small memory limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class DescriptorSpace:
    """Names, bounds and units of the behaviour descriptor; the archive grid spans `low`..`high`.

    `units` (one per dimension, or empty) labels axes in pictures and reports."""

    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    units: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.low) == len(self.high)):
            raise ValueError("descriptor names, low and high must have the same length")
        if self.units and len(self.units) != len(self.names):
            raise ValueError("descriptor units must be empty or one per dimension")
        if any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"descriptor low must be below high: {self.low} vs {self.high}")

    @property
    def dim(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Evaluation:
    """A batch of evaluated candidates, host arrays, one row per candidate in input order.

    `fitness` and `descriptor` are finite everywhere (0 where `valid` is False), so nothing
    downstream ever sees a NaN. `error` gives the reason a candidate is invalid (None if valid).
    `extras` holds domain-specific per-candidate figures (Sodarace: `dx`).
    """

    fitness: np.ndarray  # [B] float32
    descriptor: np.ndarray  # [B, D] float32
    valid: np.ndarray  # [B] bool
    error: list[str | None]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.fitness.shape[0])


@runtime_checkable
class Environment(Protocol):
    """A domain: programs that define `entry`, checked in the sandbox, scored in batches."""

    name: str
    entry: str
    descriptor_space: DescriptorSpace

    @property
    def check(self) -> Callable[[Any], Any]:
        """Module-level function run in the sandbox worker: entry's return value -> plain data.

        Raises (any exception) when the value is not acceptable; the sandbox reports `invalid`.
        """
        ...

    def seed_programs(self) -> dict[str, str]:
        """Seed program texts by name."""
        ...

    def evaluate(self, results: Sequence[Any], seed: int = 0) -> Evaluation:
        """Score a batch of `check` outputs (all from programs that ran)."""
        ...
