"""What flows through a generation: a `Candidate` per program, from its making to its store row.

A candidate is created by the host half of a generation (a seed, or an operator's child), filled
in by the sandbox (`result` or an error), by the environment (`fitness`, `descriptor`, `valid`)
and by the archive insert (`status`, `cell`), and written to the program store as one row
(`store_record`). `Prepared` carries a generation's candidates from the host half to the
device half; `RunResult` is what `ELM.run` returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SeedError(RuntimeError):
    """No seed program produced a valid candidate, so there is nothing to mutate."""


@dataclass
class Candidate:
    """One program of one generation, from its making to its outcome (a store row)."""

    program_id: int
    generation: int
    text: str | None
    parents: tuple[int, ...] = ()
    parent_cell: int = -1
    operator: str = "seed"
    model: str | None = None
    temperature: float | None = None
    prompt: str | None = None
    raw_output: str | None = None
    error_kind: str | None = None
    error_message: str | None = None
    result: Any = None  # the sandbox's checked value, when the program ran
    seconds: float | None = None  # sandbox wall time
    detail: str | None = None  # what the operator did (GP: the mutation; diff: commit message)
    fitness: float = 0.0
    descriptor: tuple[float, ...] = ()
    valid: bool = False
    cell: int = -1
    status: int = 0  # qd.REJECTED / NEW_CELL / IMPROVED
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def entered(self) -> bool:
        return self.status != 0


@dataclass
class Prepared:
    """Generation k's children after mutate + sandbox: what the device half needs."""

    generation: int
    candidates: list[Candidate]
    timings: dict[str, float]
    #: the environment has scored the candidates already (a multi-process run scores each
    #: process's shard before the shards are gathered)
    scored: bool = False


@dataclass
class RunResult:
    """What `ELM.run` returns: where the run is and how it ended."""

    run_dir: Path
    status: str  # done | time_limit | interrupted | disk_full
    generations: int  # generations committed (seed generation included)
    evaluations: int
    metrics: dict[str, Any]
    archive: Any
    #: wall-clock seconds of the run when it stopped (earlier sessions included; the report
    #: written afterwards not)
    elapsed: float | None = None


def candidate_from_child(
    child: Any, program_id: int, generation: int, cell_of: dict[int, int]
) -> Candidate:
    """A store-bound candidate from an operator's `Child` (failed children keep their error)."""
    parents = tuple(int(p) for p in child.parent_ids)
    return Candidate(
        program_id=program_id,
        generation=generation,
        text=child.text,
        parents=parents,
        parent_cell=cell_of.get(parents[0], -1) if parents else -1,
        operator=child.operator,
        model=child.model,
        temperature=child.temperature,
        prompt=child.prompt,
        raw_output=child.raw_output,
        error_kind=child.error_kind,
        error_message=child.error_message,
        detail=child.detail,
    )


def store_record(c: Candidate) -> Any:
    """A candidate as the program store's row (elmjax.store.ProgramRecord)."""
    from elmjax.store import DIAGNOSTIC_COLUMNS, ProgramRecord

    extras: dict[str, Any] = dict(c.extras)
    dx = extras.pop("dx", None)
    diagnostics = {name: extras.pop(name, None) for name in DIAGNOSTIC_COLUMNS}
    if c.detail:
        extras["detail"] = c.detail
    return ProgramRecord(
        program_id=c.program_id,
        text=c.text or "",
        parents=list(c.parents),
        parent_cell=c.parent_cell,
        operator=c.operator,
        model=c.model,
        temperature=c.temperature,
        prompt=c.prompt,
        raw_output=c.raw_output,
        outcome_kind=c.error_kind or "ok",
        outcome_message=c.error_message,
        valid=c.valid,
        fitness=c.fitness if c.valid else None,
        descriptor=list(c.descriptor) if c.valid else None,
        cell=c.cell,
        entered=c.entered,
        status=c.status,
        dx=dx,
        seconds=c.seconds,
        extras=extras or None,
        **diagnostics,
    )


def count(items: Iterable[str]) -> dict[str, int]:
    """How often each item occurs, in order of first occurrence (error kinds of a generation)."""
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out
