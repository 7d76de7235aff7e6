"""CPU time of the Gauss-Seidel sweep and of a whole rollout: the landed sweep (x and y stacked,
one variadic reduce per spring, `springs._sums`) against the form before it (two [J, B] arrays,
two `jnp.sum`s and two updates per spring, copied below), each compiled with and without
`env.COMPILER_OPTIONS`, in one process, rounds interleaved, best of `--rounds`. Prints
us per walker-sweep and per walker-frame, the ratio, and whether both forms gave the same
floats (bitwise, final positions and multipliers).

    python benchmarks/sweep_forms.py [--batches cppn128,cppn256,five256] [--frames 120]
    python benchmarks/sweep_forms.py --brax 64,256

`--brax`: instead, a Brax-style loop (`SodaraceEnv` of CPPN-Mutable, `jax.vmap(env.step)` over
N environments, 60 steps in a `lax.scan`) under a plain `jax.jit` without the options, as
Brax's trainers compile it; us per env-step.
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from elmjax.sodarace import (
    physics,  # noqa: E402
    springs,  # noqa: E402
)
from elmjax.sodarace.body import pack  # noqa: E402
from elmjax.sodarace.env import COMPILER_OPTIONS  # noqa: E402
from elmjax.sodarace.physics import SimParams, init_state  # noqa: E402
from elmjax.sodarace.seeds import load_seeds  # noqa: E402
from elmjax.sodarace.terrain import flat  # noqa: E402
from elmjax.sodarace.walker import check_walker, walker_creator  # noqa: E402

FLAT = flat()


def two_arrays_solver(params: SimParams, body):
    """The dense sweep as landed before (`dfd17d8`): x and y as two [J, B] arrays."""
    dtype = body.inv_mass.dtype
    J = body.x0.shape[0]
    wi = springs._gather(body.inv_mass, body.spring_i) * body.spring_mask
    wj = springs._gather(body.inv_mass, body.spring_j) * body.spring_mask
    h = params.substep_dt
    cap = jnp.where(body.is_muscle > 0, params.muscle_force * h * h, jnp.inf).astype(dtype)
    per_spring = (wi + wj, params.relaxation * jnp.asarray(body.spring_mask), cap)
    joints = jnp.arange(J, dtype=body.spring_i.dtype)[None, :, None]
    at_i = (body.spring_i[:, None, :] == joints).astype(dtype)
    at_j = (body.spring_j[:, None, :] == joints).astype(dtype)
    rows = (at_j - at_i, at_j * wj[:, None] - at_i * wi[:, None])

    def one(xy, s):
        lam_s, target_s, at_s, w_sum_s, scale_s, cap_s, diff_s, push_s = s
        x, y = xy
        dx, dy = jnp.sum(diff_s * x, axis=0), jnp.sum(diff_s * y, axis=0)
        length = jnp.sqrt(dx * dx + dy * dy + 1e-12)
        denom = w_sum_s + at_s
        dlam = -(length - target_s + at_s * lam_s) / jnp.where(denom > 0, denom, 1.0)
        new = jnp.clip(lam_s + scale_s * dlam, -cap_s, cap_s)
        p = (new - lam_s) / length
        return (x + push_s * (p * dx), y + push_s * (p * dy)), new

    def solve(x, y, lam, target, alpha_tilde):
        (x, y), lam = jax.lax.scan(one, (x, y), (lam, target, alpha_tilde, *per_spring, *rows))
        return x, y, lam

    return solve


def cppn_mutable() -> dict:
    g = {"walker_creator": walker_creator}
    random.seed(0)
    exec(load_seeds()["cppn_mutable"], g)
    return check_walker(g["make_walker"]())


def five_joint(n: int, seed: int = 0) -> list[dict]:
    """Random valid 5-joint bodies (a muscled chain plus 4 bones): where GP elites live."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        wc = walker_creator()
        js = [wc.add_joint(rng.uniform(0, 10), rng.uniform(0, 8)) for _ in range(5)]
        try:
            for a in range(4):
                wc.add_muscle(js[a], js[a + 1], rng.choice([0.0, 5.0]), rng.random())
            for _ in range(4):
                a, b = rng.sample(range(5), 2)
                wc.add_muscle(js[a], js[b], 0.0, 0.0)
            out.append(check_walker(wc.get_walker()))
        except ValueError:
            continue
    return out


