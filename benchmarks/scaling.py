"""Scaling on one host: 1 vs 2 devices, 1 vs 2 processes, per-device batch, compile cache.

Every figure is measured in its own subprocess (JAX fixes the device count and the distributed
state per process), in the same run, so ratios compare like with like:

- `sim`: simulator evaluations/s of the same walkers (the seed programs, repeated) for the same
  simulated time with 1 and 2 host devices (`--xla_force_host_platform_device_count`; on a
  2-core machine the second device is the second core). Compilation is excluded (a warm-up
  call first).
- `per_device_batch`: simulator evaluations/s on 2 devices as the lanes per device grow.
- `e2e`: a short `elmjax evolve` (GP operator, so no LM) with 1 process and with 2 processes on
  loopback (`distributed.*`), evaluations/s over the generations after the second, both loading
  their compiled programs from one compile cache warmed by a run of each first.
- `restart`: wall time of the same short run started twice with the persistent compile cache
  (cold, then warm) and once with `compile_cache=off`: what a restart, a resume or a pod worker
  saves.

`--json PATH` writes everything plus `ratios` (`sim_two_devices_vs_one`,
`e2e_two_processes_vs_one`, `restart_warm_cache_vs_off`: higher is better).

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

SIM_CODE = """
import json, sys, time
import jax
from elmjax.sodarace.env import Sodarace
from elmjax.sodarace.physics import SimParams
from elmjax.sodarace.walker import check_walker, walker_creator
walkers, seconds, chunks, repeats = json.loads(sys.argv[1])
seeds = Sodarace().seed_programs()
base = []
for text in seeds.values():
    g = {"walker_creator": walker_creator}
    exec(text, g)
    base.append(check_walker(g["make_walker"]()))
ws = (base * (walkers // len(base) + 1))[:walkers]
out = {"devices": len(jax.local_devices()), "evals_per_s": {}}
for chunk in chunks:
    env = Sodarace(params=SimParams(seconds=seconds), chunk=chunk * len(jax.local_devices()))
    env.evaluate(ws)  # compile every shape first
    t0 = time.perf_counter()
    for _ in range(repeats):
        env.evaluate(ws)
    out["evals_per_s"][str(chunk)] = repeats * len(ws) / (time.perf_counter() - t0)
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


def sim(devices: int, walkers: int, seconds: float, chunks: list[int], repeats: int) -> dict:
    args = json.dumps([walkers, seconds, chunks, repeats])
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
    walkers, seconds, repeats = (64, 2.0, 2) if q else (256, 10.0, 3)
    chunks = [16, 32] if q else [8, 16, 32, 64, 128]
    batch, generations = (16, 3) if q else (32, 8)
    results: dict = {
        "command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_start": os.getloadavg(),
    }
    one = sim(1, walkers, seconds, [max(chunks)], repeats)
    two = sim(2, walkers, seconds, chunks, repeats)
    results["sim"] = {
        "walkers": walkers,
        "seconds": seconds,
        "one_device": one["evals_per_s"][str(max(chunks))],
        "two_devices": two["evals_per_s"][str(max(chunks))],
    }
    results["per_device_batch"] = {"devices": 2, "evals_per_s": two["evals_per_s"]}
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
        cache = str(tmp / "cache")
        restart = {
            "cold_cache_s": evolve(config, tmp / "c1", 1, [f"compile_cache={cache}"]),
            "warm_cache_s": evolve(config, tmp / "c2", 1, [f"compile_cache={cache}"]),
            "off_s": evolve(config, tmp / "c3", 1, ["compile_cache=off"]),
        }
        results["restart"] = restart
    results["load_average_end"] = os.getloadavg()
    results["ratios"] = {
        "sim_two_devices_vs_one": results["sim"]["two_devices"] / results["sim"]["one_device"],
        "e2e_two_processes_vs_one": e2e["2_process"]["evals_per_s"]
        / e2e["1_process"]["evals_per_s"],
        "restart_warm_cache_vs_off": restart["off_s"] / restart["warm_cache_s"],
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
