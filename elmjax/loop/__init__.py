"""The ELM loop: MAP-Elites whose mutation operator is a code language model.

One generation k (docs/architecture.md, "Data flow of one generation"):

```
select parents   archive A_{k-1-lag}, key fold_in(run, k)/select -> parent program ids (device)
mutate           operator.mutate(parents, n, seed): prompts, LM sample, apply diff (device+host)
sandbox          run every child's `entry` in worker processes, `check` -> plain data (host)
evaluate         env.evaluate: pack bodies, simulate jit(vmap(scan)) -> fitness, descriptor (device)
insert           qd.insert (jit) -> A_k, per-candidate status and cell
store            one SQLite transaction: every candidate + a generation-complete marker
log              metrics.jsonl, TensorBoard, progress bar; checkpoint every N generations
```

One module per job:

| module | job |
|---|---|
| `run.py` | `ELM(config, out).run()`: wires the pieces, owns the run's lifetime |
| `generation.py` | one generation: host half `prepare`, device half `commit` |
| `schedule.py` | the pipeline: overlapped or sequential, stop on time limit or signal |
| `resume.py` | the archive window, checkpoints of it, exact resume from the store journal |
| `keys.py` | the PRNG keys of a generation (determinism) |
| `operator.py` | the configured mutation operator, timed (decode vs apply) |
| `records.py` | `Candidate` (one program's row), `Prepared`, `RunResult` |
| `guards.py` | SIGINT/SIGTERM and a full disk become a clean stop |
| `progress.py` | the progress bar / periodic line |
| `cli.py` | `elmjax evolve` |

Below the loop, and shared with the stages: `elmjax.evaluation` (program texts -> sandboxed,
scored results) and `elmjax.run_dir` (open a run directory). Nothing below imports the loop.
"""

from elmjax.loop.records import Candidate, RunResult, SeedError
from elmjax.loop.resume import RESUMABLE_KEYS
from elmjax.loop.run import ELM

__all__ = ["ELM", "RESUMABLE_KEYS", "Candidate", "RunResult", "SeedError"]
