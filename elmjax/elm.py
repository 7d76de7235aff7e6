"""The ELM loop: MAP-Elites whose mutation operator is a code language model (DESIGN section 1).

One generation k:

```
select parents   archive A_{k-1-lag}, key fold_in(run, k)/select -> parent program ids (device)
mutate           operator.mutate(parents, n, seed): prompts, LM sample, apply diff (device+host)
sandbox          run every child's `entry` in worker processes, `check` -> plain data (host)
evaluate         env.evaluate: pack bodies, simulate jit(vmap(scan)) -> fitness, descriptor (device)
insert           qd.insert (jit) -> A_k, per-candidate status and cell
store            one SQLite transaction: every candidate + a generation-complete marker
log              metrics.jsonl, TensorBoard, progress bar; checkpoint every N generations
```

**Lag and the overlapped pipeline.** Parents of generation k are drawn from A_{k-1-lag}, the
archive before the last `lag` generations were inserted (`lag = 0` is textbook MAP-Elites).
With `lag >= 1`, generation k+1's parents are known before generation k is simulated, so a host
thread can make k+1's children (LM decode, diff apply, sandbox: mostly waiting on worker
processes and on XLA, which release the GIL) while the main thread simulates and inserts k.
`pipeline: sequential` runs the same stages one after another. Because *which* archive a
generation selects from is fixed by `lag`, never by what a thread happens to see, both pipelines
give bit-identical runs; the switch only changes the schedule (and the benchmark measures it).
On a CPU-only machine the "device" is the same cores the sandbox uses, so overlap mostly hides
IPC and I/O waits; on a GPU it hides all host work behind simulation and decoding.

**Determinism.** Every random choice is keyed: `fold_in(PRNGKey(seed), k)` split into select /
mutate / evaluate keys; sandbox programs get `random` seeded from (run seed, program id);
program ids are assigned by position (seeds 0..S-1, then `S + (k-1) * batch_size + i`).

**Exact resume.** The program store is the journal. A checkpoint (every `checkpoint_every`
generations, on SIGINT/SIGTERM and at the end) holds the last `lag + 1` archives. `--resume`
loads it, replays the archive inserts of the generations the store committed after it (insert is
deterministic, and the store keeps fitness/descriptor bit-exact), drops the uncommitted rows of a
generation cut off mid-way, and recomputes that generation: nothing lost, nothing duplicated.

`ELM(config, out).run()` is the Python API; `evolve_command` is the CLI's thin layer over it.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from elmjax import faults, run_dir
from elmjax.config import ConfigError, RunConfig, dump_config, load_config, parse_override

#: config keys `--resume` may override: they change when a run stops or how it is shown, never
#: what a generation computes (the pipeline schedule does not change results either).
RESUMABLE_KEYS = (
    "budget",
    "time_limit",
    "pipeline",
    "checkpoint_every",
    "keep_checkpoints",
    "report",
    "report_top",
    "progress",
)

#: exit codes of `elmjax evolve`.
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_DISK_FULL = 0, 1, 130, 3


class SeedError(RuntimeError):
    """No seed program produced a valid candidate, so there is nothing to mutate."""


class DiskFull(RuntimeError):
    """The disk filled up; the run stopped with its last checkpoint intact."""


# -- records ----------------------------------------------------------------------------------


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


@dataclass
class RunResult:
    """What `ELM.run` returns: where the run is and how it ended."""

    run_dir: Path
    status: str  # done | time_limit | interrupted | disk_full
    generations: int  # generations committed (seed generation included)
    evaluations: int
    metrics: dict[str, Any]
    archive: Any


# -- keys -------------------------------------------------------------------------------------

PURPOSES = ("select", "mutate", "evaluate")


def generation_keys(seed: int, generation: int) -> dict[str, jax.Array]:
    """`fold_in(run key, generation)` split per purpose: the only randomness of a generation."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), generation)
    return dict(zip(PURPOSES, jax.random.split(key, len(PURPOSES))))


def key_to_int(key: jax.Array) -> int:
    """A 31-bit integer seed from a key (for host-side code that takes an int seed)."""
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def program_seed(run_seed: int, program_id: int) -> int:
    """The seed of `random` inside the sandbox for one program: (run seed, program id)."""
    return int(np.random.SeedSequence([run_seed, program_id]).generate_state(1)[0] >> 1)


# -- the loop ---------------------------------------------------------------------------------


