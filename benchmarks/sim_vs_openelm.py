"""elmjax's batched XPBD simulator vs OpenELM 0.9.2's Box2D Sodarace simulator.

Same walkers (the seven seeds, plus random valid bodies), same simulated time (T = 10 s), equal
cores: elmjax runs one process over all local cores (one XLA host device per core, the batch
sharded over a `data` mesh); OpenELM is single-threaded, so it runs in as many processes as
elmjax has cores. Reported: evaluations/s of both at several batch sizes, the ratio
(`ratios.vs_openelm`), dt/substeps, bone-length error, walker-steps/s, and achieved FLOP/s
against this CPU's FP32 peak (FLOPs from XLA's cost analysis of one frame).

    python benchmarks/sim_vs_openelm.py [--quick] [--json PATH] [--gif]

OpenELM lives in its own venv (it pins old packages; it must not touch elmjax's jax):
    python3 -m venv /work/venvs/openelm
    /work/venvs/openelm/bin/pip install --no-deps openelm==0.9.2 box2d pygame numpy
Override the interpreter with --openelm-python. Without it the OpenELM side is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import tempfile
import time

CORES = len(os.sched_getaffinity(0))
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={CORES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from elmjax.sodarace.body import pack  # noqa: E402
from elmjax.sodarace.contact import contacts  # noqa: E402
from elmjax.sodarace.env import Sodarace  # noqa: E402
from elmjax.sodarace.physics import SimParams, init_state, prepare, step, substep  # noqa: E402
from elmjax.sodarace.seeds import load_seeds  # noqa: E402
from elmjax.sodarace.terrain import flat  # noqa: E402
from elmjax.sodarace.walker import check_walker, walker_creator  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OPENELM = "/work/venvs/openelm/bin/python"


def seed_walkers() -> dict[str, dict]:
    out = {}
    for name, src in load_seeds().items():
        g = {"walker_creator": walker_creator}
        random.seed(0)
        exec(src, g)
        out[name] = check_walker(g["make_walker"]())
    return out


def random_walkers(n: int, seed: int = 0) -> list[dict]:
    """Random valid bodies of 6-16 joints: a chain plus random extra connections."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        wc = walker_creator()
        k = rng.randint(6, 16)
        js = [wc.add_joint(rng.uniform(0, 20), rng.uniform(0, 15)) for _ in range(k)]
        try:
            for a in range(k - 1):
                wc.add_muscle(js[a], js[a + 1], rng.choice([0.0, 2.0, 5.0, 10.0]), rng.random())
            for _ in range(rng.randint(k, 2 * k)):
                a, b = rng.sample(range(k), 2)
                wc.add_muscle(js[a], js[b], rng.choice([0.0, 0.0, 5.0]), rng.random())
            out.append(check_walker(wc.get_walker()))
        except ValueError:
            continue
    return out


def time_elmjax(walkers: list[dict], params: SimParams, repeats: int) -> dict:
    env = Sodarace(params=params)
    t = time.perf_counter()
    ev = env.evaluate(walkers)  # compiles every bucket shape it meets
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        ev = env.evaluate(walkers)
        best = min(best, time.perf_counter() - t)
    return {
        "batch": len(walkers),
        "seconds": best,
        "first_call_seconds": first,
        "evals_per_s": len(walkers) / best,
        "walker_steps_per_s": len(walkers) * params.frames / best,
        "valid": float(ev.valid.mean()),
        "bone_error_mean": float(ev.extras["bone_error"][ev.valid].mean()),
        "bone_error_max": float(ev.extras["bone_error"][ev.valid].max()),
        "mean_abs_dx": float(np.abs(ev.extras["dx"][ev.valid]).mean()),
    }


def flops_per_walker_frame(walker: dict, params: SimParams, lanes: int = 128) -> float:
    """XLA cost analysis of one frame, per walker: frame overhead + substeps x (substep overhead
    + iterations x one constraint iteration). XLA counts a while loop's body once whatever its
    trip count, so each part is the difference of two loop-free programs that run it twice and
    once (Python-composed). The per-rollout constants `prepare` builds (the Gauss-Seidel sweep's
    coefficient rows) are built outside the costed programs, as a rollout builds them outside its
    loop: inside, XLA fuses the rows' one-hot compares into every consumer and the cost analysis
    counts them at their full [S, J, B] shape once per spring (a ~30x overcount)."""
    body = pack([walker] * lanes)
    terrain = flat()
    state = init_state(body, terrain)
    one = params.replace(substeps=1, iterations=1)

    def cost(f) -> float:
        return float(jax.jit(f).lower(body, state).compile().cost_analysis()["flops"])

    prep_params, prep_one = prepare(params, body), prepare(one, body)  # eager: outside the jit

    def iterations(n):
        def run(b, s):
            prep = prep_params
            x, y, lam = s.x, s.y, b.rest * 0.0
            for _ in range(n):
                x, y, lam = prep.solve(x, y, lam, b.rest, prep.alpha_tilde)
                x, y = contacts(params, terrain, b, x, y, s.x, s.y)
            return x, y, lam

        return run

    def substeps(n):
        def run(b, s):
            prep = prep_one
            for _ in range(n):
                s, _lam = substep(one, b, terrain, s, prep)
            return s

        return run

    def frames(n):
        def run(b, s):
            prep = prep_one
            for _ in range(n):
                s = step(one, b, s, terrain, prep)
            return s

        return run

    iteration_cost = cost(iterations(2)) - cost(iterations(1))
    substep_cost = cost(substeps(2)) - cost(substeps(1))  # overhead + one iteration
    frame_cost = cost(frames(2)) - cost(frames(1))  # overhead + one substep
    substep_overhead = substep_cost - iteration_cost
    frame_overhead = frame_cost - substep_cost
    per_frame = frame_overhead + params.substeps * (
        substep_overhead + params.iterations * iteration_cost
    )
    return per_frame / lanes