def programs(body, params: SimParams, frames: int, opts: bool) -> dict:
    """Compiled (sweeps, rollout) per form. `sweeps`: 4 x frames sweeps from the rest pose
    towards 97% of the rest lengths; `rollout`: `frames` frames of the real step."""
    kw = {"compiler_options": COMPILER_OPTIONS} if opts else {}
    target, at = body.rest * 0.97, physics.prepare(params, body).alpha_tilde
    out = {}
    for form, make in (("two arrays", two_arrays_solver), ("stacked", None)):

        def sweeps(x, y, make=make):
            solve = (make or springs.gauss_seidel_solver)(params, body)

            def one(c, _):
                x, y, lam = solve(c[0], c[1], jnp.zeros_like(body.rest), target, at)
                return (x, y), lam[0]

            return jax.lax.scan(one, (x, y), None, length=4 * frames)

        def rollout(body, make=make):
            prep = physics.prepare(params, body)
            if make is not None:
                prep = prep._replace(solve=make(params, body))

            def frame(s, _):
                return physics._frame(params, body, FLAT, prep, s), None

            return jax.lax.scan(frame, init_state(body, FLAT), None, length=frames)[0]

        out[form] = (
            jax.jit(sweeps, **kw).lower(body.x0, body.y0).compile(),
            jax.jit(rollout, **kw).lower(body).compile(),
        )
    return out


def cpu(f, *args):
    jax.block_until_ready(f(*args))
    t = time.process_time()
    out = jax.block_until_ready(f(*args))
    return time.process_time() - t, out


def brax(n: int, steps: int = 60, rounds: int = 5) -> None:
    from elmjax.sodarace.brax_env import SodaraceEnv

    env = SodaraceEnv(cppn_mutable())
    keys = jax.random.split(jax.random.PRNGKey(0), n)

    def loop():  # a new function per form: jax.jit caches traces by function
        def run(keys):
            state = jax.vmap(env.reset)(keys)
            act = jnp.zeros((n, env.action_size))
            step = jax.vmap(env.step)
            final = jax.lax.scan(lambda s, _: (step(s, act), None), state, None, length=steps)[0]
            return final.metrics["dx"]

        return run

    progs, landed = {}, springs.gauss_seidel_solver
    for form, solver in (("two arrays", two_arrays_solver), ("stacked", landed)):
        springs.gauss_seidel_solver = solver  # read when `env.step` is traced
        try:
            progs[form] = jax.jit(loop()).lower(keys).compile()
        finally:
            springs.gauss_seidel_solver = landed
    best, outs = dict.fromkeys(progs, float("inf")), {}
    for _ in range(rounds):
        for form, prog in progs.items():
            dt, outs[form] = cpu(prog, keys)
            best[form] = min(best[form], dt)
    a, b = best["two arrays"], best["stacked"]
    same = np.array_equal(np.asarray(outs["two arrays"]), np.asarray(outs["stacked"]))
    print(
        f"Brax loop, {n} environments, no options: us per env-step: two arrays "
        f"{a / (n * steps) * 1e6:.2f}, stacked {b / (n * steps) * 1e6:.2f} ({a / b:.2f}x less), "
        f"same floats: {same}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="cppn128,cppn256,five256")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--brax", default="", help="environment counts, e.g. 64,256")
    args = ap.parse_args()
    if args.brax:
        for n in args.brax.split(","):
            brax(int(n))
        return
    params = SimParams()
    for name in args.batches.split(","):
        n = int(name.lstrip("cpnfive"))
        walkers = [cppn_mutable()] * n if name.startswith("cppn") else five_joint(n)
        body = jax.tree.map(jnp.asarray, pack(walkers))
        for opts in (True, False):
            progs = programs(body, params, args.frames, opts)
            best = {(f, k): float("inf") for f in progs for k in (0, 1)}
            outs = {}
            for _ in range(args.rounds):
                for f, pair in progs.items():
                    for k, (prog, arg) in enumerate(zip(pair, ((body.x0, body.y0), (body,)))):
                        dt, outs[f, k] = cpu(prog, *arg)
                        best[f, k] = min(best[f, k], dt)
            load = f"{os.getloadavg()[0]:.2f}"
            for k, (what, per) in enumerate((("sweep", 4 * args.frames), ("frame", args.frames))):
                a, b = best["two arrays", k], best["stacked", k]
                same = all(
                    np.array_equal(np.asarray(u), np.asarray(v))
                    for u, v in zip(
                        jax.tree.leaves(outs["two arrays", k]), jax.tree.leaves(outs["stacked", k])
                    )
                )
                print(
                    f"{name} {body.x0.shape} {'options' if opts else 'no options':10s} "
                    f"us per walker-{what}: two arrays {a / (n * per) * 1e6:.3f}, "
                    f"stacked {b / (n * per) * 1e6:.3f} ({a / b:.2f}x less), "
                    f"same floats: {same}, load {load}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