class ELM:
    """An ELM run over an `Environment`, writing a run directory. See the module docstring."""

    def __init__(
        self,
        config: RunConfig,
        out: str | Path | None = None,
        *,
        force: bool = False,
        resume: bool = False,
        on_generation: Callable[[dict[str, Any]], None] | None = None,
    ):
        config.check()
        self.config = config
        if out is None:
            out = Path("runs") / time.strftime("elm-%Y%m%d-%H%M%S")
        self.out = Path(out)
        self.force = force
        self.resuming = resume
        self.on_generation = on_generation
        self._stop_reason: str | None = None
        self._threads: list[threading.Thread] = []
        # Fail fast on the directory before loading anything heavy.
        if resume:
            run_dir.check_writable(self.out)
        else:
            run_dir.prepare_new(self.out, config, force=force)

    #: On an interrupt, return without waiting for a generation still being prepared (the CLI
    #: sets this and leaves with `os._exit`); otherwise `run` joins it (at most one generation's
    #: host work) so no thread outlives the call (JAX aborts if a thread is mid-computation
    #: while the interpreter shuts down).
    detach_on_interrupt = False

    def abandoned_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join_abandoned(self) -> None:
        for thread in self._threads:
            thread.join()
        self._threads = []

    @classmethod
    def resume(cls, out: str | Path, overrides: Sequence[str] = (), **kw: Any) -> ELM:
        """Continue the run in `out` exactly where it stopped (its own config.yaml).

        `overrides` (`key=value`) may only change when the run stops and how it is shown
        (`RESUMABLE_KEYS`: e.g. a larger budget to extend a finished run), never what a
        generation computes; the run's config.yaml is updated with them.
        """
        config = run_dir.load_run_config(out)
        if overrides:
            parsed = dict(parse_override(o) for o in overrides)
            for key in parsed:
                if key not in RESUMABLE_KEYS:
                    raise ConfigError(
                        key,
                        "cannot change when resuming (it would change the run); "
                        f"resumable keys: {', '.join(RESUMABLE_KEYS)}",
                    )
            config = config.replace(parsed)
            dump_config(config, Path(out) / run_dir.CONFIG)
        return cls(config, out, resume=True, **kw)

    # -- set-up -----------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        self.env = make_environment(cfg)
        self.seed_texts = resolve_seed_programs(self.env, cfg.seed_programs)
        self.n_seeds = len(self.seed_texts)
        self.spec = grid_spec(cfg, self.env)
        self.operator = make_mutation_operator(cfg, self.env)
        self.operator.load()  # a missing model fails now, not after the seeds are evaluated
        self.store = open_store(self.out / run_dir.STORE)
        self.checkpoints = open_checkpoints(self.out / run_dir.CHECKPOINTS, cfg.keep_checkpoints)
        self.timings_total: dict[str, float] = {}

    def _initial_state(self) -> None:
        """Fresh state, or the state of a killed run rebuilt from checkpoint + store journal."""
        from elmjax import qd

        self.texts: dict[int, str] = {}  # program id -> text, for elites of the window
        self.elapsed_before = 0.0
        if not self.resuming:
            self.window: dict[int, Any] = {}  # generation -> archive after it
            self.archive = qd.init(self.spec)
            self.next_generation = 0
            return
        if self.store.recovered:
            print(
                f"elmjax: generation(s) {self.store.recovered} were cut off; recomputing",
                file=sys.stderr,
            )
        self.window, self.next_generation = rebuild_window(
            self.store, self.checkpoints, self.spec, self.config.lag
        )
        self.archive = self.window[max(self.window)] if self.window else qd.init(self.spec)
        self._refresh_texts()
        rows = run_dir.MetricsLog.restore(self.out, self.out / run_dir.STORE)
        if rows:
            self.last_metrics = rows[-1]
            self.elapsed_before = float(rows[-1].get("elapsed", 0.0))

    # -- one generation -------------------------------------------------------------------------

    def parent_generation(self, generation: int) -> int:
        """Which archive generation k selects parents from: A_{k-1-lag}, never before A_0."""
        return max(0, generation - 1 - self.config.lag)

    def first_program_id(self, generation: int) -> int:
        if generation == 0:
            return 0
        return self.n_seeds + (generation - 1) * self.config.batch_size

    def evaluations_after(self, generation: int) -> int:
        return self.n_seeds + generation * self.config.batch_size

    def _prepare(self, generation: int, parents_archive: Any, texts: dict[int, str]) -> Prepared:
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
        else:
            keys = generation_keys(cfg.seed, generation)
            n_prompts = cfg.batch_size // cfg.mutation.children_per_prompt
            cells = np.asarray(
                qd.sample_cells(parents_archive, keys["select"], n_prompts, cfg.archive.selection)
            )
            ids = np.asarray(parents_archive.program_id)[np.maximum(cells, 0)]
            parent_ids = [int(pid) for pid in ids]
            cell_of = {int(pid): int(c) for pid, c in zip(ids, cells)}
            timings["select"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            children = self.operator.mutate(
                [texts[pid] for pid in parent_ids],
                cfg.mutation.children_per_prompt,
                key_to_int(keys["mutate"]),
                parent_ids=parent_ids,
            )
            timings.update(mutation_timings(self.operator, time.perf_counter() - t1))
            if len(children) != cfg.batch_size:
                raise RuntimeError(
                    f"operator returned {len(children)} children, expected {cfg.batch_size}"
                )
            candidates = [
                candidate_from_child(child, first + i, generation, cell_of)
                for i, child in enumerate(children)
            ]
        t2 = time.perf_counter()
        self._sandbox(candidates)
        timings["sandbox"] = time.perf_counter() - t2
        return Prepared(generation, candidates, timings)

    def _sandbox(self, candidates: list[Candidate]) -> None:
        todo = [c for c in candidates if c.text is not None and c.error_kind is None]
        if not todo:
            return
        results = self.pool.run(
            [c.text for c in todo],
            self.env.entry,
            self.env.check,
            limits=self.limits,
            seeds=[program_seed(self.config.seed, c.program_id) for c in todo],
            inject=getattr(self.env, "inject", None),
            call=getattr(self.env, "call", True),
        )
        for cand, res in zip(todo, results):
            cand.seconds = res.seconds
            if res.ok:
                cand.result = res.value
            else:
                cand.error_kind = res.error.kind
                cand.error_message = res.error.message

    def _evaluate(self, prepared: Prepared) -> dict[str, float]:
        """Device half: score every program that ran; failures stay invalid with their error."""
        faults.fault_point(prepared.generation, "simulate")
        ran = [c for c in prepared.candidates if c.error_kind is None and c.result is not None]
        if not ran:
            return {"simulate": 0.0}
        t0 = time.perf_counter()
        keys = generation_keys(self.config.seed, prepared.generation)
        evaluation = self.env.evaluate([c.result for c in ran], seed=key_to_int(keys["evaluate"]))
        seconds = time.perf_counter() - t0
        fitness = np.asarray(evaluation.fitness, np.float32)
        descriptor = np.asarray(evaluation.descriptor, np.float32)
        valid = np.asarray(evaluation.valid, bool)
        for i, cand in enumerate(ran):
            cand.fitness = float(fitness[i])
            cand.descriptor = tuple(float(x) for x in descriptor[i])
            cand.valid = bool(valid[i])
            cand.extras = {k: float(np.asarray(v)[i]) for k, v in evaluation.extras.items()}
            if not cand.valid:
                cand.error_kind = "simulation"
                cand.error_message = evaluation.error[i] or "invalid"
        timings = getattr(evaluation, "timings", None) or getattr(self.env, "last_timings", None)
        if isinstance(timings, dict) and timings:
            return {k: float(v) for k, v in timings.items()}
        return {"simulate": seconds}

    def _padded_batch(self, rows: Sequence[Candidate]) -> dict[str, np.ndarray]:
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

    def _insert(self, batch: dict[str, np.ndarray]) -> tuple[Any, Any]:
        from elmjax import qd

        return qd.insert(
            self.archive,
            batch["fitness"],
            batch["descriptor"],
            batch["valid"],
            batch["program_id"],
            parent_cell=batch["parent_cell"],
        )

    def _remember(self, generation: int) -> None:
        """Keep A_generation in the window of archives later generations select from."""
        self.window[generation] = self.archive
        for g in [g for g in self.window if g < generation - self.config.lag]:
            del self.window[g]

    def _refresh_texts(self) -> None:
        """Program texts of every elite in the window (parents of the generations to come)."""
        needed: set[int] = set()
        for archive in self.window.values():
            ids = np.asarray(archive.program_id)
            needed.update(int(i) for i in ids[ids >= 0])
        missing = needed - self.texts.keys()
        if missing:
            self.texts.update(self.store.texts(sorted(missing)))
        self.texts = {i: self.texts[i] for i in needed}

    def _texts_for(self, archive: Any) -> dict[int, str]:
        ids = np.asarray(archive.program_id)
        return {int(i): self.texts[int(i)] for i in ids[ids >= 0]}

    def _commit(self, prepared: Prepared) -> dict[str, Any]:
        """Evaluate, insert, store one generation; returns its metrics row.

        The row goes into the store with the generation (its `info`), so metrics.jsonl can be
        rebuilt exactly for generations committed just before a kill.
        """
        timings = dict(prepared.timings)
        timings.update(self._evaluate(prepared))
        gen = prepared.generation
        faults.fault_point(gen, "insert")
        t0 = time.perf_counter()
        self.archive, info = self._insert(self._padded_batch(prepared.candidates))
        status = np.asarray(info.status)
        cells = np.asarray(info.cell)
        timings["insert"] = time.perf_counter() - t0
        for i, cand in enumerate(prepared.candidates):
            cand.status = int(status[i])
            cand.cell = int(cells[i]) if cand.valid else -1
            if cand.entered:
                self.texts[cand.program_id] = cand.text
        row = self._metrics_row(prepared, timings)
        faults.fault_point(gen, "store")
        t1 = time.perf_counter()
        self.store.write_generation(gen, [store_record(c) for c in prepared.candidates], info=row)
        row["time"]["store"] = round(time.perf_counter() - t1, 6)
        faults.fault_point(gen, "stored")
        self._remember(gen)
        self._refresh_texts()
        return row

    # -- driver -------------------------------------------------------------------------------

    def _last_generation(self) -> int:
        """Index of the last generation the evaluation budget allows."""
        extra = max(0, self.config.budget - self.n_seeds)
        return math.ceil(extra / self.config.batch_size)

    def run(self) -> RunResult:
        """Run (or continue) until the budget, the time limit, a signal or a full disk."""
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        self._setup()
        from elmjax.sandbox import SandboxPool

        status = "done"
        previous_handlers = self._install_signal_handlers()
        self.metrics_log: run_dir.MetricsLog | None = None
        try:
            self._initial_state()
            self._write_provenance()
            self.metrics_log = run_dir.MetricsLog(self.out)
            with SandboxPool(
                sandbox_limits(self.config), preload=sandbox_preload(self.env)
            ) as pool:
                self.pool = pool
                self.limits = sandbox_limits(self.config)
                with make_progress(self.config, self) as progress:
                    self.progress = progress
                    status = self._loop()
        except DiskFull:
            status = "disk_full"
        finally:
            self._restore_signal_handlers(previous_handlers)
            if self.metrics_log is not None:
                self.metrics_log.close()
            self.store.close()
            self.checkpoints.close()
        if status != "interrupted" or not self.detach_on_interrupt:
            self.join_abandoned()
        result = RunResult(
            run_dir=self.out,
            status=status,
            generations=self.next_generation,
            evaluations=self.evaluations_after(self.next_generation - 1)
            if self.next_generation
            else 0,
            metrics=self.last_metrics if hasattr(self, "last_metrics") else {},
            archive=self.archive,
        )
        if status in ("done", "time_limit") and self.config.report:
            from elmjax.viz.report import write_report

            if self.progress.live or not self.progress.quiet:
                print("elmjax: writing the report (heatmaps, walker GIFs)...", file=sys.stderr)
            try:
                write_report(self.out)
            except Exception as err:  # the run itself is safe on disk; say how to retry
                print(
                    f"elmjax: the report failed ({type(err).__name__}: {err}); retry with "
                    f"`elmjax report {self.out}`",
                    file=sys.stderr,
                )
        return result

    def _loop(self) -> str:
        """Generations until the budget; stops early (between or during a generation's host
        half) on the time limit or a signal. Only committed generations count: one abandoned
        mid-way is recomputed by `--resume`."""
        cfg = self.config
        last = self._last_generation()
        prefetch = cfg.pipeline == "overlapped" and cfg.lag >= 1
        pending: dict[int, Future[Prepared]] = {}
        since_checkpoint = 0
        status = "done"
        try:
            gen = self.next_generation
            while gen <= last:
                if gen not in pending:
                    pending[gen] = self._submit_prepare(gen)
                prepared, status = self._wait(pending.pop(gen))
                if prepared is None:
                    break
                # Generation gen+1 selects from A_{gen-lag}, which exists now (lag >= 1).
                if prefetch and gen + 1 <= last and gen >= 1:
                    pending[gen + 1] = self._submit_prepare(gen + 1)
                row = self._with_disk_guard(self._commit, prepared)
                if gen == 0 and not np.any(np.asarray(self.archive.program_id) >= 0):
                    raise SeedError(
                        "no seed program gave a valid candidate: "
                        + "; ".join(
                            f"{c.prompt}: {c.error_kind}: {c.error_message}"
                            for c in prepared.candidates
                        )
                    )
                self.next_generation = gen + 1
                since_checkpoint += 1
                self._with_disk_guard(self._log, row)
                if since_checkpoint >= cfg.checkpoint_every:
                    self._with_disk_guard(self._checkpoint)
                    since_checkpoint = 0
                gen += 1
            if since_checkpoint:
                self._with_disk_guard(self._checkpoint)
        finally:
            for future in pending.values():
                future.cancel()
        return status

    def _submit_prepare(self, gen: int) -> Future[Prepared]:
        """Start generation `gen`'s host half (select, mutate, sandbox) in a daemon thread.

        Both pipelines run it off the main thread so that the main thread stays responsive to
        signals and the time limit; `sequential` simply waits for it before doing anything else.
        A daemon thread (not an executor) lets the process exit without finishing an abandoned
        generation (minutes of LM decoding on a CPU).
        """
        if gen == 0:
            args: tuple[Any, ...] = (0, None, {})
        else:
            parents = self.window[self.parent_generation(gen)]
            args = (gen, parents, self._texts_for(parents))
        future: Future[Prepared] = Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self._prepare(*args))
            except BaseException as err:  # delivered to the main thread by `_wait`
                future.set_exception(err)

        thread = threading.Thread(target=work, name=f"elm-prepare-{gen}", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return future

    def _wait(self, future: Future[Prepared]) -> tuple[Prepared | None, str]:
        """The prepared generation, or (None, reason) when a signal or the time limit comes
        first (checked 5 times a second while waiting)."""
        limit = self.config.time_limit
        while True:
            if self._stop_reason:
                return None, self._stop_reason
            if limit is not None and self._elapsed() >= limit:
                return None, "time_limit"
            try:
                return future.result(timeout=0.2), "done"
            except FutureTimeout:
                continue

    def _elapsed(self) -> float:
        """Wall-clock seconds of the run, earlier sessions of a resumed run included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def _with_disk_guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Turn a full disk (OSError ENOSPC, SQLite 'disk is full') into a clean stop."""
        try:
            return fn(*args)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                self._report_disk_full(err)
            raise
        except sqlite3.OperationalError as err:
            if "full" in str(err).lower():
                self._report_disk_full(err)
            raise

    def _report_disk_full(self, err: BaseException) -> None:
        print(
            f"elmjax: disk full ({err}); stopped. The last checkpoint in {self.out} is intact: "
            f"free space and run `elmjax evolve --resume {self.out}`",
            file=sys.stderr,
        )
        raise DiskFull(str(err)) from err

    def _checkpoint(self) -> None:
        gen = self.next_generation - 1
        faults.fault_point(gen, "checkpoint")
        lag = self.config.lag
        archives = [
            self.window.get(g, self.window[min(self.window)]) for g in range(gen - lag, gen + 1)
        ]
        self.checkpoints.save(gen, archives)

    def _metrics_row(self, prepared: Prepared, timings: dict[str, float]) -> dict[str, Any]:
        from elmjax import qd

        cands = prepared.candidates
        m = qd.metrics_host(self.archive)
        return {
            "generation": prepared.generation,
            "evaluations": self.evaluations_after(prepared.generation),
            "coverage": m["coverage"],
            "num_filled": m["num_filled"],
            "qd_score": m["qd_score"],
            "max_fitness": m["max_fitness"],
            "mean_fitness": m["mean_fitness"],
            "valid_rate": sum(c.valid for c in cands) / max(1, len(cands)),
            "valid_rate_total": m["validity_total"],
            "new_cells": sum(c.status == 1 for c in cands),
            "improved": sum(c.status == 2 for c in cands),
            "errors": _count(c.error_kind for c in cands if c.error_kind),
            "elapsed": self._elapsed(),
            "time": {k: round(v, 6) for k, v in timings.items()},
        }

    def _log(self, row: dict[str, Any]) -> None:
        faults.fault_point(row["generation"], "metrics")
        for stage, seconds in row["time"].items():
            self.timings_total[stage] = self.timings_total.get(stage, 0.0) + seconds
        self.last_metrics = row
        self.metrics_log.write(row)
        self.progress.update(row)
        if self.on_generation is not None:
            self.on_generation(row)

    def _write_provenance(self) -> None:
        info = run_dir.provenance(
            self.config, model_provenance(self.config), store_schema_version()
        )
        run_dir.write_provenance(self.out, info, resumed=self.resuming)

    # -- signals --------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM finish the current generation, checkpoint, and stop (second: abort)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_reason:
                raise KeyboardInterrupt
            self._stop_reason = "interrupted"
            print(
                "\nelmjax: stopping (a generation still being prepared is dropped and "
                "recomputed on resume); a checkpoint follows; press again to abort",
                file=sys.stderr,
            )

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _count(items: Iterator[str] | Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def grid_spec(config: RunConfig, env: Any) -> Any:
    """The archive grid: config shape over the environment's descriptor space (or config bounds)."""
    from elmjax import qd

    space = env.descriptor_space
    if len(config.archive.shape) != space.dim:
        raise ConfigError(
            "archive.shape", f"needs {space.dim} axes for {space.names}, got {config.archive.shape}"
        )
    low = config.archive.low if config.archive.low is not None else space.low
    high = config.archive.high if config.archive.high is not None else space.high
    return qd.GridSpec(shape=config.archive.shape, low=low, high=high)


def rebuild_window(store: Any, checkpoints: Any, spec: Any, lag: int) -> tuple[dict[int, Any], int]:
    """Archives after the last `lag + 1` committed generations, and the next generation to run.

    The last checkpoint gives the archives up to its generation; every generation the store
    committed after it is replayed (one insert per generation, in order, bit-exact).
    """
    from elmjax import qd

    window: dict[int, Any] = {}
    restored = checkpoints.restore_latest([qd.init(spec) for _ in range(lag + 1)])
    start = 0
    archive = qd.init(spec)
    if restored is not None:
        last, archives = restored
        for i, saved in enumerate(archives):
            g = last - len(archives) + 1 + i
            if g >= 0:
                window[g] = saved
        archive = window[last]
        start = last + 1
    for g in [g for g in store.committed_generations() if g >= start]:
        archive = store.replay(archive, from_generation=g, to_generation=g)
        window[g] = archive
        for old in [k for k in window if k < g - lag]:
            del window[old]
        start = g + 1
    return window, start


# -- adapters to the pieces the loop wires (one place to change if an interface moves) --------


def make_environment(config: RunConfig) -> Any:
    if config.env.name == "sodarace":
        from elmjax.sodarace.env import Sodarace
        from elmjax.sodarace.physics import SimParams

        return Sodarace(
            terrain=config.env.terrain,
            params=SimParams(seconds=config.env.seconds),
            chunk=config.env.chunk or None,
        )
    from elmjax.envs.parity import Parity

    return Parity()


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


def make_mutation_operator(config: RunConfig, env: Any = None) -> Any:
    from elmjax.mutation.operators import make_operator

    m = config.mutation
    if m.operator == "gp":
        return TimedOperator(make_operator("gp"))
    return TimedOperator(
        make_operator(
            m.operator,
            model=m.model,
            env=env,
            temperature=m.temperature,
            top_p=m.top_p,
            top_k=m.top_k,
            max_new_tokens=m.max_new_tokens,
        )
    )


class TimedOperator:
    """An operator whose `mutate` also records its time split: `decode` (the LM sampler) and
    `apply` (prompt building, diff application, parsing: everything else)."""

    def __init__(self, operator: Any):
        self.operator = operator
        self.name = operator.name
        self.model_name = getattr(operator, "model_name", None)
        self.last_timings: dict[str, float] = {}
        self._decode = 0.0
        sample = getattr(operator, "_sample", None)
        if sample is not None:

            def timed_sample(*args: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return sample(*args, **kw)
                finally:
                    self._decode += time.perf_counter() - t0

            operator._sample = timed_sample

    def load(self) -> None:
        """Load the LM now (LM operators load it lazily on first use)."""
        if hasattr(self.operator, "sampler"):
            _ = self.operator.sampler

    def mutate(self, parents: list[str], n: int, seed: int, parent_ids: list[int]) -> list[Any]:
        self._decode = 0.0
        t0 = time.perf_counter()
        children = self.operator.mutate(parents, n, seed, parent_ids=parent_ids)
        total = time.perf_counter() - t0
        if self.name == "gp":
            self.last_timings = {"apply": total}
        else:
            self.last_timings = {"decode": self._decode, "apply": total - self._decode}
        return children


def mutation_timings(operator: Any, seconds: float) -> dict[str, float]:
    """The operator's own split (decode / apply) when it reports one, else one `mutate` figure."""
    split = getattr(operator, "last_timings", None)
    if isinstance(split, dict) and split:
        return {k: float(v) for k, v in split.items()}
    return {"mutate": seconds}


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


def sandbox_limits(config: RunConfig) -> Any:
    from elmjax.sandbox import Limits

    s = config.sandbox
    kw: dict[str, Any] = {
        "cpu_seconds": s.cpu_seconds,
        "wall_seconds": s.timeout,
        "address_space_bytes": s.memory_mb * 1024 * 1024,
    }
    if s.workers:
        kw["workers"] = s.workers
    return Limits(**kw)


def sandbox_preload(env: Any) -> tuple[str, ...]:
    """Modules the workers import once, at start (the check and what programs get injected)."""
    modules = [getattr(env.check, "__module__", "")]
    modules += [v.partition(":")[0] for v in (getattr(env, "inject", None) or {}).values()]
    return tuple(dict.fromkeys(m for m in modules if m and m != "__main__"))


def store_record(c: Candidate) -> Any:
    """A candidate as the program store's row (elmjax.store.ProgramRecord)."""
    from elmjax.store import ProgramRecord

    extras: dict[str, Any] = dict(c.extras)
    dx = extras.pop("dx", None)
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
    )


def store_schema_version() -> int:
    from elmjax.store import SCHEMA_VERSION

    return SCHEMA_VERSION


def open_store(path: Path) -> Any:
    from elmjax.store import ProgramStore

    return ProgramStore(path)


class WindowCheckpoints:
    """Checkpoints of the archive window (`elmjax.qd.checkpoint.Checkpointer`, orbax).

    Generation k's checkpoint holds A_k as the archive and A_{k-lag}..A_{k-1} as the extra tree:
    exactly what the next `lag + 1` generations select parents from.
    """

    def __init__(self, path: Path, keep: int, seed: int = 0):
        from elmjax.qd.checkpoint import Checkpointer

        self._checkpointer = Checkpointer(path, max_to_keep=keep)
        self._key = jax.random.PRNGKey(seed)

    def save(self, generation: int, archives: list[Any]) -> None:
        self._checkpointer.save(
            generation,
            archives[-1],
            self._key,
            meta={"window": len(archives)},
            tree=archives[:-1] or None,
        )

    def restore_latest(self, templates: list[Any]) -> tuple[int, list[Any]] | None:
        if self._checkpointer.latest_generation() is None:
            return None
        ckpt = self._checkpointer.restore(templates[-1], tree_template=templates[:-1] or None)
        return ckpt.generation, [*(ckpt.tree or []), ckpt.archive]

    def close(self) -> None:
        self._checkpointer.close()


def open_checkpoints(path: Path, keep: int) -> WindowCheckpoints:
    return WindowCheckpoints(path, keep)


def model_provenance(config: RunConfig) -> dict[str, Any] | None:
    """Model name and sha256 of its weights (None for the GP operator, which uses no model)."""
    if config.mutation.operator == "gp":
        return None
    info: dict[str, Any] = {"name": config.mutation.model}
    try:
        from elmjax.lm.registry import resolve

        kind, path = resolve(config.mutation.model)
        info["kind"] = kind
        info["path"] = str(path)
        info["sha256"] = run_dir.sha256_of(path) if Path(path).exists() else None
    except Exception as err:  # provenance must never stop a run
        info["sha256"] = None
        info["note"] = f"could not hash the weights: {err}"
    return info


# -- progress ---------------------------------------------------------------------------------


class _Progress:
    """Live bar (rich) on a terminal; a plain line every ~10 s otherwise."""

    def __init__(self, config: RunConfig, elm: ELM):
        self.config = config
        self.elm = elm
        mode = config.progress
        self.live = mode == "always" or (mode == "auto" and sys.stderr.isatty())
        self.quiet = mode == "never"
        self._last_print = 0.0
        self._bar = None
        self._first_evals: int | None = None
        self._t0 = time.perf_counter()

    def __enter__(self) -> _Progress:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]ELM[/]"),
                BarColumn(),
                TextColumn("{task.fields[evals]} evals"),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                console=Console(stderr=True),
                refresh_per_second=2,
            )
            self._bar.__enter__()
            # The bar shows whichever budget ends the run first: evaluations or wall clock.
            self._task = self._bar.add_task(
                "elm", total=1.0, evals="0", stats="starting...", eta="?"
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, row: dict[str, Any]) -> None:
        evals = row["evaluations"]
        now = time.perf_counter()
        if self._first_evals is None:
            self._first_evals, self._t0 = evals, now
        rate = (evals - self._first_evals) / max(now - self._t0, 1e-9)
        remaining = max(0, self.config.budget - evals) / rate if rate > 0 else float("inf")
        if self.config.time_limit is not None:
            remaining = min(remaining, max(0.0, self.config.time_limit - row["elapsed"]))
        eta = (
            "?" if not math.isfinite(remaining) else time.strftime("%M:%S", time.gmtime(remaining))
        )
        if remaining >= 3600 and math.isfinite(remaining):
            eta = f"{remaining / 3600:.1f}h"
        best = row["max_fitness"]
        stats = (
            f"cov {row['coverage']:.1%} | QD {row['qd_score']:.1f} | "
            f"max {best if math.isfinite(best) else float('nan'):.2f} | "
            f"valid {row['valid_rate']:.0%} | {rate:.1f} evals/s"
        )
        if self._bar is not None:
            done = evals / self.config.budget
            if self.config.time_limit is not None:
                done = max(done, row["elapsed"] / self.config.time_limit)
            self._bar.update(
                self._task,
                completed=min(done, 1.0),
                evals=f"{evals}/{self.config.budget}",
                stats=stats,
                eta=eta,
            )
        elif not self.quiet and (now - self._last_print > 10 or evals >= self.config.budget):
            self._last_print = now
            print(
                f"elmjax: gen {row['generation']} | {evals}/{self.config.budget} evals | {stats}"
                f" | ETA {eta}",
                file=sys.stderr,
                flush=True,
            )