def fp32_peak_per_core() -> tuple[float, str]:
    """FLOP/s of one core: frequency x 2 FMA pipes x SIMD lanes x 2 (AVX2: 8 FP32 lanes)."""
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    lanes = 16 if "avx512f" in flags else 8
    ghz = None
    for line in flags.splitlines():
        if line.startswith("cpu MHz"):
            ghz = float(line.split(":")[1]) / 1000
            break
    ghz = ghz or 2.5
    return ghz * 1e9 * 2 * lanes * 2, f"{ghz:.2f} GHz x 2 FMA x {lanes} lanes x 2"


def run_openelm(python: str, walkers: list[dict], ms: int, processes: int) -> dict:
    clean = [{"joints": w["joints"], "muscles": w["muscles"]} for w in walkers]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"walkers": clean, "ms": ms, "processes": processes}, f)
    out = subprocess.run(
        [python, os.path.join(HERE, "_openelm_sodaracer.py"), f.name],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "batch": len(walkers),
        "processes": processes,
        **{k: res[k] for k in ("seconds", "evals_per_s")},
    }


def side_by_side_gif(
    python: str, walker: dict, name: str, path: str, seconds: float = 10.0
) -> None:
    """One seed in both simulators, elmjax left, OpenELM right."""
    import imageio.v2 as imageio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elmjax.viz.walker_gif import gif_frame_ms, render_frames

    fps = 8
    left = render_frames(
        walker, "flat", seconds, fps=fps, size=(4, 2.4), dpi=50, title=f"elmjax {name}"
    )
    clean = {"joints": walker["joints"], "muscles": walker["muscles"]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"trajectory": clean, "ms": seconds * 1000, "fps": fps}, f)
    out = subprocess.run(
        [python, os.path.join(HERE, "_openelm_sodaracer.py"), f.name],
        capture_output=True,
        text=True,
    )
    os.unlink(f.name)
    frames = np.asarray(json.loads(out.stdout.strip().splitlines()[-1])["frames"])  # [F, J, 2]
    pairs = [(m[0], m[1]) for m in walker["muscles"]]
    span = float(np.ptp(frames[0], axis=0).max()) + 5
    right = []
    fig, ax = plt.subplots(figsize=(4, 2.4), dpi=50)
    for k in range(min(len(left), len(frames))):
        ax.clear()
        p = frames[k]
        cx = float(p[:, 0].mean())
        ax.set_xlim(cx - 1.6 * span, cx + 1.6 * span)
        ax.set_ylim(-90 - 0.1 * span, -90 + 1.4 * span)  # OpenELM ground top: y = -90
        ax.set_aspect("equal")
        ax.axhspan(-200, -90, color="#8d6e63")
        for i, j in pairs:
            ax.plot(p[[i, j], 0], p[[i, j], 1], color="#555", lw=1.5)
        ax.plot(p[:, 0], p[:, 1], "ko", ms=3)
        ax.set_title(f"OpenELM Box2D {name}  t={k / fps:4.1f}s", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.canvas.draw()
        right.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    n = min(len(left), len(right))
    h = min(left[0].shape[0], right[0].shape[0])
    both = [np.concatenate([left[k][:h], right[k][:h]], axis=1) for k in range(n)]
    # imageio's pillow plugin takes milliseconds; GIF holds centiseconds (see gif_frame_ms)
    imageio.mimsave(path, both, duration=gif_frame_ms(np.arange(n) / fps), loop=0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small batches, under a minute")
    ap.add_argument("--json", default=None, help="write all figures here")
    ap.add_argument(
        "--gif", action="store_true", help="write side-by-side GIFs (default: full run)"
    )
    ap.add_argument("--openelm-python", default=DEFAULT_OPENELM)
    args = ap.parse_args()

    params = SimParams()
    seeds = seed_walkers()
    headline = seeds["cppn_mutable"]
    sizes = (128, 256) if args.quick else (128, 256, 1024, 4096)
    repeats = 1 if args.quick else 3
    mixed_n = 256 if args.quick else 1024
    mixed = (list(seeds.values()) * 8 + random_walkers(mixed_n))[:mixed_n]

    result: dict = {
        "benchmark": "sim_vs_openelm",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": CORES,
            "devices": len(jax.local_devices()),
            "jax": jax.__version__,
        },
        "simulated_seconds": params.seconds,
        "dt": params.dt,
        "substeps": params.substeps,
        "iterations": params.iterations,
        "headline_walker": "cppn_mutable (16 joints, 35 connections)",
        "elmjax": {},
    }
    for n in sizes:
        r = time_elmjax([headline] * n, params, repeats)
        result["elmjax"][f"cppn_mutable_x{n}"] = r
        print(
            f"elmjax cppn_mutable batch {n}: {r['evals_per_s']:.0f} evals/s "
            f"(bone err mean {r['bone_error_mean']:.3%})",
            flush=True,
        )
    r = time_elmjax(mixed, params, repeats)
    result["elmjax"][f"mixed_x{mixed_n}"] = r
    print(f"elmjax mixed seeds+random batch {mixed_n}: {r['evals_per_s']:.0f} evals/s", flush=True)

    if not args.quick:
        result["substeps_sweep"] = {}
        for sub in (2, 3, 6):
            p = params.replace(substeps=sub)
            r = time_elmjax(mixed, p, 1)
            result["substeps_sweep"][str(sub)] = {
                k: r[k] for k in ("evals_per_s", "bone_error_mean", "bone_error_max")
            }
            print(f"substeps {sub}: {r['evals_per_s']:.0f} evals/s bone {r['bone_error_mean']:.3%}")

    flops = flops_per_walker_frame(headline, params)
    peak_core, how = fp32_peak_per_core()
    best = max(v["evals_per_s"] for k, v in result["elmjax"].items() if k.startswith("cppn"))
    achieved = best * params.frames * flops
    result["flops"] = {
        "per_walker_frame": flops,
        "achieved_flop_per_s": achieved,
        "fp32_peak_flop_per_s": peak_core * CORES,
        "peak_assumption": how,
        "fraction_of_peak": achieved / (peak_core * CORES),
    }
    print(f"FLOP/s {achieved / 1e9:.2f} G = {achieved / (peak_core * CORES):.2%} of FP32 peak")

    ratios = {}
    if os.path.exists(args.openelm_python):
        n_open = 2 * CORES * (4 if args.quick else 16)
        o = run_openelm(args.openelm_python, [headline] * n_open, int(params.seconds * 1000), CORES)
        om = run_openelm(args.openelm_python, mixed[:n_open], int(params.seconds * 1000), CORES)
        result["openelm"] = {"cppn_mutable": o, "mixed": om}
        print(
            f"OpenELM cppn_mutable: {o['evals_per_s']:.1f} evals/s ({CORES} processes); "
            f"mixed: {om['evals_per_s']:.1f}"
        )
        # The machine is shared: load changes between the two measurements above. Interleave
        # short elmjax and OpenELM timings and take the median of the per-round ratios.
        rounds = []
        for _ in range(3 if args.quick else 5):
            e = time_elmjax([headline] * 256, params, 1)["evals_per_s"]
            p = run_openelm(args.openelm_python, [headline] * (8 * CORES), 10000, CORES)
            rounds.append({"elmjax": e, "openelm": p["evals_per_s"], "ratio": e / p["evals_per_s"]})
            print(
                f"round: elmjax {e:.0f}/s, OpenELM {p['evals_per_s']:.1f}/s, ratio {e / p['evals_per_s']:.1f}"
            )
        result["interleaved_rounds"] = rounds
        ratios["vs_openelm"] = float(np.median([r["ratio"] for r in rounds]))
        ratios["vs_openelm_best_vs_best"] = best / o["evals_per_s"]
        ratios["vs_openelm_mixed"] = (
            result["elmjax"][f"mixed_x{mixed_n}"]["evals_per_s"] / om["evals_per_s"]
        )
        if args.gif or not args.quick:
            os.makedirs(os.path.join(HERE, "artifacts"), exist_ok=True)
            for name in ("galloper", "wheel"):
                path = os.path.join(HERE, "artifacts", f"sim_vs_openelm_{name}.gif")
                side_by_side_gif(args.openelm_python, seeds[name], name, path)
                print("wrote", path)
    else:
        print(f"OpenELM python not found at {args.openelm_python}: peer skipped")
    result["ratios"] = ratios
    print(json.dumps({"ratios": ratios}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
