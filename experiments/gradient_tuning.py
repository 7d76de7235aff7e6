"""Tune a seed walker's muscle phases by gradient ascent through the simulator.

    python experiments/gradient_tuning.py [--seed square] [--steps 30] [--seconds 3] [--lr 0.02]

The objective is the centre-of-mass travel dx over `--seconds` with smooth contact (gradients
through touch-down and lift-off), in the direction the walker already goes; phases are updated
with Adam. Prints the distance before and after, under the objective's settings and under the
standard evaluation (hard contact, 10 s), since a short-horizon gain need not survive the full run.
"""

from __future__ import annotations

import argparse
import random

import jax
import jax.numpy as jnp
import optax

from elmjax.sodarace.body import pack
from elmjax.sodarace.env import Sodarace
from elmjax.sodarace.physics import SimParams, simulate_dx
from elmjax.sodarace.seeds import load_seeds
from elmjax.sodarace.terrain import flat
from elmjax.sodarace.walker import check_walker, walker_creator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", default="square")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=0.02)
    args = ap.parse_args()

    g = {"walker_creator": walker_creator}
    random.seed(0)
    exec(load_seeds()[args.seed], g)
    walker = check_walker(g["make_walker"]())
    body = pack([walker])
    terrain = flat()
    params = SimParams(seconds=args.seconds, contact="smooth")

    def dx_of(phase: jax.Array) -> jax.Array:
        return simulate_dx(params, body.replace(phase=phase), terrain)[0][0]

    phase = jnp.asarray(body.phase)
    before = float(jax.jit(dx_of)(phase))
    direction = 1.0 if before >= 0 else -1.0
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: direction * dx_of(p)))
    opt = optax.adam(args.lr)
    state = opt.init(phase)
    muscles = jnp.asarray(body.is_muscle)
    for step in range(args.steps):
        value, grad = value_and_grad(phase)
        updates, state = opt.update(-grad * muscles, state)  # ascent; only muscles have phases
        phase = phase + updates
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  dx over {args.seconds:g} s (smooth) = {direction * value:8.3f}")
    after = float(jax.jit(dx_of)(phase))
    print(f"{args.seed}: dx over {args.seconds:g} s, smooth contact: {before:.3f} -> {after:.3f}")

    tuned = dict(walker)
    n = len(walker["muscles"])
    tuned["muscles"] = [
        [i, j, {**spec, "phase": float(phase[k, 0])}]
        for k, (i, j, spec) in enumerate(walker["muscles"][:n])
    ]
    ev = Sodarace().evaluate([walker, tuned])
    print(
        f"{args.seed}: standard evaluation (hard contact, 10 s): |dx| "
        f"{ev.fitness[0]:.2f} -> {ev.fitness[1]:.2f}"
    )


if __name__ == "__main__":
    main()
