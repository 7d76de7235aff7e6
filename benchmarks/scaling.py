"""Scaling on one host: 1 vs 2 devices, 1 vs 2 processes, per-device batch, compile cache.

Every figure is measured in its own subprocess (JAX fixes the device count and the distributed
state per process), in the same run, so ratios compare like with like:

- `sim`: simulator evaluations/s of the same walkers (64 copies of each seed: 448 walkers in
  5 size buckets, so every compiled call holds 32-128 lanes per device) for the same simulated
  time (T = 10 s), in three processes: one device pinned to one core, one device free to use
  both cores, and two host devices (`--xla_force_host_platform_device_count=2`: each device
  runs its lanes on its own thread, so on a 2-core machine the second device is the second
  core). XLA's CPU client also spreads some of a large call's work over its intra-op thread
  pool, so one unpinned device already takes part of the second core: the pinned run is the
  honest one-core baseline, and both ratios are reported. Each process also reports its CPU
  time per evaluation and the busiest threads' share (from /proc): these hardly move with the
  machine's load, and show whether the split costs extra work. Compilation is excluded (a
  warm-up call first).
- `per_device_batch`: simulator evaluations/s on 2 devices as the lanes per device grow.
- `e2e`: a short `elmjax evolve` (GP operator, so no LM) with 1 process and with 2 processes on
  loopback (`distributed.*`), evaluations/s over the generations after the second, both loading
  their compiled programs from one compile cache warmed by a run of each first.
- `restart`: wall time of the same short run started twice with the persistent compile cache
  (cold, then warm) and once with `compile_cache=off`: what a restart, a resume or a pod worker
  saves.

`--json PATH` writes everything plus `ratios` (`sim_two_devices_vs_one`,
`sim_two_cores_vs_one_core`, `sim_cpu_per_eval_one_core_vs_two_devices`,
`e2e_two_processes_vs_one`, `restart_warm_cache_vs_off`: higher is better). The full run takes
about 5 minutes on a quiet 2-core machine; `--quick` about 2.

    python benchmarks/scaling.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN_SUPPORTED = hasattr(os, "sched_setaffinity")

SIM_CODE = """
import json, os, sys, time
walkers_per_seed, seconds, chunks, repeats, one_core = json.loads(sys.argv[1])
if one_core:  # before JAX starts its threads: this process and all its threads on one core
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import jax
from elmjax.sodarace.env import Sodarace
from elmjax.sodarace.physics import SimParams
from elmjax.sodarace.walker import check_walker, walker_creator

def thread_cpu():
    # CPU seconds of each thread of this process (Linux /proc; {} elsewhere)
    out, tick = {}, os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out

base = []
for text in Sodarace().seed_programs().values():
    g = {"walker_creator": walker_creator}
    exec(text, g)
    base.append(check_walker(g["make_walker"]()))
ws = [w for w in base for _ in range(walkers_per_seed)]
devices = len(jax.local_devices())
out = {"devices": devices, "one_core": bool(one_core), "walkers": len(ws), "by_chunk": {}}
for chunk in chunks:
    env = Sodarace(params=SimParams(seconds=seconds), chunk=chunk * devices)
    env.evaluate(ws)  # compile every shape first
    threads0, cpu0, t0 = thread_cpu(), time.process_time(), time.perf_counter()
    for _ in range(repeats):
        env.evaluate(ws)
    wall, cpu, threads1 = time.perf_counter() - t0, time.process_time() - cpu0, thread_cpu()
    busy = sorted((threads1[t] - threads0.get(t, 0.0) for t in threads1), reverse=True)
    n = repeats * len(ws)
    out["by_chunk"][str(chunk)] = {
        "evals_per_s": n / wall,
        "cpu_ms_per_eval": 1000 * cpu / n,
        "cpu_per_wall": cpu / wall,
        # the busiest threads' CPU seconds per evaluation: how the work was spread
        "busiest_threads_ms_per_eval": [round(1000 * b / n, 4) for b in busy[:4]],
    }
