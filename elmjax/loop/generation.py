"""One generation of ELM, in two halves the pipeline schedules (docs/architecture.md, "Data flow").

```
prepare (host, a worker thread)   parents from A_{k-1-lag} -> operator.mutate -> sandbox
commit  (main thread)             env.evaluate (device) -> qd.insert (device, jit) -> store
                                  (one transaction) -> archive window
```

`prepare` reads only what it is handed (the parents' archive and their texts), so it can run
while the previous generation commits; `commit` is the only place the live archive, the window
and the store change. Program ids are assigned by position: seeds 0..S-1, then
`S + (k - 1) * batch_size + i`, so ids (and the `random` seed of each program in the sandbox)
never depend on timing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmjax import faults
from elmjax.config import ConfigError, RunConfig
from elmjax.distributed import SINGLE, Cluster, agree, exchange
from elmjax.evaluation import sandbox_programs, score_results
from elmjax.loop.keys import generation_keys, key_to_int
from elmjax.loop.operator import mutation_timings
from elmjax.loop.records import Candidate, Prepared, candidate_from_child, count, store_record
from elmjax.loop.resume import ArchiveWindow
from elmjax.run_dir import program_seed


def resolve_seed_programs(env: Any, names: Sequence[str]) -> dict[str, str]:
    """Seed program texts by name: the environment's seeds, or paths to .py files."""
    known = env.seed_programs()
    out: dict[str, str] = {}
    for name in names:
        if name in known:
            out[name] = known[name]
            continue
        path = Path(name)
        if path.suffix == ".py" and path.is_file():
            out[path.stem] = path.read_text()
            continue
        raise ConfigError(
            "seed_programs", f"{name!r} is neither a seed ({', '.join(known)}) nor a .py file"
        )
    return out


