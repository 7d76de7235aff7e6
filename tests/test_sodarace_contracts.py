"""Device entry points of the simulator: shape contracts name the wrong field, a second
generation of the same shapes never retraces the rollout, and traced equals eager."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elmjax import tracing
from elmjax.sodarace import body as body_lib
from elmjax.sodarace.env import Sodarace, evaluate_bodies
from elmjax.sodarace.physics import SimParams, init_state, rollout
from elmjax.sodarace.seeds import load_seeds
from elmjax.sodarace.terrain import flat
from elmjax.sodarace.walker import check_walker, walker_creator

PARAMS = SimParams(seconds=0.5)
FLAT = flat()


def _walker(joints, springs):
    wc = walker_creator()
    handles = [wc.add_joint(x, y) for x, y in joints]
    for s in springs:
        wc.add_muscle(handles[s[0]], handles[s[1]], *s[2:])
    return check_walker(wc.get_walker())


SQUARE = _walker(
    [(0, 0), (10, 0), (10, 10), (0, 10)],
    [(0, 1), (1, 2, 2.0, 0.25), (2, 3), (3, 0), (0, 2), (1, 3)],
)


#: 20 joints and 37 connections: a size bucket no seed in these tests uses.
LADDER = _walker(
    [(3.0 * i, y) for i in range(10) for y in (0.0, 6.0)],
    [(2 * i, 2 * i + 1) for i in range(10)]
    + [(2 * i + k, 2 * i + 2 + k) for i in range(9) for k in (0, 1)]
    + [(2 * i, 2 * i + 3, 3.0, 0.1 * i) for i in range(9)],
)


def _seeds(*names):
    out = []
    for name in names:
        g = {"walker_creator": walker_creator}
        exec(load_seeds()[name], g)
        out.append(check_walker(g["make_walker"]()))
    return out


def _mirror(w):
    return {**w, "joints": [[-x, y] for x, y in w["joints"]]}


def test_second_generation_of_the_same_shapes_never_retraces():
    env = Sodarace(params=PARAMS, chunk=8)
    first = _seeds("galloper", "wheel")
    env.evaluate(first)  # generation 1 compiles one program per size bucket
    buckets = {body_lib.bucket_for(*body_lib.sizes(w)) for w in first}
    with tracing.max_traces(0):
        again = env.evaluate([_mirror(w) for w in first])  # new walkers, same buckets
        assert again.valid.all()
        # the positive control: a walker of another bucket is a new program, and it is seen
        assert body_lib.bucket_for(*body_lib.sizes(LADDER)) not in buckets
        with pytest.raises(AssertionError, match="'rollout' is traced > 0 times"):
            env.evaluate([LADDER])


def _bodies():
    return body_lib.pack([SQUARE, _mirror(SQUARE)], (8, 16), batch_size=2)


def _transposed(name):
    return lambda b: b.replace(**{name: getattr(b, name).T})


@pytest.mark.parametrize(
    "field, change",
    [
        ("body.y0", _transposed("y0")),
        ("body.rest", _transposed("rest")),
        ("body.spring_i", lambda b: b.replace(spring_i=b.spring_i.astype(np.float32))),
        ("body.amplitude", lambda b: b.replace(amplitude=b.amplitude[:, :1])),
        ("body.valid", lambda b: b.replace(valid=b.valid.astype(np.float32))),
        ("body.valid", lambda b: b.replace(valid=b.valid[None])),
        ("body.x0", lambda b: b.replace(x0=b.x0[:, :1])),
        ("body.width", lambda b: b.replace(width=b.width[None])),
    ],
)
def test_a_wrong_body_names_the_field(field, change):
    bodies = _bodies()
    evaluate_bodies(PARAMS, bodies, FLAT)  # the well-formed batch runs
    with pytest.raises(AssertionError, match=rf"env\.evaluate_bodies: {field}\b"):
        evaluate_bodies(PARAMS, change(bodies), FLAT)
    with pytest.raises(AssertionError, match=rf"physics\.rollout: {field}\b"):
        rollout(PARAMS, change(bodies), FLAT, frames=2)


def test_a_wrong_terrain_or_state_names_the_field():
    bodies = _bodies()
    per_body = FLAT.replace(hills_amplitude=jnp.zeros(2))
    evaluate_bodies(PARAMS, bodies, per_body)  # [B] terrain fields are fine
    with pytest.raises(
        AssertionError, match=r"terrain\.hills_amplitude must be a scalar or \[B=2\]"
    ):
        evaluate_bodies(PARAMS, bodies, FLAT.replace(hills_amplitude=jnp.zeros(3)))
    state = init_state(bodies, FLAT)
    with pytest.raises(AssertionError, match=r"physics\.rollout: state\.vx\b"):
        rollout(PARAMS, bodies, FLAT, frames=2, state=state.replace(vx=state.vx[:, :1]))


class RolloutVariantsTest(chex.TestCase):
    """The traced rollout equals the eager one: nothing in it reads a concrete value."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        bodies = _bodies()
        start = init_state(bodies, FLAT)
        run = self.variant(lambda b, s: rollout(PARAMS, b, FLAT, 30, 0, s)[0])
        reference = jax.jit(lambda b, s: rollout(PARAMS, b, FLAT, 30, 0, s)[0])(bodies, start)
        final = run(bodies, start)
        # eager runs the setup op by op, jit fuses it: float32 rounding differs by ulps, and
        # velocities (position change / substep) magnify that to ~1e-4; a tracing bug is gross
        chex.assert_trees_all_close(final, reference, rtol=1e-4, atol=2e-3)
        assert (
            float(jnp.abs(final.x - start.x).max()) > 0
        )  # it moved: the comparison means something
