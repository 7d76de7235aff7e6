"""The pipeline schedule: which generation's host half runs while which one commits.

With `lag >= 1`, generation k+1's parents (A_{k-lag}) exist before generation k is simulated,
so `overlapped` starts k+1's host half (LM decode, diff apply, sandbox: mostly waiting on
worker processes and on XLA, which release the GIL) in a thread while the main thread commits
k (simulate, insert, store). `sequential` runs one stage after the other. *Which* archive a
generation selects from is fixed by `lag`, never by what a thread happens to see, so both give
bit-identical runs; the switch only changes the schedule (and `benchmarks/e2e.py` measures it).
On a CPU-only machine the "device" is the same cores the sandbox uses, so overlap mostly hides
IPC and I/O waits; on a GPU it hides host work behind simulation and decoding.

Only committed generations count: a stop (time limit, signal) while a host half is still
running abandons that generation, and `--resume` recomputes it.

In a multi-process run the processes stop together: each finishes its slice of the generation,
and the stop reasons travel with the gathered slices (`GenerationStep.gather`); any reason on
any process stops every process before that generation commits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from elmjax.config import RunConfig
from elmjax.loop.generation import GenerationStep
from elmjax.loop.records import Prepared, SeedError
from elmjax.loop.resume import ArchiveWindow


class Pipeline:
    """Runs generations `next_generation..last` through a `GenerationStep`.

    `guard(fn, *args)` wraps every step that writes (commit, log, checkpoint): the run's disk
    guard. `log(row)` receives each committed generation's metrics row; `checkpoint()` saves the
    window after the last committed generation.
    """

    def __init__(
        self,
        config: RunConfig,
        step: GenerationStep,
        window: ArchiveWindow,
        *,
        next_generation: int,
        stop_reason: Callable[[], str | None],
        elapsed: Callable[[], float],
        guard: Callable[..., Any],
        log: Callable[[dict[str, Any]], None],
        checkpoint: Callable[[], None],
    ):
        self.config = config
        self.step = step
        self.window = window
        self.next_generation = next_generation
        self.stop_reason = stop_reason
        self.elapsed = elapsed
        self.guard = guard
        self.log = log
        self.checkpoint = checkpoint
        self.threads: list[threading.Thread] = []
        #: inside the generation loop with generations still to come after the current one
        #: (the other processes of the run will expect this one's next exchange); False once
        #: every process has left the loop together
        self.running = False

    def run(self) -> str:
        """Generations until the budget; stops early (between or during a generation's host
        half) on the time limit or a signal. Returns the status (done, time_limit, interrupted).
        """
        cfg = self.config
        last = self.step.last_generation()
        prefetch = cfg.pipeline == "overlapped" and cfg.lag >= 1
        joint = self.step.cluster.multi
        pending: dict[int, Future[Prepared]] = {}
        since_checkpoint = 0
        status = "done"
        try:
            gen = self.next_generation
            while gen <= last:
                self.running = gen < last
                if gen not in pending:
                    pending[gen] = self.submit(gen)
                prepared, status = self.wait(pending.pop(gen), joint)
                if prepared is None:
                    break
                # Generation gen+1 selects from A_{gen-lag}, which exists now (lag >= 1).
                if prefetch and gen + 1 <= last and gen >= 1:
                    pending[gen + 1] = self.submit(gen + 1)
                prepared, reason = self.step.gather(prepared, self.local_stop() if joint else None)
                if reason:
                    status = reason
                    self.running = False
                    break
                row = self.guard(self.step.commit, prepared, self.window, self.elapsed)
                if gen == 0 and not np.any(np.asarray(self.window.archive.program_id) >= 0):
                    raise SeedError(
                        "no seed program gave a valid candidate: "
                        + "; ".join(
                            f"{c.prompt}: {c.error_kind}: {c.error_message}"
                            for c in prepared.candidates
                        )
                    )
                self.next_generation = gen + 1
                self.step.after_commit(gen)
                since_checkpoint += 1
                self.guard(self.log, row)
                if since_checkpoint >= cfg.checkpoint_every:
                    self.guard(self.checkpoint)
                    since_checkpoint = 0
                gen += 1
            self.running = False
            if since_checkpoint:
                self.guard(self.checkpoint)
        finally:
            for future in pending.values():
                future.cancel()
        return status

    def submit(self, gen: int) -> Future[Prepared]:
        """Start generation `gen`'s host half (select, mutate, sandbox) in a daemon thread.

        Its parents and their texts are taken here, on the calling thread, from the window as it
        stands. Both pipelines run the host half off the main thread so that the main thread
        stays responsive to signals and the time limit; `sequential` simply waits for it before
        doing anything else. A daemon thread (not an executor) lets the process exit without
        finishing an abandoned generation (minutes of LM decoding on a CPU).
        """
        if gen == 0:
            args: tuple[Any, ...] = (0, None, {})
        else:
            args = (gen, *self.window.parents(self.step.parent_generation(gen)))
        future: Future[Prepared] = Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self.step.prepare(*args))
            except BaseException as err:  # delivered to the main thread by `wait`
                future.set_exception(err)

        thread = threading.Thread(target=work, name=f"elm-prepare-{gen}", daemon=True)
        thread.start()
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        return future

    def local_stop(self) -> str | None:
        """This process's own reason to stop now (a signal, the time limit), or None."""
        reason = self.stop_reason()
        if reason:
            return reason
        limit = self.config.time_limit
        if limit is not None and self.elapsed() >= limit:
            return "time_limit"
        return None

    def wait(self, future: Future[Prepared], joint: bool = False) -> tuple[Prepared | None, str]:
        """The prepared generation, or (None, reason) when a signal or the time limit comes
        first (checked 5 times a second while waiting). `joint` (a multi-process run): always
        the prepared generation; the stop decision is taken together, after it."""
        while True:
            reason = None if joint else self.local_stop()
            if reason:
                return None, reason
            try:
                return future.result(timeout=0.2), "done"
            except FutureTimeout:
                continue
