"""`ELM(config, out).run()`: an ELM run over an `Environment`, writing a run directory.

This module wires the pieces and owns the run's lifetime: it opens the run directory
(`elmjax.run_dir`), builds the operator and the generation step, restores the window on
`--resume`, starts the sandbox pool and the progress display, hands the generations to the
pipeline schedule, and turns signals and a full disk into a clean stop with a checkpoint. The
generation itself is in `generation.py`, the schedule in `schedule.py`, resume in `resume.py`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from elmjax import faults, run_dir
from elmjax.config import RunConfig
from elmjax.evaluation import sandbox_limits, sandbox_preload
from elmjax.loop import processes
from elmjax.loop.generation import GenerationStep, resolve_seed_programs
from elmjax.loop.guards import DiskFull, StopSignals, with_disk_guard
from elmjax.loop.operator import make_mutation_operator
from elmjax.loop.progress import make_progress
from elmjax.loop.records import RunResult, SeedError
from elmjax.loop.resume import ArchiveWindow, restore_metrics, resume_config
from elmjax.loop.schedule import Pipeline


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
        cluster: Any = None,
    ):
        config.check()
        # Join the other processes (if any) and turn on the compile cache before any JAX call.
        self.cluster = processes.join(config) if cluster is None else cluster
        self.config = config
        if out is None:
            out = Path("runs") / time.strftime("elm-%Y%m%d-%H%M%S")
        self.out = Path(out)
        self.force = force
        self.resuming = resume
        self.on_generation = on_generation
        self.signals = StopSignals()
        self.pipeline: Pipeline | None = None
        # Fail fast on the directory before loading anything heavy. What this creates is
        # remembered, so that a run refused before its first generation (a missing model, a
        # seed program that does not run) leaves nothing behind (`_discard_refused`).
        self._new_dir: Path | None = None
        self._new_config = False
        processes.check_same_config(self.cluster, config)
        if resume:

            def check_resumable() -> None:
                run_dir.check_writable(self.out)
                run_dir.check_physics(self.out, config)

            processes.on_leader(self.cluster, check_resumable, "the directory check")
        else:

            def prepare() -> None:
                self._new_dir = first_missing(self.out)
                self._new_config = not (self.out / run_dir.CONFIG).exists()
                run_dir.prepare_new(self.out, config, force=force)

            processes.on_leader(self.cluster, prepare, "the directory check")

    #: On an interrupt, return without waiting for a generation still being prepared (the CLI
    #: sets this and leaves with `os._exit`); otherwise `run` joins it (at most one generation's
    #: host work) so no thread outlives the call (JAX aborts if a thread is mid-computation
    #: while the interpreter shuts down).
    detach_on_interrupt = False

    def abandoned_alive(self) -> bool:
        return self.pipeline is not None and any(t.is_alive() for t in self.pipeline.threads)

    def join_abandoned(self) -> None:
        if self.pipeline is not None:
            for thread in self.pipeline.threads:
                thread.join()
            self.pipeline.threads = []

    @classmethod
    def resume(cls, out: str | Path, overrides: Sequence[str] = (), **kw: Any) -> ELM:
        """Continue the run in `out` exactly where it stopped (its own config.yaml).

        `overrides` (`key=value`) may only change when the run stops and how it is shown
        (`RESUMABLE_KEYS`: e.g. a larger budget to extend a finished run), never what a
        generation computes; the run's config.yaml is updated with them. In a multi-process
        run process 0 reads the run's config and sends it to the others, and the run must
        resume with the number of processes it started with.
        """
        launch = processes.launch_config(overrides)
        cluster = processes.join(launch)

        def leader_config() -> dict[str, Any]:
            processes.check_process_count(Path(out), cluster)
            return resume_config(out, overrides).to_dict()

        data = processes.on_leader(cluster, leader_config, "reading the run's config")
        data["distributed"] = launch.to_dict()["distributed"]
        return cls(RunConfig.from_dict(data), out, resume=True, cluster=cluster, **kw)

    @property
    def archive(self) -> Any:
        """The archive after the last committed generation."""
        return self.window.archive

    @property
    def next_generation(self) -> int:
        return self.pipeline.next_generation if self.pipeline is not None else 0

    # -- set-up -----------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        self.env = run_dir.make_environment(cfg)
        seed_texts = resolve_seed_programs(self.env, cfg.seed_programs)
        self.spec = run_dir.grid_spec(cfg, self.env)
        if cfg.mutation.finetune_every and self.cluster.multi:
            from elmjax.config import ConfigError

            raise ConfigError(
                "mutation.finetune_every", "online fine-tuning runs in one process only (today)"
            )
        self.operator = make_mutation_operator(cfg, self.env)
        self.operator.load()  # a missing model fails now, not after the seeds are evaluated
        if self.cluster.leader:
            self.store = run_dir.open_store(self.out / run_dir.STORE)
            self.checkpoints = run_dir.open_checkpoints(
                self.out / run_dir.CHECKPOINTS, cfg.keep_checkpoints
            )
        else:
            self.store = processes.FollowerStore()
            self.checkpoints = processes.FollowerCheckpoints()
        self.step = GenerationStep(
            cfg, self.env, seed_texts, self.spec, self.operator, self.store, self.cluster
        )
        self.timings_total: dict[str, float] = {}

    def _initial_state(self) -> None:
        """Fresh state, or the state of a killed run rebuilt from checkpoint + store journal."""
        self.elapsed_before = 0.0
        next_generation = 0
        if not self.resuming:
            self.window = ArchiveWindow.fresh(self.store, self.spec, self.config.lag)
        else:
            self.window, next_generation, last = self._restore()
            if last is not None:
                self.last_metrics = last
                self.elapsed_before = float(last.get("elapsed", 0.0))
        if self.config.mutation.finetune_every:
            from elmjax.loop.finetune import OnlineFinetuner

            self.step.finetuner = OnlineFinetuner(
                self.config,
                self.operator.operator,
                self.store,
                self.out,
                next_generation,
                self.step.last_generation(),
            )
        self.pipeline = Pipeline(
            self.config,
            self.step,
            self.window,
            next_generation=next_generation,
            stop_reason=lambda: self.signals.reason,
            elapsed=self._elapsed,
            guard=self._with_disk_guard,
            log=self._log,
            checkpoint=self._checkpoint,
        )

    def _restore(self) -> tuple[ArchiveWindow, int, dict[str, Any] | None]:
        """The window of a killed run, its next generation and last metrics row: rebuilt by
        process 0 from its checkpoint and store, and sent to the other processes."""
        import jax.numpy as jnp

        if self.cluster.leader:
            window, next_generation = ArchiveWindow.restore(
                self.store, self.checkpoints, self.spec, self.config.lag
            )
            last = restore_metrics(self.out)
            if not self.cluster.multi:
                return window, next_generation, last
            state = (
                {g: processes.to_host(a) for g, a in window.window.items()},
                window.texts,
                next_generation,
                last,
            )
        else:
            state = None
        from elmjax.distributed import broadcast

        archives, texts, next_generation, last = broadcast(
            state, self.cluster, "restoring the archive window"
        )
        if self.cluster.leader:
            return window, next_generation, last
        import jax

        restored = {g: jax.tree.map(jnp.asarray, a) for g, a in archives.items()}
        archive = (
            restored[max(restored)]
            if restored
            else ArchiveWindow.fresh(self.store, self.spec, self.config.lag).archive
        )
        follower = ArchiveWindow(self.store, self.config.lag, archive, restored)
        follower.texts = dict(texts)
        return follower, next_generation, last

    # -- driver -------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Run (or continue) until the budget, the time limit, a signal or a full disk."""
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        try:
            self._setup()
        except BaseException:
            self._close_partial()
            self._discard_refused()
            raise
        from elmjax.sandbox import SandboxPool

        status = "done"
        refused = False
        self.signals.install()
        self.metrics_log: run_dir.MetricsLog | None = None
        try:
            self._initial_state()
            if self.cluster.leader:
                self._write_provenance()
                self.metrics_log = run_dir.MetricsLog(self.out)
            with SandboxPool(
                sandbox_limits(self.config), preload=sandbox_preload(self.env)
            ) as pool:
                self.step.pool = pool
                self.step.limits = sandbox_limits(self.config)
                shown = self.config if self.cluster.leader else self._quiet_config()
                with make_progress(shown, self) as progress:
                    self.progress = progress
                    status = self.pipeline.run()
        except DiskFull:
            status = "disk_full"
            self._stop_the_others("disk_full")
        except SeedError:
            refused = True
            raise
        finally:
            self.signals.restore()
            if self.step.finetuner is not None:
                self.step.finetuner.close()
            if self.metrics_log is not None:
                self.metrics_log.close()
            self.store.close()
            self.checkpoints.close()
            if refused:
                self.join_abandoned()
                self._discard_refused()
        if status != "interrupted" or not self.detach_on_interrupt:
            self.join_abandoned()
        result = RunResult(
            run_dir=self.out,
            status=status,
            generations=self.next_generation,
            evaluations=self.step.evaluations_after(self.next_generation - 1)
            if self.next_generation
            else 0,
            metrics=self.last_metrics if hasattr(self, "last_metrics") else {},
            archive=self.archive,
            elapsed=self._elapsed(),
        )
        if status in ("done", "time_limit") and self.config.report and self.cluster.leader:
            self._write_report()
        return result

    def _stop_the_others(self, reason: str) -> None:
        """Process 0 stopped inside the generation loop on its own (a full disk): the others are
        waiting for its next slice; send them the stop reason in its place, so that every
        process stops at the same generation."""
        from elmjax.distributed import PeerLost, exchange

        if not (self.cluster.multi and self.pipeline is not None and self.pipeline.running):
            return
        with contextlib.suppress(PeerLost):
            exchange((reason, []), self.cluster, "stopping the other processes")

    def _close_partial(self) -> None:
        """Close what a failed `_setup` had opened."""
        for name in ("store", "checkpoints"):
            handle = getattr(self, name, None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()

    def _discard_refused(self) -> None:
        """Remove what this run created when it was refused before it had a run to keep: the
        directory if it made it, else only its config.yaml (never a resumed run's files, and
        never files that were there before)."""
        if self.resuming:
            return
        if self._new_dir is not None:
            shutil.rmtree(self._new_dir, ignore_errors=True)
        elif self._new_config and not run_dir.holds_run(self.out):
            (self.out / run_dir.CONFIG).unlink(missing_ok=True)

    def _write_report(self) -> None:
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

    def _elapsed(self) -> float:
        """Wall-clock seconds of the run, earlier sessions of a resumed run included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def _with_disk_guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        return with_disk_guard(self.out, fn, *args)

    def _checkpoint(self) -> None:
        gen = self.next_generation - 1
        faults.fault_point(gen, "checkpoint")
        self.window.checkpoint(self.checkpoints, gen)

    def _log(self, row: dict[str, Any]) -> None:
        faults.fault_point(row["generation"], "metrics")
        for stage, seconds in row["time"].items():
            self.timings_total[stage] = self.timings_total.get(stage, 0.0) + seconds
        self.last_metrics = row
        if self.metrics_log is not None:  # process 0 only
            self.metrics_log.write(row)
        self.progress.update(row)
        if self.on_generation is not None:
            self.on_generation(row)

    def _quiet_config(self) -> RunConfig:
        """Processes other than 0 show no progress (process 0 shows the run's)."""
        return self.config.replace({"progress": "never"})

    def _write_provenance(self) -> None:
        info = run_dir.provenance(
            self.config,
            run_dir.model_provenance(self.config),
            run_dir.store_schema_version(),
        )
        info["processes"] = self.cluster.num_processes
        run_dir.write_provenance(self.out, info, resumed=self.resuming)


def first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet (what creating `path`
    creates); None if `path` exists."""
    missing = None
    for candidate in (path.absolute(), *path.absolute().parents):
        if candidate.exists():
            break
        missing = candidate
    return missing
