"""Sandbox throughput: programs/s through a warm `SandboxPool`, against plain in-process `exec`.

Two corpora: the seven seed programs (repeated), and a mixed corpus where one program in ten is
hostile (every case of tests/hostile, timeouts included, under short limits). The baseline runs
the same *good* programs with `compile` + `exec` + `make_walker()` + `check_walker` in the
benchmark's own process (no isolation at all): once in one process, and once split over as many
forked processes as the pool has workers, so both sides get the same cores. The ratios are
sandbox over that baseline (higher is better; 1.0 would mean isolation is free).

The machine may be shared, so the headline figures are measured in *rounds*: each round times
the sandbox (wall clock and CPU seconds together), the same-cores baseline (wall clock) and the
one-process baseline (CPU seconds) back to back, in alternating order from round to round, after
a warm-up round that is not counted. Each ratio is taken within its round and the median over
the rounds is reported, with its spread (min, max, every round), so a burst of load on the
machine costs one round, not the figure. CPU seconds are the caller's plus every worker
process's (templates and program processes, live or reaped, read from /proc), split by role.

    python benchmarks/sandbox_throughput.py [--quick] [--rounds R] [--programs N] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import pathlib
import platform
import statistics
import sys
import time

from elmjax.sandbox import Limits, SandboxPool
from elmjax.sodarace.seeds import load_seeds
from elmjax.sodarace.walker import check_walker, walker_creator

INJECT = {"walker_creator": "elmjax.sodarace.walker:walker_creator"}
HOSTILE_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "hostile"
_TICK = os.sysconf("SC_CLK_TCK")


def seed_corpus(n: int) -> list[str]:
    seeds = list(load_seeds().values())
    return [seeds[k % len(seeds)] for k in range(n)]


def mixed_corpus(n: int) -> tuple[list[str], int]:
    """n programs, one in ten hostile (cycling through every hostile case); also returns how
    many are hostile."""
    hostile = [p.read_text() for p in sorted(HOSTILE_DIR.glob("*.py"))]
    good = seed_corpus(n)
    out, bad = [], 0
    for k in range(n):
        if k % 10 == 9:
            out.append(hostile[bad % len(hostile)])
            bad += 1
        else:
            out.append(good[k])
    return out, bad


def run_inprocess(sources: list[str]) -> int:
    """What the sandbox saves the caller from doing unprotected: compile, exec, call, check."""
    for source in sources:
        namespace = {"walker_creator": walker_creator, "__name__": "__program__"}
        exec(compile(source, "<program>", "exec"), namespace)
        check_walker(namespace["make_walker"]())
    return len(sources)


def _stat_seconds(pid: int) -> tuple[float, float]:
    """(own user+system CPU seconds, reaped children's) of a process, from /proc; zeros when
    it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    own = (int(fields[11]) + int(fields[12])) / _TICK
    return own, (int(fields[13]) + int(fields[14])) / _TICK


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def worker_cpu_seconds(pool: SandboxPool) -> tuple[float, float]:
    """(templates' own CPU seconds, program processes' CPU seconds): a template forks program
    processes, which may live across batches, so both the reaped ones (the template's children
    counters) and the live ones count."""
    templates = programs = 0.0
    for pid in pool.template_pids():
        own, reaped = _stat_seconds(pid)
        templates += own
        programs += reaped + sum(sum(_stat_seconds(c)) for c in _children(pid))
    return templates, programs


def time_sandbox(
    pool: SandboxPool, sources: list[str], limits: Limits | None = None
) -> dict[str, float] | None:
    """One pass: wall seconds and CPU seconds per program (caller, templates, program
    processes). None when a worker was replaced during the pass (its CPU time is lost)."""
    pids = pool.template_pids()
    templates0, programs0 = worker_cpu_seconds(pool)
    caller0 = time.process_time()
    start = time.perf_counter()
    results = pool.run(sources, "make_walker", check_walker, limits=limits, inject=INJECT)
    wall = time.perf_counter() - start
    caller = time.process_time() - caller0
    if pool.template_pids() != pids:
        return None
    templates1, programs1 = worker_cpu_seconds(pool)
    n = len(sources)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return {
        "wall_s": wall,
        "cpu_ms_per_program": (caller + templates1 - templates0 + programs1 - programs0) / n * 1e3,
        "caller_cpu_ms": caller / n * 1e3,
        "template_cpu_ms": (templates1 - templates0) / n * 1e3,
        "program_process_cpu_ms": (programs1 - programs0) / n * 1e3,
    }


def time_inprocess_cpu(sources: list[str]) -> float:
    """CPU ms per program of the one-process baseline."""
    start = time.process_time()
    run_inprocess(sources)
    return (time.process_time() - start) / len(sources) * 1e3


def time_wall(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(values: list[float]) -> dict[str, object]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": [round(v, 4) for v in values],
    }


def measure_seeds(
    pool: SandboxPool, procs, seeds: list[str], workers: int, rounds: int
) -> dict[str, object]:
    """The headline: `rounds` interleaved rounds (plus one warm-up) of sandbox, same-cores
    baseline and one-process baseline on the seed corpus."""
    chunks = [seeds[k::workers] for k in range(workers)]
    n = len(seeds)
    per_round: list[dict[str, float]] = []
    attempts = 0
    while len(per_round) < rounds + 1 and attempts < 3 * (rounds + 1):
        attempts += 1

        def sandbox() -> dict[str, float] | None:
            return time_sandbox(pool, seeds)

        def same_cores() -> float:
            return time_wall(lambda: procs.map(run_inprocess, chunks))

        if len(per_round) % 2 == 0:  # alternate the order: drift in load hits both sides
            sb, wall_base, cpu_base = sandbox(), same_cores(), time_inprocess_cpu(seeds)
        else:
            cpu_base, wall_base, sb = time_inprocess_cpu(seeds), same_cores(), sandbox()
        if sb is None:
            continue
        per_round.append(
            {
                **sb,
                "inprocess_same_cores_wall_s": wall_base,
                "inprocess_cpu_ms_per_program": cpu_base,
                "wall_ratio": wall_base / sb["wall_s"],
                "cpu_ratio": cpu_base / sb["cpu_ms_per_program"],
                "load_1min": os.getloadavg()[0],
            }
        )
    counted = per_round[1:]  # the first round warms caches and program processes up
    column = {key: [r[key] for r in counted] for key in counted[0]}
    med = {key: statistics.median(values) for key, values in column.items()}
    return {
        "programs": n,
        "rounds": len(counted),
        "sandbox_programs_per_s": n / med["wall_s"],
        "inprocess_same_cores_programs_per_s": n / med["inprocess_same_cores_wall_s"],
        "sandbox_cpu_ms_per_program": med["cpu_ms_per_program"],
        "sandbox_cpu_ms_per_program_by_role": {
            "caller": med["caller_cpu_ms"],
            "templates": med["template_cpu_ms"],
            "program_processes": med["program_process_cpu_ms"],
        },
        "inprocess_cpu_ms_per_program": med["inprocess_cpu_ms_per_program"],
        "wall_ratio": spread(column["wall_ratio"]),
        "cpu_ratio": spread(column["cpu_ratio"]),
        "load_1min": spread(column["load_1min"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpora, < 1 min")
    parser.add_argument("--rounds", type=int, default=None, help="counted rounds (7; quick 5)")
    parser.add_argument("--programs", type=int, default=None, help="seed corpus size")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    n = args.programs or (420 if args.quick else 2100)
    rounds = args.rounds or (5 if args.quick else 7)
    n_mixed = 420 if args.quick else 2100
    base = Limits() if args.workers is None else Limits(workers=args.workers)
    workers = base.workers
    mixed_limits = dataclasses.replace(base, cpu_seconds=0.25, wall_seconds=1.0)

    seeds = seed_corpus(n)
    mixed, n_hostile = mixed_corpus(n_mixed)
    good_of_mixed = [s for k, s in enumerate(mixed) if k % 10 != 9]
    load_before = os.getloadavg()

    start = time.perf_counter()
    pool = SandboxPool(base, preload=("elmjax.sodarace.walker",))
    pool.run(seeds[:workers], "make_walker", check_walker, inject=INJECT)
    cold_start = time.perf_counter() - start
    with pool, multiprocessing.get_context("fork").Pool(workers) as procs:
        procs.map(run_inprocess, [seeds[:10]] * workers)  # warm
        headline = measure_seeds(pool, procs, seeds, workers, rounds)

        kinds: dict[str, int] = {}
        results = pool.run(mixed, "make_walker", check_walker, limits=mixed_limits, inject=INJECT)
        for r in results:
            key = "ok" if r.ok else r.error.kind
            kinds[key] = kinds.get(key, 0) + 1
        t_mixed = time_wall(
            lambda: pool.run(mixed, "make_walker", check_walker, limits=mixed_limits, inject=INJECT)
        )
        chunks_mixed = [good_of_mixed[k::workers] for k in range(workers)]
        t_inproc_mixed = time_wall(lambda: procs.map(run_inprocess, chunks_mixed))

        fresh = dataclasses.replace(base, reuse_clean_process=False)
        fresh_seeds = seeds[: min(n, 420)]
        time_sandbox(pool, fresh_seeds, limits=fresh)  # warm
        fresh_pass = time_sandbox(pool, fresh_seeds, limits=fresh)
        fresh_cpu_base = time_inprocess_cpu(fresh_seeds)

    figures = {
        "benchmark": "sandbox_throughput",
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "python": sys.version.split()[0],
        "workers": workers,
        "isolation": pool.isolation,
        "cold_start_s": cold_start,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seed_corpus": headline,
        "mixed_corpus": {
            "programs": n_mixed,
            "hostile": n_hostile,
            "limits": {"cpu_seconds": 0.25, "wall_seconds": 1.0},
            "outcomes": kinds,
            "sandbox_programs_per_s": n_mixed / t_mixed,
            "inprocess_good_only_same_cores_programs_per_s": len(good_of_mixed) / t_inproc_mixed,
        },
        "fresh_process_per_program": None
        if fresh_pass is None
        else {
            "programs": len(fresh_seeds),
            "sandbox_cpu_ms_per_program": fresh_pass["cpu_ms_per_program"],
            "inprocess_cpu_ms_per_program": fresh_cpu_base,
        },
    }
    figures["ratios"] = {
        "seeds_vs_inprocess_exec": headline["wall_ratio"]["median"],
        "seeds_cpu_vs_inprocess_exec": headline["cpu_ratio"]["median"],
        "mixed_vs_inprocess_exec_good_only": (n_mixed / t_mixed)
        / (len(good_of_mixed) / t_inproc_mixed),
    }
    if fresh_pass is not None:
        figures["ratios"]["seeds_fresh_process_cpu_vs_inprocess_exec"] = (
            fresh_cpu_base / fresh_pass["cpu_ms_per_program"]
        )
    print(json.dumps(figures, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