print(json.dumps(out))
"""

E2E_CONFIG = """\
seed: 1
budget: {budget}
time_limit: null
batch_size: {batch}
report: false
progress: never
checkpoint_every: 1000
env: {{seconds: 5.0, chunk: 16}}
mutation: {{operator: gp, children_per_prompt: 2}}
sandbox: {{workers: 1}}
"""


def env_for(devices: int = 1, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **extra)
    for name in ("JAX_COMPILATION_CACHE_DIR", "ELMJAX_CACHE_DIR"):  # each run says its own
        env.pop(name, None)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def sim(
    devices: int,
    per_seed: int,
    seconds: float,
    chunks: list[int],
    repeats: int,
    one_core: bool = False,
) -> dict:
    args = json.dumps([per_seed, seconds, chunks, repeats, one_core])
    out = subprocess.run(
        [sys.executable, "-c", SIM_CODE, args],
        env=env_for(devices),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evolve(config: Path, out: Path, processes: int, extra: list[str] = ()) -> float:
    """Run `elmjax evolve` with `processes` processes; wall seconds until all are done."""
    cmd = [sys.executable, "-m", "elmjax.cli", "evolve", "--config", str(config), "--out"]
    port = free_port()
    t0 = time.perf_counter()
    procs = []
    for pid in range(processes):
        sets = list(extra)
        if processes > 1:
            sets += [
                f"distributed.coordinator=127.0.0.1:{port}",
                f"distributed.num_processes={processes}",
                f"distributed.process_id={pid}",
            ]
        args = [a for s in sets for a in ("--set", s)]
        procs.append(
            subprocess.Popen(
                [*cmd, str(out), *args],
                env=env_for(1),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"evolve failed ({p.returncode}): {err[-2000:]}")
    return time.perf_counter() - t0


def steady_evals_per_s(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # from the end of generation 1: generations 0 and 1 compile (seeds, then parents' shapes)
    first, last = rows[1] if len(rows) > 2 else rows[0], rows[-1]
    return (last["evaluations"] - first["evaluations"]) / (last["elapsed"] - first["elapsed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute or two)")
    ap.add_argument("--json", type=Path, help="write all figures here")
    args = ap.parse_args()
    q = args.quick
    # full: 64 copies of each of the 7 seeds (448 walkers in 5 size buckets, 64-128 walkers
    # each) for T = 10 s, so each compiled call holds 32-128 lanes per device
    per_seed, seconds, repeats = (16, 2.0, 2) if q else (64, 10.0, 3)
    chunks = [16, 32] if q else [32, 64, 128]
    batch, generations = (16, 3) if q else (32, 6)
    results: dict = {
        "command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_start": os.getloadavg(),
    }
    top = str(max(chunks))

    def save() -> None:  # after every part: a failure later keeps what was measured
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    # one device on one core (the process pinned), one device free to use both cores (XLA's
    # intra-op threads take some of a large call's work), two devices (one thread each)
    one_core = sim(1, per_seed, seconds, [max(chunks)], repeats, one_core=PIN_SUPPORTED)
    one = sim(1, per_seed, seconds, [max(chunks)], repeats)
    two = sim(2, per_seed, seconds, chunks, repeats)
    results["sim"] = {
        "walkers": two["walkers"],
        "seconds": seconds,
        "lanes_per_device": max(chunks),
        "one_device_one_core": one_core["by_chunk"][top],
        "one_device": one["by_chunk"][top],
        "two_devices": two["by_chunk"][top],
        "pinned": PIN_SUPPORTED,
    }
    results["per_device_batch"] = {
        "devices": 2,
        "evals_per_s": {c: v["evals_per_s"] for c, v in two["by_chunk"].items()},
    }
    save()
    with tempfile.TemporaryDirectory(prefix="elmjax-scaling-") as tmp:
        tmp = Path(tmp)
        config = tmp / "e2e.yaml"
        config.write_text(E2E_CONFIG.format(budget=1 + generations * batch, batch=batch))
        e2e = {}
        # Both runs load every compiled program from one cache, warmed first: otherwise the
        # second run would load what the first compiled (new simulator shapes keep appearing
        # in the first generations) and win for that reason alone.
        shared = [f"compile_cache={tmp / 'e2e-cache'}"]
        evolve(config, tmp / "warm-up", 2, shared)
        evolve(config, tmp / "warm-up-1", 1, shared)
        for processes in (1, 2):
            out = tmp / f"p{processes}"
            e2e[f"{processes}_process"] = {
                "wall_s": evolve(config, out, processes, shared),
                "evals_per_s": steady_evals_per_s(out),
            }
        results["e2e"] = e2e
        save()
        cache = str(tmp / "cache")
        restart = {
            "cold_cache_s": evolve(config, tmp / "c1", 1, [f"compile_cache={cache}"]),
            "warm_cache_s": evolve(config, tmp / "c2", 1, [f"compile_cache={cache}"]),
            "off_s": evolve(config, tmp / "c3", 1, ["compile_cache=off"]),
        }
        results["restart"] = restart
    results["load_average_end"] = os.getloadavg()
    results["ratios"] = {
        "sim_two_devices_vs_one": two["by_chunk"][top]["evals_per_s"]
        / one["by_chunk"][top]["evals_per_s"],
        "sim_two_cores_vs_one_core": two["by_chunk"][top]["evals_per_s"]
        / one_core["by_chunk"][top]["evals_per_s"],
        # CPU time per evaluation, one core over two devices: 1.0 = the split costs no extra
        # work (a figure the machine's load does not move much)
        "sim_cpu_per_eval_one_core_vs_two_devices": one_core["by_chunk"][top]["cpu_ms_per_eval"]
        / two["by_chunk"][top]["cpu_ms_per_eval"],
        "e2e_two_processes_vs_one": e2e["2_process"]["evals_per_s"]
        / e2e["1_process"]["evals_per_s"],
        "restart_warm_cache_vs_off": restart["off_s"] / restart["warm_cache_s"],
    }
    print(json.dumps(results, indent=2))
    save()


if __name__ == "__main__":
    main()
