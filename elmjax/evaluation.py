"""From program texts to sandboxed, simulated results: the evaluation every stage shares.

```
texts --sandbox_programs (host: worker processes, untrusted)--> ExecResult per text
      --score_results (the environment's `evaluate`: device for Sodarace)--> Score per program
```

`evaluate_programs(texts, env, ...)` does both, in one call, for whoever has program texts and
wants their outcome: stage 2 scoring a fine-tuned model's samples, stage 3 scoring the programs
its policy writes, a benchmark. The ELM loop (`elmjax.loop`) calls the two halves itself because
its pipeline runs them on different threads (the sandbox half of generation k+1 overlaps the
device half of generation k), but it calls exactly these functions, so a program scored here
scores as it would in a run with the same seeds. This module sits below the loop and imports
nothing from it (docs/architecture.md, "Module map").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from elmjax.config import RunConfig
from elmjax.run_dir import program_seed


@dataclass(frozen=True)
class Score:
    """One program's outcome from the environment's `evaluate` (host floats)."""

    fitness: float
    descriptor: tuple[float, ...]
    valid: bool
    error: str | None  # why the environment found it invalid; None when valid
    extras: dict[str, float] = field(default_factory=dict)  # domain figures (Sodarace: `dx`)


@dataclass(frozen=True)
class ProgramResult:
    """One program through sandbox and environment.

    `error_kind` is the sandbox's kind (`syntax`, `forbidden`, `timeout`, `memory`,
    `exception`, `invalid`, `crashed`), or `simulation` for a program that ran but that the
    environment found invalid; None when the program is valid. `fitness` is 0 and `descriptor`
    empty unless the program ran.
    """

    ok: bool  # ran and is valid
    error_kind: str | None
    error_message: str | None
    value: Any = None  # the sandbox's checked plain data (Sodarace: the walker dict)
    seconds: float | None = None  # sandbox wall time
    fitness: float = 0.0
    descriptor: tuple[float, ...] = ()
    extras: dict[str, float] = field(default_factory=dict)


def sandbox_limits(config: RunConfig) -> Any:
    """The sandbox `Limits` a run's config asks for."""
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


def sandbox_programs(
    texts: Sequence[str],
    env: Any,
    seeds: Sequence[int],
    *,
    pool: Any = None,
    limits: Any = None,
) -> list[Any]:
    """Run each text's `env.entry` in the sandbox and `env.check` its value (host, never raises
    for a bad program): one `elmjax.sandbox.ExecResult` per text, in order. `seeds` seed
    `random` per program (`program_seed`). Uses `pool` (a `SandboxPool`) when given, else the
    shared pool of `run_programs`."""
    if pool is None:
        from elmjax.sandbox import run_programs as run
    else:
        run = pool.run
    return run(
        list(texts),
        env.entry,
        env.check,
        limits=limits,
        seeds=list(seeds),
        inject=getattr(env, "inject", None),
        call=getattr(env, "call", True),
    )


def score_results(
    env: Any, values: Sequence[Any], seed: int
) -> tuple[list[Score], dict[str, float]]:
    """Score the checked values of programs that ran (`env.evaluate`, one batch): a `Score` per
    value, and the time it took split by stage (the environment's own split when it reports
    one, else `{"simulate": seconds}`)."""
    t0 = time.perf_counter()
    evaluation = env.evaluate(list(values), seed=seed)
    seconds = time.perf_counter() - t0
    fitness = np.asarray(evaluation.fitness, np.float32)
    descriptor = np.asarray(evaluation.descriptor, np.float32)
    valid = np.asarray(evaluation.valid, bool)
    scores = [
        Score(
            fitness=float(fitness[i]),
            descriptor=tuple(float(x) for x in descriptor[i]),
            valid=bool(valid[i]),
            error=None if valid[i] else (evaluation.error[i] or "invalid"),
            extras={k: float(np.asarray(v)[i]) for k, v in evaluation.extras.items()},
        )
        for i in range(len(values))
    ]
    timings = getattr(evaluation, "timings", None) or getattr(env, "last_timings", None)
    if isinstance(timings, dict) and timings:
        return scores, {k: float(v) for k, v in timings.items()}
    return scores, {"simulate": seconds}


def evaluate_programs(
    texts: Sequence[str],
    env: Any,
    *,
    seed: int = 0,
    run_seed: int = 0,
    program_ids: Sequence[int] | None = None,
    pool: Any = None,
    limits: Any = None,
) -> list[ProgramResult]:
    """Sandbox and score program texts: one `ProgramResult` per text, in order; never raises for
    a bad program (its result carries the error kind and message).

    `random` inside program i is seeded with `program_seed(run_seed, program_ids[i])` (ids
    default to 0..n-1), and `seed` is the environment's evaluation seed: with the seeds of a run
    (see `elmjax.loop.keys`), a program scores exactly as it did in that run.
    """
    ids = list(range(len(texts))) if program_ids is None else list(program_ids)
    if len(ids) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(ids)} program ids")
    ran = sandbox_programs(
        texts, env, [program_seed(run_seed, i) for i in ids], pool=pool, limits=limits
    )
    values = [r.value for r in ran if r.ok and r.value is not None]
    scores = iter(score_results(env, values, seed)[0] if values else [])
    out: list[ProgramResult] = []
    for res in ran:
        if not res.ok:
            out.append(ProgramResult(False, res.error.kind, res.error.message, seconds=res.seconds))
            continue
        if res.value is None:  # the loop leaves these unscored too
            out.append(ProgramResult(False, "invalid", "check returned nothing", None, res.seconds))
            continue
        s = next(scores)
        out.append(
            ProgramResult(
                ok=s.valid,
                error_kind=None if s.valid else "simulation",
                error_message=s.error,
                value=res.value,
                seconds=res.seconds,
                fitness=s.fitness,
                descriptor=s.descriptor,
                extras=s.extras,
            )
        )
    return out
