"""Sandbox throughput: programs/s through a warm `SandboxPool`, against plain in-process `exec`.

Two corpora: the seven seed programs (repeated), and a mixed corpus where one program in ten is
hostile (every case of tests/hostile, timeouts included, under short limits). The baseline runs
the same *good* programs with `compile` + `exec` + `make_walker()` + `check_walker` in the
benchmark's own process (no isolation at all): once in one process, and once split over as many
forked processes as the pool has workers, so both sides get the same cores. The ratios are
sandbox programs/s over that same-cores baseline (higher is better; 1.0 would mean isolation is
free). The machine is shared, so wall-clock figures move with its load; CPU seconds per
program (the caller's plus the workers', read from /proc) are reported too, and the
`*_cpu_*` ratio (in-process CPU per program over sandbox CPU per program) is the steadier one.

    python benchmarks/sandbox_throughput.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import pathlib
import platform
import sys
import time

from elmjax.sandbox import Limits, SandboxPool
from elmjax.sodarace.seeds import load_seeds
from elmjax.sodarace.walker import check_walker, walker_creator

INJECT = {"walker_creator": "elmjax.sodarace.walker:walker_creator"}
HOSTILE_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "hostile"


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


def best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and of its reaped children (Linux /proc): a
    worker's template forks one child per program and reaps it."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def sandbox_cpu_per_program(
    pool: SandboxPool, sources: list[str], repeats: int, limits: Limits | None = None
) -> float:
    """CPU seconds per program spent by the caller and the workers together (best of repeats)."""
    best = float("inf")
    for _ in range(repeats):
        pids = pool.template_pids()
        before = time.process_time() + sum(process_cpu_seconds(p) for p in pids)
        pool.run(sources, "make_walker", check_walker, limits=limits, inject=INJECT)
        if pool.template_pids() != pids:
            continue  # a worker was replaced: its CPU time is lost, skip this repeat
        after = time.process_time() + sum(process_cpu_seconds(p) for p in pids)
        best = min(best, (after - before) / len(sources))
    return best


def inprocess_cpu_per_program(sources: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run_inprocess(sources)
        best = min(best, (time.process_time() - start) / len(sources))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpora, < 1 min")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    n = 420 if args.quick else 4200
    repeats = 2 if args.quick else 5
    base = Limits() if args.workers is None else Limits(workers=args.workers)
    workers = base.workers
    mixed_limits = dataclasses.replace(base, cpu_seconds=0.25, wall_seconds=1.0)

    seeds = seed_corpus(n)
    mixed, n_hostile = mixed_corpus(n)
    good_of_mixed = [s for k, s in enumerate(mixed) if k % 10 != 9]

    start = time.perf_counter()
    pool = SandboxPool(base, preload=("elmjax.sodarace.walker",))
    pool.run(seeds[:workers], "make_walker", check_walker, inject=INJECT)
    cold_start = time.perf_counter() - start
    with pool:
        pool.run(seeds, "make_walker", check_walker, inject=INJECT)  # warm
        t_seeds = best_of(
            repeats, lambda: pool.run(seeds, "make_walker", check_walker, inject=INJECT)
        )
        kinds: dict[str, int] = {}

        def run_mixed() -> None:
            results = pool.run(
                mixed, "make_walker", check_walker, limits=mixed_limits, inject=INJECT
            )
            kinds.clear()
            for r in results:
                key = "ok" if r.ok else r.error.kind
                kinds[key] = kinds.get(key, 0) + 1

        t_mixed = best_of(max(1, repeats - 2), run_mixed)
        cpu_sandbox = sandbox_cpu_per_program(pool, seeds, repeats)
        fresh = dataclasses.replace(base, reuse_clean_process=False)
        t_fresh = best_of(
            repeats,
            lambda: pool.run(seeds, "make_walker", check_walker, limits=fresh, inject=INJECT),
        )
        cpu_fresh = sandbox_cpu_per_program(pool, seeds, repeats, limits=fresh)

    cpu_inproc = inprocess_cpu_per_program(seeds, repeats)
    t_inproc_1 = best_of(repeats, lambda: run_inprocess(seeds))
    t_inproc_good_mixed_1 = best_of(repeats, lambda: run_inprocess(good_of_mixed))
    chunks = [seeds[k::workers] for k in range(workers)]
    chunks_mixed = [good_of_mixed[k::workers] for k in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as procs:
        procs.map(run_inprocess, [c[:10] for c in chunks])  # warm
        t_inproc_n = best_of(repeats, lambda: procs.map(run_inprocess, chunks))
        t_inproc_mixed_n = best_of(repeats, lambda: procs.map(run_inprocess, chunks_mixed))

    figures = {
        "benchmark": "sandbox_throughput",
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "python": sys.version.split()[0],
        "workers": workers,
        "isolation": pool.isolation,
        "cold_start_s": cold_start,
        "seed_corpus": {
            "programs": n,
            "sandbox_programs_per_s": n / t_seeds,
            "inprocess_1proc_programs_per_s": n / t_inproc_1,
            "inprocess_same_cores_programs_per_s": n / t_inproc_n,
            "sandbox_cpu_ms_per_program": cpu_sandbox * 1e3,
            "sandbox_fresh_process_per_program_programs_per_s": n / t_fresh,
            "sandbox_fresh_process_per_program_cpu_ms_per_program": cpu_fresh * 1e3,
            "inprocess_cpu_ms_per_program": cpu_inproc * 1e3,
        },
        "mixed_corpus": {
            "programs": n,
            "hostile": n_hostile,
            "limits": {"cpu_seconds": 0.25, "wall_seconds": 1.0},
            "outcomes": kinds,
            "sandbox_programs_per_s": n / t_mixed,
            "inprocess_good_only_1proc_programs_per_s": len(good_of_mixed) / t_inproc_good_mixed_1,
            "inprocess_good_only_same_cores_programs_per_s": len(good_of_mixed) / t_inproc_mixed_n,
        },
    }
    figures["load_average"] = os.getloadavg()
    figures["ratios"] = {
        "seeds_cpu_vs_inprocess_exec": cpu_inproc / cpu_sandbox,
        "seeds_vs_inprocess_exec": (n / t_seeds) / (n / t_inproc_n),
        "seeds_fresh_process_vs_inprocess_exec": (n / t_fresh) / (n / t_inproc_n),
        "seeds_fresh_process_cpu_vs_inprocess_exec": cpu_inproc / cpu_fresh,
        "seeds_vs_inprocess_exec_1proc": (n / t_seeds) / (n / t_inproc_1),
        "mixed_vs_inprocess_exec_good_only": (n / t_mixed)
        / (len(good_of_mixed) / t_inproc_mixed_n),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
