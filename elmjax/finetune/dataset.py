"""Stage-2 datasets: the programs ELM found, as queries over the runs' program stores.

    runs --open_run--> each store's valid programs within `within` of their niche's best
         --pool--> best per niche over every run; keep fitness >= best - within * |best|
         --drop--> the excluded seed lineages (OOD test, operator benchmark)
         --dedup--> one program per normalised syntax tree (`ast.dump`), its fittest copy
         --split--> 5% held out, chosen by a hash of the syntax tree (stable, order-free)

Refused before any training, with a message naming the run: a directory that is not a run, a
run of another domain, a store with no committed programs, a run made under other physics than
this elmjax simulates (its `provenance.json` physics identity), runs on different grids, and a
dataset smaller than one batch. Scores from another simulator would teach the model walkers
that no longer walk, so they are never mixed in silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmjax.finetune.config import FinetuneConfig
from elmjax.finetune.prompts import normal_form
from elmjax.run_dir import RunDirError, check_physics, load_run_config, open_run


class DatasetError(ValueError):
    """A run or a dataset that stage 2 refuses (the message names the run)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One program of the dataset, with where it came from."""

    text: str
    fitness: float
    descriptor: tuple[float, ...]
    cell: int
    niche: tuple[float, ...]  # centre of its cell (what a conditioned prompt names)
    run: str
    program_id: int


@dataclasses.dataclass
class Dataset:
    train: list[Example]
    held_out: list[Example]
    stats: dict[str, Any]
    grid: dict[str, Any]  # GridSpec fields (shape, low, high)
    run_config: dict[str, Any]  # the first run's config: environment and archive to evaluate in

    def fingerprint(self) -> str:
        """sha256 over the normal forms of train and held-out programs (resume checks it)."""
        h = hashlib.sha256()
        for part, examples in (("train", self.train), ("held_out", self.held_out)):
            h.update(part.encode())
            for e in examples:
                h.update((normal_form(e.text) or e.text).encode() + b"\0")
        return h.hexdigest()


def cell_centre(cell: int, shape: Sequence[int], low: Sequence[float], high: Sequence[float]):
    """Descriptor values at the centre of a (row-major) grid cell."""
    index = np.unravel_index(int(cell), tuple(shape))
    return tuple(
        float(lo + (i + 0.5) * (hi - lo) / n) for i, n, lo, hi in zip(index, shape, low, high)
    )


def excluded_normal_forms(names: Iterable[str]) -> set[str]:
    """Normal forms of the excluded seed programs (by name)."""
    from elmjax.sodarace.seeds import load_seed

    return {f for f in (normal_form(load_seed(n)) for n in names) if f is not None}


def excluded_ids(store: Any, roots: set[str]) -> set[int]:
    """Ids of every program that descends from (or is) a program whose normal form is in
    `roots`: a lineage is followed through all parents, generation by generation."""
    out: set[int] = set()
    for _, records in store.iter_generations():
        for r in records:
            if any(p in out for p in r.parents) or (
                (not r.parents or r.generation == 0) and normal_form(r.text) in roots
            ):
                out.add(r.program_id)
    return out


def _open_checked(path: Path) -> tuple[Any, Any]:
    """(run config, OpenRun) after the refusals that need only the run directory."""
    if not (path / "config.yaml").exists():
        raise DatasetError(f"run {path}: not a run directory (no config.yaml)")
    try:
        config = load_run_config(path)
    except Exception as err:
        raise DatasetError(f"run {path}: cannot read its config: {err}") from None
    if config.env.name != "sodarace":
        raise DatasetError(f"run {path}: a {config.env.name} run; stage 2 trains on Sodarace runs")
    try:
        check_physics(path, config)
    except RunDirError as err:
        raise DatasetError(f"run {path}: made under other physics, refused: {err}") from None
    run = open_run(path, config)
    if len(run.store) == 0 or run.store.last_generation() < 0:
        run.close()
        raise DatasetError(f"run {path}: its program store is empty (no committed generation)")
    return config, run


def build_dataset(run_dirs: Sequence[str | Path], cfg: FinetuneConfig) -> Dataset:
    """The stage-2 dataset of `run_dirs` (see the module docstring); raises DatasetError."""
    if not run_dirs:
        raise DatasetError("no run directories given")
    roots = excluded_normal_forms(cfg.exclude_lineages)
    grid: dict[str, Any] | None = None
    first_config: dict[str, Any] | None = None
    rows: list[tuple[str, Any]] = []
    per_run: dict[str, dict[str, int]] = {}
    excluded = 0
    for raw in run_dirs:
        path = Path(raw)
        config, run = _open_checked(path)
        with run:
            spec = run.spec
            this = {"shape": list(spec.shape), "low": list(spec.low), "high": list(spec.high)}
            if grid is None:
                grid, first_config = this, config.to_dict()
            elif this != grid:
                raise DatasetError(f"run {path}: its archive grid {this} differs from {grid}")
            skip = excluded_ids(run.store, roots)
            kept = run.store.stage2_dataset(cfg.within, distinct_text=False)
            allowed = [r for r in kept if r.program_id not in skip]
            per_run[str(path)] = {
                "programs": len(run.store),
                "within_cutoff": len(kept),
                "excluded_lineage": len(kept) - len(allowed),
            }
            excluded += len(kept) - len(allowed)
            rows += [(str(path), r) for r in allowed]
    assert grid is not None and first_config is not None
    # the niche's best over every run given (each run's best row is in its query's result)
    best: dict[int, float] = {}
    for _, r in rows:
        best[r.cell] = max(best.get(r.cell, -np.inf), float(r.fitness))
    unique: dict[str, Example] = {}
    duplicates = unparsable = pooled = 0
    for run_path, r in rows:
        b = best[r.cell]
        if float(r.fitness) < b - cfg.within * abs(b):
            continue
        pooled += 1
        form = normal_form(r.text)
        if form is None:
            unparsable += 1
            continue
        if form in roots:
            excluded += 1
            continue
        example = Example(
            text=r.text,
            fitness=float(r.fitness),
            descriptor=tuple(float(v) for v in r.descriptor),
            cell=int(r.cell),
            niche=cell_centre(r.cell, grid["shape"], grid["low"], grid["high"]),
            run=run_path,
            program_id=int(r.program_id),
        )
        old = unique.get(form)
        if old is not None:
            duplicates += 1
            if example.fitness <= old.fitness:
                continue
        unique[form] = example
    order = sorted(
        unique.items(), key=lambda fe: hashlib.sha256(f"{cfg.seed}:{fe[0]}".encode()).hexdigest()
    )
    n_hold = max(1, round(cfg.holdout * len(order))) if len(order) > 1 else 0
    held = sorted((e for _, e in order[:n_hold]), key=_example_key)
    train = sorted((e for _, e in order[n_hold:]), key=_example_key)
    if len(train) < cfg.batch_size:
        names = ", ".join(str(p) for p in run_dirs)
        raise DatasetError(
            f"runs {names}: the dataset has {len(train)} training programs (within "
            f"{cfg.within:.0%} of their niche's best, de-duplicated, {n_hold} held out), fewer "
            f"than one batch ({cfg.batch_size}); refused before training"
        )
    stats = {
        "runs": per_run,
        "within": cfg.within,
        "candidates": len(rows),  # within the cut-off of their own run's niche best
        "within_cutoff": pooled,  # ... and of the niche's best over every run given
        "duplicates": duplicates,
        "unparsable": unparsable,
        "excluded_lineage": excluded,
        "unique": len(unique),
        "train": len(train),
        "held_out": len(held),
        "niches": len({e.cell for e in train + held}),
    }
    return Dataset(train, held, stats, grid, first_config)


def _example_key(e: Example) -> tuple[Any, ...]:
    return (e.cell, -e.fitness, e.run, e.program_id)


# -- on disk: MODEL_DIR/data/ ------------------------------------------------------------------


def write_dataset(ds: Dataset, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, examples in (("train", ds.train), ("held_out", ds.held_out)):
        with (directory / f"{name}.jsonl").open("w") as f:
            for e in examples:
                f.write(json.dumps(dataclasses.asdict(e)) + "\n")
    meta = {
        "stats": ds.stats,
        "grid": ds.grid,
        "run_config": ds.run_config,
        "fingerprint": ds.fingerprint(),
    }
    (directory / "dataset.json").write_text(json.dumps(meta, indent=2, default=str))
    return directory


def read_dataset(directory: str | Path) -> Dataset:
    directory = Path(directory)
    meta = json.loads((directory / "dataset.json").read_text())
    parts = {}
    for name in ("train", "held_out"):
        parts[name] = []
        for line in (directory / f"{name}.jsonl").read_text().splitlines():
            d = json.loads(line)
            d["descriptor"] = tuple(d["descriptor"])
            d["niche"] = tuple(d["niche"])
            parts[name].append(Example(**d))
    return Dataset(
        parts["train"], parts["held_out"], meta["stats"], meta["grid"], meta["run_config"]
    )
