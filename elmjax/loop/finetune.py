"""Online fine-tuning: the diff model learns from the run's own accepted diffs, beside the loop.

The ELM paper fine-tunes its diff model between runs on the diffs that entered the archive.
With `mutation.finetune_every: N` a run does it while it evolves:

- after generation k commits, for k a positive multiple of N, a *job* fine-tunes the model on
  every diff that entered the archive in generations 0..k (`ProgramStore.entered_edits`, rendered
  in the model's own diff format and packed: `elmjax.mutation.edit_data`), starting from the
  weights of job k - N (the base model for the first job), with `elmjax.lm.train`;
- jobs run one after another in a worker thread, beside the generations;
- generation g mutates with the weights of the newest job k with k + d <= g
  (d = `mutation.finetune_delay`), waiting for that job if it is still running.

So which weights make which children is fixed by the config, never by timing: a run that
fine-tunes is as deterministic as one that does not (same machine, same config, same seed).

**Checkpoint and resume.** A finished job's weights are written to `finetune/after-{k}/` in the
run directory (a model bundle, renamed into place whole) and the checkpoints refer to them by
generation. `--resume` reloads the jobs a generation still needs and recomputes any whose files
were lost with the killed process: a job's inputs (its start weights and the store up to k) are
on disk, so the recomputed weights are the same and the resumed run equals the uninterrupted one.

**Divergence.** Training steps whose loss, gradients or updated weights are not finite are
dropped (`TrainConfig.skip_nonfinite`), logged, and never stop the run; a job whose every step
was dropped leaves the weights as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

#: Where finished jobs' weights live in a run directory.
FINETUNE_DIR = "finetune"


def job_dir(out: Path, generation: int) -> Path:
    return Path(out) / FINETUNE_DIR / f"after-{generation:06d}"


def set_sampler_weights(sampler: Any, decoder: Any) -> None:
    """Give `sampler` the weights of `decoder` (same architecture) without recompiling: its
    jitted function takes the weights as an argument, so only the arrays change."""
    import jax
    from flax import nnx

    from elmjax.lm.partitioning import shard_state
    from elmjax.lm.state import cast_state, stack_layers, unstack_layers

    graph, state = nnx.split(unstack_layers(decoder))
    if jax.tree.structure(state) != jax.tree.structure(sampler.state):
        graph, state = nnx.split(stack_layers(decoder))

    def place(s: Any) -> Any:
        return jax.device_put(s) if sampler.mesh is None else shard_state(s, sampler.mesh)

    sampler.state = place(cast_state(state, sampler.dtype))
    if sampler.prefill_dtype == sampler.dtype:
        sampler.prefill_state = sampler.state
    else:
        sampler.prefill_state = place(cast_state(state, sampler.prefill_dtype))


class OnlineFinetuner:
    """The job schedule of one run (see the module docstring).

    `after_commit(k)` is called by the loop once generation k is in the store;
    `weights_for(g)` by the host half of generation g before it mutates. `next_generation` is
    where this session starts (0, or where `--resume` continues); jobs whose weights no
    generation up to `last_generation` (the budget's) would use are not run.
    """

    def __init__(
        self,
        config: Any,
        operator: Any,
        store: Any,
        out: Path,
        next_generation: int,
        last_generation: int,
    ):
        m = config.mutation
        self.last_generation = last_generation
        self.every = m.finetune_every
        self.delay = m.finetune_delay
        self.config = config
        self.operator = operator  # the DiffOperator (its sampler, model and diff format)
        self.store = store
        self.out = Path(out)
        self._lock = threading.Lock()
        self._jobs: dict[int, Future] = {}  # generation -> Future[decoder]
        self._queue: list[int] = []
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._weights: dict[int, Any] = {}  # finished jobs' decoders (the newest few)
        self._current = -1  # the job whose weights the sampler holds (-1: the base model)
        self.info: dict[int, dict[str, Any]] = {}  # job -> what it did (for the metrics)
        self._thread = threading.Thread(target=self._work, name="elm-finetune", daemon=True)
        self._thread.start()
        # a resumed run: the jobs of committed generations that generations to come still use
        # (older ones are needed only as start weights, loaded or recomputed on demand)
        for k in range(self.every, next_generation, self.every):
            if k >= self.due(next_generation):
                self._submit(k)

    # -- schedule ---------------------------------------------------------------------------

    def is_job(self, generation: int) -> bool:
        return generation > 0 and generation % self.every == 0

    def due(self, generation: int) -> int:
        """The job whose weights generation `generation` mutates with (-1: the base model)."""
        newest = (generation - self.delay) // self.every * self.every
        return newest if newest > 0 else -1

    def after_commit(self, generation: int) -> None:
        """Start job `generation` if it is one and a generation of this run will use it."""
        if self.is_job(generation) and generation + self.delay <= self.last_generation:
            self._submit(generation)

    def weights_for(self, generation: int) -> int:
        """Put the weights due for `generation` into the sampler (waiting for their job if it
        is still running); returns the job they came from (-1: base)."""
        k = self.due(generation)
        if k == self._current:
            return k
        decoder = self._base() if k < 0 else self._result(k)
        set_sampler_weights(self.operator.sampler, decoder)
        self._current = k
        return k

    def close(self) -> None:
        """Stop taking jobs; wait for the one running (if any): no JAX work may outlive the
        run (the interpreter aborts when a thread is mid-computation at exit)."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._wake.notify_all()
        self._thread.join()

    # -- jobs -------------------------------------------------------------------------------

    def _submit(self, k: int) -> None:
        with self._lock:
            if k in self._jobs:
                return
            self._jobs[k] = Future()
            self._queue.append(k)
            self._wake.notify_all()

    def _result(self, k: int) -> Any:
        """Job k's weights, waiting for the job to be started (the host half of generation g
        can begin before generation g - 1 commits) and to finish."""
        with self._lock:
            while k not in self._jobs and not self._closed:
                self._wake.wait()
            future = self._jobs.get(k)
        if future is None:
            raise RuntimeError(f"the run stopped before fine-tuning job {k} started")
        return future.result()

    def _base(self) -> Any:
        return self.operator.sampler.model.decoder

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                k = self._queue.pop(0)
                future = self._jobs[k]
            try:
                future.set_result(self._job(k))
            except BaseException as err:  # delivered to the generation that needs it
                future.set_exception(err)

    def _job(self, k: int) -> Any:
        """Job k's weights (worker thread): from memory, from its finished copy on disk, or
        trained from job k - N's weights (themselves found the same way) and saved."""
        from elmjax.lm import LanguageModel
        from elmjax.lm.bundle import load_saved_model, save_model

        if k <= 0:
            return self._base()
        if k in self._weights:
            return self._weights[k]
        path = job_dir(self.out, k)
        if (path / "config.json").exists():
            info_file = path / "job.json"
            if info_file.exists():
                self.info[k] = json.loads(info_file.read_text())
            decoder = load_saved_model(path).decoder
        else:
            start = self._job(k - self.every)
            try:
                decoder, info = self._train(start, k)
            except Exception as err:  # a job that fails costs its update, never the run
                decoder = start
                info = {"after_generation": k, "error": f"{type(err).__name__}: {err}"[:300]}
            base = self.operator.sampler.model
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(
                LanguageModel(
                    base.config, decoder, base.tokenizer, name=f"{base.name}@after-{k}",
                    source=base.source, diff_format=getattr(base, "diff_format", None),
                ),
                tmp,
            )  # fmt: skip
            (tmp / "job.json").write_text(json.dumps(info))
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
            self.info[k] = info
            self._prune(k)
        self._weights = {j: w for j, w in self._weights.items() if j >= k - self.every}
        self._weights[k] = decoder
        return decoder

    def _prune(self, k: int) -> None:
        """Keep the two newest jobs' files (a resume needs at most the newest finished one
        and, when it was lost, the one before it to recompute it)."""
        root = self.out / FINETUNE_DIR
        done = sorted(int(p.name.split("-")[1]) for p in root.glob("after-*[0-9]"))
        for old in done[:-2]:
            shutil.rmtree(job_dir(self.out, old), ignore_errors=True)

    def _train(self, start: Any, k: int) -> tuple[Any, dict[str, Any]]:
        from elmjax.lm.train import TrainConfig, train
        from elmjax.mutation.edit_data import edit_examples, pack_examples

        m = self.config.mutation
        edits = [(p, c) for _, p, c in self.store.entered_edits(up_to_generation=k)]
        info: dict[str, Any] = {"after_generation": k, "edits": len(edits)}
        examples = edit_examples(edits, self.operator.format)
        try:
            data, stats = pack_examples(
                self.operator.sampler.tokenizer, examples, m.finetune_seq_len, seed=k
            )
        except ValueError as err:  # nothing to learn from yet
            info.update(steps=0, note=str(err))
            return start, info
        tcfg = TrainConfig(
            steps=m.finetune_steps,
            batch_size=m.finetune_batch_size,
            lr=m.finetune_lr,
            warmup_steps=max(1, m.finetune_steps // 10),
            weight_decay=0.0,
            seed=k,
            lora_rank=m.finetune_lora_rank,
            log_every=max(1, m.finetune_steps),
            skip_nonfinite=True,
        )
        decoder, history = train(start, data, tcfg)
        last = history[-1] if history else {}
        skipped = int(last.get("skipped_total", 0))
        info.update(
            steps=m.finetune_steps,
            examples=stats["examples_kept"],
            loss=last.get("loss"),
            skipped_nonfinite=skipped,
        )
        if skipped:
            info["note"] = f"{skipped} non-finite step(s) dropped; weights kept from before them"
        return decoder, info