class GenerationStep:
    """Makes, runs, scores, inserts and stores the candidates of one generation.

    `pool` (a `SandboxPool`) and `limits` are set by the run once its sandbox pool is up.
    In a multi-process run (`cluster`) `prepare` makes and sandboxes this process's slice of
    the batch only, and `gather` joins the scored slices into the whole generation.
    """

    def __init__(
        self,
        config: RunConfig,
        env: Any,
        seed_texts: dict[str, str],
        spec: Any,
        operator: Any,
        store: Any,
        cluster: Cluster = SINGLE,
    ):
        self.cluster = cluster
        self.config = config
        self.env = env
        self.seed_texts = seed_texts
        self.n_seeds = len(seed_texts)
        self.spec = spec
        self.operator = operator
        self.store = store
        self.pool: Any = None
        self.limits: Any = None
        #: online fine-tuning (`elmjax.loop.finetune.OnlineFinetuner`), set by the run; None: off
        self.finetuner: Any = None
        self._weights_used: dict[int, int] = {}

    # -- numbering ------------------------------------------------------------------------------

    def parent_generation(self, generation: int) -> int:
        """Which archive generation k selects parents from: A_{k-1-lag}, never before A_0."""
        return max(0, generation - 1 - self.config.lag)

    def first_program_id(self, generation: int) -> int:
        if generation == 0:
            return 0
        return self.n_seeds + (generation - 1) * self.config.batch_size

    def evaluations_after(self, generation: int) -> int:
        return self.n_seeds + generation * self.config.batch_size

    def last_generation(self) -> int:
        """Index of the last generation the evaluation budget allows."""
        extra = max(0, self.config.budget - self.n_seeds)
        return math.ceil(extra / self.config.batch_size)

    # -- host half ------------------------------------------------------------------------------

    def prepare(self, generation: int, parents_archive: Any, texts: dict[int, str]) -> Prepared:
        """Host half of a generation: select parents, mutate, sandbox. Runs in the prep thread."""
        from elmjax import qd

        faults.fault_point(generation, "prepare")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cfg = self.config
        first = self.first_program_id(generation)
        if generation == 0:
            candidates = [
                Candidate(program_id=i, generation=0, text=text, operator="seed", prompt=name)
                for i, (name, text) in enumerate(self.seed_texts.items())
            ]
            lo, hi = self.cluster.shard(len(candidates))
            candidates = candidates[lo:hi]
        else:
            keys = generation_keys(cfg.seed, generation)
            n_prompts = cfg.batch_size // cfg.mutation.children_per_prompt
            cells = np.asarray(
                qd.sample_cells(parents_archive, keys["select"], n_prompts, cfg.archive.selection)
            )
            # every process draws every parent and hands the operator the whole batch (context:
            # crossover partners, the prompt length bucket), which mutates its own slice only
            lo, hi = self.cluster.shard(n_prompts)
            ids = np.asarray(parents_archive.program_id)[np.maximum(cells, 0)]
            parent_ids = [int(pid) for pid in ids]
            cell_of = {int(pid): int(c) for pid, c in zip(ids[lo:hi], cells[lo:hi])}
            timings["select"] = time.perf_counter() - t0
            if self.finetuner is not None:  # the weights this generation is due (may wait)
                t1 = time.perf_counter()
                self._weights_used[generation] = self.finetuner.weights_for(generation)
                timings["finetune_wait"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            children = self.operator.mutate(
                [texts[pid] for pid in parent_ids],
                cfg.mutation.children_per_prompt,
                key_to_int(keys["mutate"]),
                parent_ids=parent_ids,
                part=(lo, hi),
            )
            timings.update(mutation_timings(self.operator, time.perf_counter() - t1))
            expected = (hi - lo) * cfg.mutation.children_per_prompt
            if len(children) != expected:
                raise RuntimeError(
                    f"operator returned {len(children)} children, expected {expected}"
                )
            first += lo * cfg.mutation.children_per_prompt
            candidates = [
                candidate_from_child(child, first + i, generation, cell_of)
                for i, child in enumerate(children)
            ]
        t2 = time.perf_counter()
        self.sandbox(candidates)
        timings["sandbox"] = time.perf_counter() - t2
        return Prepared(generation, candidates, timings)

    def sandbox(self, candidates: list[Candidate]) -> None:
        """Run every candidate that has a text and no error yet; record value or error."""
        todo = [c for c in candidates if c.text is not None and c.error_kind is None]
        if not todo:
            return
        results = sandbox_programs(
            [c.text for c in todo],
            self.env,
            [program_seed(self.config.seed, c.program_id) for c in todo],
            pool=self.pool,
            limits=self.limits,
        )
        for cand, res in zip(todo, results):
            cand.seconds = res.seconds
            if res.ok:
                cand.result = res.value
            else:
                cand.error_kind = res.error.kind
                cand.error_message = res.error.message

    # -- device half ----------------------------------------------------------------------------

    def evaluate(self, prepared: Prepared) -> dict[str, float]:
        """Score every program that ran; failures stay invalid with their error."""
        faults.fault_point(prepared.generation, "simulate")
        ran = [c for c in prepared.candidates if c.error_kind is None and c.result is not None]
        if not ran:
            return {"simulate": 0.0}
        keys = generation_keys(self.config.seed, prepared.generation)
        scores, timings = score_results(
            self.env, [c.result for c in ran], key_to_int(keys["evaluate"])
        )
        for cand, score in zip(ran, scores):
            cand.fitness = score.fitness
            cand.descriptor = score.descriptor
            cand.valid = score.valid
            cand.extras = score.extras
            if not cand.valid:
                cand.error_kind = "simulation"
                cand.error_message = score.error
        return timings

    def gather(self, prepared: Prepared, stop: str | None) -> tuple[Prepared, str | None]:
        """Score this process's slice, then join every process's slice (in process order: the
        batch's order) and their stop reasons; one process: scores and returns it as it is.

        Records travel without the sandbox's value (the walker dict), which nothing after
        scoring needs; every process gets every record, so each inserts the same batch into its
        replicated archive and process 0 can store them."""
        if prepared.scored:
            return prepared, stop
        timings = dict(prepared.timings)
        timings.update(self.evaluate(prepared))
        if not self.cluster.multi:
            return Prepared(prepared.generation, prepared.candidates, timings, True), stop
        for cand in prepared.candidates:
            cand.result = None
        t0 = time.perf_counter()
        parts = exchange(
            (stop, prepared.candidates), self.cluster, f"generation {prepared.generation}"
        )
        timings["gather"] = time.perf_counter() - t0
        candidates = [c for _, shard in parts for c in shard]
        joined = Prepared(prepared.generation, candidates, timings, True)
        return joined, agree([reason for reason, _ in parts])

    def padded_batch(self, rows: Sequence[Candidate]) -> dict[str, np.ndarray]:
        """Arrays for `qd.insert`, padded to the batch size (program id -1) to reuse one compile."""
        size = max(self.config.batch_size, len(rows))
        dim = self.spec.dim
        batch = {
            "fitness": np.zeros(size, np.float32),
            "descriptor": np.zeros((size, dim), np.float32),
            "valid": np.zeros(size, bool),
            "program_id": np.full(size, -1, np.int32),
            "parent_cell": np.full(size, -1, np.int32),
        }
        for i, c in enumerate(rows):
            batch["program_id"][i] = c.program_id
            batch["parent_cell"][i] = c.parent_cell
            if c.valid:
                batch["fitness"][i] = c.fitness
                batch["descriptor"][i] = c.descriptor
                batch["valid"][i] = True
        return batch

    @staticmethod
    def insert(archive: Any, batch: dict[str, np.ndarray]) -> tuple[Any, Any]:
        from elmjax import qd

        return qd.insert(
            archive,
            batch["fitness"],
            batch["descriptor"],
            batch["valid"],
            batch["program_id"],
            parent_cell=batch["parent_cell"],
        )

    def commit(
        self, prepared: Prepared, window: ArchiveWindow, elapsed: Callable[[], float]
    ) -> dict[str, Any]:
        """Evaluate, insert, store one generation; returns its metrics row.

        The row goes into the store with the generation (its `info`), so metrics.jsonl can be
        rebuilt exactly for generations committed just before a kill.
        """
        prepared, _ = self.gather(prepared, None)
        timings = dict(prepared.timings)
        gen = prepared.generation
        faults.fault_point(gen, "insert")
        t0 = time.perf_counter()
        window.archive, info = self.insert(window.archive, self.padded_batch(prepared.candidates))
        status = np.asarray(info.status)
        cells = np.asarray(info.cell)
        timings["insert"] = time.perf_counter() - t0
        for i, cand in enumerate(prepared.candidates):
            cand.status = int(status[i])
            cand.cell = int(cells[i]) if cand.valid else -1
            if cand.entered:
                window.texts[cand.program_id] = cand.text
        row = self.metrics_row(prepared, window.archive, timings, elapsed)
        faults.fault_point(gen, "store")
        t1 = time.perf_counter()
        self.store.write_generation(gen, [store_record(c) for c in prepared.candidates], info=row)
        row["time"]["store"] = round(time.perf_counter() - t1, 6)
        faults.fault_point(gen, "stored")
        window.remember(gen)
        window.refresh_texts()
        return row

    def metrics_row(
        self,
        prepared: Prepared,
        archive: Any,
        timings: dict[str, float],
        elapsed: Callable[[], float],
    ) -> dict[str, Any]:
        from elmjax import qd

        cands = prepared.candidates
        m = qd.metrics_host(archive)
        return {
            "generation": prepared.generation,
            "evaluations": self.evaluations_after(prepared.generation),
            "coverage": m["coverage"],
            "num_filled": m["num_filled"],
            "num_cells": int(archive.num_cells),
            # elites filed in an edge cell because their descriptor is beyond the grid's range
            "num_clipped": m["num_clipped"],
            "qd_score": m["qd_score"],
            "max_fitness": m["max_fitness"],
            "mean_fitness": m["mean_fitness"],
            "valid_rate": sum(c.valid for c in cands) / max(1, len(cands)),
            "valid_rate_total": m["validity_total"],
            "new_cells": sum(c.status == 1 for c in cands),
            "improved": sum(c.status == 2 for c in cands),
            "errors": count(c.error_kind for c in cands if c.error_kind),
            "elapsed": elapsed(),
            "time": {k: round(v, 6) for k, v in timings.items()},
            **self.finetune_metrics(prepared.generation),
        }

    def finetune_metrics(self, generation: int) -> dict[str, Any]:
        """With online fine-tuning: which job's weights made this generation's children (-1:
        the base model) and, on the first generation that uses a job, what that job did."""
        if self.finetuner is None or generation == 0:
            return {}
        job = self._weights_used.pop(generation, self.finetuner.due(generation))
        out: dict[str, Any] = {"lm_weights": job}
        if job > 0 and self.finetuner.due(generation - 1) != job:
            out["finetune"] = self.finetuner.info.get(job, {})
        return out

    def after_commit(self, generation: int) -> None:
        """Generation `generation` is in the store: start the fine-tuning job it is due."""
        if self.finetuner is not None:
            self.finetuner.after_commit(generation)