def make_progress(config: RunConfig, elm: ELM) -> _Progress:
    return _Progress(config, elm)


# -- command line -----------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's config: YAML file (default config if none), then --set, then the shortcuts."""
    overrides = list(args.set or [])
    if args.model:
        overrides.append(f"mutation.model={args.model}")
    if args.operator:
        overrides.append(f"mutation.operator={args.operator}")
    config_path = args.config
    if config_path is None:
        default = default_config_path()
        config_path = default if default.exists() else None
    config = load_config(config_path, overrides)
    if args.seed_program:
        config = config.replace({"seed_programs": list(args.seed_program)})
    return config


def default_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "experiments" / "configs" / "default.yaml"


def evolve_command(args: argparse.Namespace) -> int:
    """`elmjax evolve`: parse the config, run, print where the report is."""
    try:
        if args.resume:
            if args.config or args.model or args.operator or args.seed_program or args.out:
                print(
                    "elmjax evolve: --resume continues a run with its own config.yaml; "
                    "drop --config/--out/--model/--operator/--seed-program (--set may change "
                    f"only {', '.join(RESUMABLE_KEYS)})",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            elm = ELM.resume(args.resume, args.set or ())
        else:
            config = config_from_args(args)
            elm = ELM(config, args.out, force=args.force)
    except (ConfigError, run_dir.RunDirError) as err:
        print(f"elmjax evolve: {err}", file=sys.stderr)
        return EXIT_ERROR
    from elmjax.lm.registry import ModelNotFound

    elm.detach_on_interrupt = True
    try:
        result = elm.run()
    except (ConfigError, SeedError, ModelNotFound) as err:
        print(f"elmjax evolve: {err}", file=sys.stderr)
        return EXIT_ERROR
    m = result.metrics
    summary = (
        f"elmjax: {result.status} after {result.evaluations} evaluations "
        f"({result.generations} generations)"
    )
    if m:
        summary += (
            f": coverage {m['coverage']:.1%}, QD score {m['qd_score']:.2f}, "
            f"max fitness {m['max_fitness']:.3f}"
        )
    print(summary, file=sys.stderr)
    report = result.run_dir / run_dir.REPORT / "index.html"
    if report.exists():
        print(f"elmjax: report: {report}", file=sys.stderr)
    if result.status in ("interrupted", "disk_full"):
        print(f"elmjax: continue with: elmjax evolve --resume {result.run_dir}", file=sys.stderr)
    code = {
        "done": EXIT_OK,
        "time_limit": EXIT_OK,
        "interrupted": EXIT_INTERRUPTED,
        "disk_full": EXIT_DISK_FULL,
    }[result.status]
    if elm.abandoned_alive():
        # A generation was still decoding when the user interrupted: everything of the run is
        # on disk and closed; leave now rather than wait for it (or let JAX abort at teardown).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
