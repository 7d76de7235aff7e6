"""The Sodarace Environment, its Brax face, gradients through the simulator, sharding, CLI."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elmjax.envs.base import Environment, Evaluation
from elmjax.sodarace.body import JOINT_BUCKETS, SPRING_BUCKETS, group_by_bucket, pack
from elmjax.sodarace.env import DESCRIPTOR_SPACE, Sodarace
from elmjax.sodarace.physics import SimParams, simulate_dx
from elmjax.sodarace.terrain import get_terrain
from elmjax.sodarace.walker import check_walker, walker_creator


def seed_dicts() -> dict[str, dict]:
    out = {}
    for name, src in Sodarace().seed_programs().items():
        g = {"walker_creator": walker_creator}
        exec(src, g)
        out[name] = check_walker(g["make_walker"]())
    return out


SEEDS = seed_dicts()


def test_sodarace_is_an_environment_whose_descriptor_space_holds_the_seeds():
    env = Sodarace()
    assert isinstance(env, Environment)
    assert env.entry == "make_walker" and env.check is check_walker
    assert env.inject == {"walker_creator": "elmjax.sodarace.walker:walker_creator"}
    assert {"square", "radial", "cppn_fixed", "cppn_mutable", "wheel", "galloper", "runner"} <= set(
        SEEDS
    )
    low, high = np.asarray(DESCRIPTOR_SPACE.low), np.asarray(DESCRIPTOR_SPACE.high)
    for w in SEEDS.values():
        d = np.asarray([w["descriptor"][k] for k in DESCRIPTOR_SPACE.names])
        assert (d > low).all() and (d < low + 0.5 * (high - low)).all()  # inside, with room


def test_pack_buckets_and_grouping():
    walkers = list(SEEDS.values())
    groups = group_by_bucket(walkers)
    assert sorted(np.concatenate([idx for _, idx in groups]).tolist()) == list(range(len(walkers)))
    for (j, s), idx in groups:
        assert j in JOINT_BUCKETS and s in SPRING_BUCKETS
        body = pack([walkers[k] for k in idx], (j, s), batch_size=len(idx) + 2)
        assert body.x0.shape == (j, len(idx) + 2) and body.rest.shape == (s, len(idx) + 2)
        assert not np.asarray(body.valid)[-2:].any()
        mass = np.asarray(body.mass).sum(0)[: len(idx)]
        want = [walkers[k]["descriptor"]["mass"] for k in idx]
        chex.assert_trees_all_close(mass, np.asarray(want, np.float32), rtol=1e-5)
    with pytest.raises(ValueError):
        pack([{"joints": [[0, 0], [1, 0]], "muscles": [[0, 5, {}]]}])


def test_evaluate_returns_finite_rows_in_input_order_with_errors():
    env = Sodarace(params=SimParams(seconds=1.0), chunk=4)
    bad = {"joints": [[0, 0]], "muscles": []}
    ev = env.evaluate([SEEDS["galloper"], bad, "not a walker", SEEDS["square"]])
    assert isinstance(ev, Evaluation) and len(ev) == 4
    assert ev.valid.tolist() == [True, False, False, True]
    assert ev.error[0] is None and "invalid walker" in ev.error[1] and ev.error[2]
    assert np.isfinite(ev.fitness).all() and np.isfinite(ev.descriptor).all()
    chex.assert_trees_all_equal(ev.fitness, np.abs(ev.extras["dx"]))
    assert ev.descriptor[3].tolist() == pytest.approx([10.0, 10.0, 39.142136], rel=1e-5)


def test_brax_wrappers_run_the_env():
    from brax.envs.wrappers.training import AutoResetWrapper, EpisodeWrapper, VmapWrapper

    from elmjax.sodarace.env import SodaraceEnv

    base = SodaraceEnv(SEEDS["galloper"])
    env = AutoResetWrapper(EpisodeWrapper(VmapWrapper(base), episode_length=5, action_repeat=1))
    state = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(0), 3))  # Brax: raw keys
    assert state.obs.shape == (3, base.observation_size)
    step = jax.jit(env.step)
    actions = jnp.zeros((3, base.action_size)).at[1].set(0.5).at[2].set(-1.0)
    for _ in range(6):  # crosses the episode end: auto reset
        state = step(state, actions)
    assert np.isfinite(np.asarray(state.obs)).all() and state.reward.shape == (3,)
    assert base.backend and base.action_size == 16


def _dx_of(body, params, terrain, amplitude, phase):
    return simulate_dx(params, body.replace(amplitude=amplitude, phase=phase), terrain)[0][0]


def test_gradient_of_dx_wrt_amplitudes_and_phases_is_finite():
    body = pack([SEEDS["galloper"]])
    params = SimParams(seconds=0.5)
    g = jax.jit(jax.grad(_dx_of, argnums=(3, 4)), static_argnums=1)
    ga, gp = g(
        body, params, get_terrain("flat"), jnp.asarray(body.amplitude), jnp.asarray(body.phase)
    )
    assert np.isfinite(np.asarray(ga)).all() and np.isfinite(np.asarray(gp)).all()
    assert np.abs(np.asarray(gp)).max() > 0


def test_gradient_matches_central_finite_differences_in_float64():
    # jax.experimental.enable_x64 became the `jax.enable_x64` context manager in jax 0.10.
    with jax.enable_x64(True):
        body = pack([SEEDS["galloper"]])
        body = jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float64) if np.asarray(a).dtype == np.float32 else a, body
        )
        terrain = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), get_terrain("flat"))
        params = SimParams(seconds=0.5, contact="smooth")
        amp, phase = body.amplitude, body.phase
        f = jax.jit(_dx_of, static_argnums=1)
        ga, gp = jax.jit(jax.grad(_dx_of, argnums=(3, 4)), static_argnums=1)(
            body, params, terrain, amp, phase
        )
        eps = 1e-6
        for grad, which in ((ga, "amp"), (gp, "phase")):
            for k in np.nonzero(np.asarray(body.is_muscle)[:, 0])[0][:2]:  # two leg muscles
                e = jnp.zeros_like(amp).at[k, 0].set(eps)
                if which == "amp":
                    hi, lo = (
                        f(body, params, terrain, amp + e, phase),
                        f(body, params, terrain, amp - e, phase),
                    )
                else:
                    hi, lo = (
                        f(body, params, terrain, amp, phase + e),
                        f(body, params, terrain, amp, phase - e),
                    )
                fd = float(hi - lo) / (2 * eps)
                assert abs(fd) > 1e-4  # not zero, so the relative comparison means something
                assert float(grad[k, 0]) == pytest.approx(fd, rel=1e-3)


def test_sharded_evaluation_over_eight_host_devices_equals_single_device():
    code = textwrap.dedent(
        """
        import json, jax, numpy as np
        from elmjax.sodarace.env import Sodarace, data_mesh
        from elmjax.sodarace.physics import SimParams
        from elmjax.sodarace.walker import check_walker, walker_creator
        seeds = Sodarace().seed_programs()
        ws = []
        for name in ("galloper", "square", "wheel"):
            g = {"walker_creator": walker_creator}
            exec(seeds[name], g)
            ws.append(check_walker(g["make_walker"]()))
        ws = ws * 3
        p = SimParams(seconds=1.0)
        mesh = data_mesh()
        sharded = Sodarace(params=p, chunk=16, mesh=mesh).evaluate(ws)
        single = Sodarace(params=p, chunk=2, mesh=None).evaluate(ws)  # 2 lanes = one device's
        print(json.dumps({"devices": mesh.size, "sharded": sharded.extras["dx"].tolist(),
                          "single": single.extras["dx"].tolist()}))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["devices"] == 8
    assert got["sharded"] == got["single"]
    assert all(v != 0 for v in got["sharded"])


def test_simulate_command_prints_json_with_fitness_and_writes_a_gif(tmp_path, capsys):
    from elmjax.sodarace.cli import simulate_command

    good = tmp_path / "square.py"
    good.write_text(Sodarace().seed_programs()["square"])
    bad = tmp_path / "bad.py"
    bad.write_text("def make_walker():\n    return 3\n")
    gif = tmp_path / "run.gif"
    args = argparse.Namespace(
        programs=[str(good), str(bad)], terrain="flat", seconds=1.0, json=True, gif=str(gif)
    )
    assert simulate_command(args) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert lines[0]["ok"] and lines[0]["fitness"] == abs(lines[0]["dx"])
    assert lines[0]["joints"] == 5 and "descriptor" in lines[0]
    assert lines[1] == {
        "program": str(bad),
        "ok": False,
        "error": {
            "kind": "invalid",
            "message": "WalkerError: make_walker must return wc.get_walker(), got int",
        },
    }
    assert gif.stat().st_size > 1000
    args.terrain = "lava"
    assert simulate_command(args) == 1
    assert "unknown terrain" in capsys.readouterr().out


# A GP child found by an ELM run (issue 3 follow-up): 5 joints, travels ~500 units in 10 s. Its
# GIF's last title once said dx = +525.5 while evaluation scored 497.1 (the title used the plain
# joint mean, and the recording ran a different loop nest from scoring).
EXPLOIT = textwrap.dedent(
    """
    def make_square(wc, x0, y0, x1, y1):
        j0 = wc.add_joint(x0, y0)
        j1 = wc.add_joint(y1, y1)
        j2 = wc.add_joint(x1, y1)
        j3 = wc.add_joint(x1, y0)
        return j0, j1, j2, j3

    def make_walker():
        wc = walker_creator()
        sides = make_square(wc, 1, 0, 10, 72)
        center = wc.add_joint(6, 5)
        for k in range(len(sides) - 1 - 1):
            wc.add_muscle(sides[k], sides[k - 1])
        wc.add_muscle(sides[3], sides[0])
        wc.add_muscle(sides[0], center, False, 6.044, 0.0)
        wc.add_muscle(sides[1], center, False, 10.0, 0.0)
        wc.add_muscle(sides[2], center, False, 2.0, 0.0)
        return wc.get_walker()
    """
)


def test_gif_trajectory_ends_on_the_scored_state_bitwise():
    from elmjax.viz.walker_gif import trajectory

    g = {"walker_creator": walker_creator}
    exec(EXPLOIT, g)
    names = sorted(SEEDS) + ["exploit"]
    walkers = [SEEDS[n] for n in sorted(SEEDS)] + [check_walker(g["make_walker"]())]
    scored = Sodarace().evaluate(walkers)  # batched: walkers share chunks with neighbours
    assert scored.valid.all()
    for name, w, dx in zip(names, walkers, scored.extras["dx"]):
        run = trajectory(w)  # 10 s at 15 fps: a frame every 4 of 600
        assert run.valid and run.times[-1] == pytest.approx(10.0)
        assert run.dx[-1] == dx, f"{name}: GIF ends at dx {run.dx[-1]}, scored {dx}"
        mass = np.asarray(run.body.mass)[: run.x.shape[1], 0]
        com = run.x[-1] @ mass / mass.sum() - run.x[0] @ mass / mass.sum()
        assert com == pytest.approx(dx, rel=1e-5, abs=1e-4)  # the title's dx is the weighted COM
    # The exploit travelled ~500 units when free flight could push its own centre of mass; with
    # momentum conserved it still moves, chaotically (the GIF must still end where it scored).
    assert abs(scored.extras["dx"][-1]) > 5.0
    odd = trajectory(walkers[-1], fps=7)  # a frame every 9: 600 % 9 = 6 frames past the last
    assert odd.times[-1] == pytest.approx(10.0) and odd.dx[-1] == scored.extras["dx"][-1]


def test_simulate_prints_diagnostics_and_takes_physics_overrides(tmp_path, capsys):
    from elmjax.sodarace.cli import simulate_command

    square = tmp_path / "square.py"
    square.write_text(Sodarace().seed_programs()["square"])
    names = ("airborne_fraction", "peak_speed", "bone_error", "muscle_work")

    def run(*physics):
        args = argparse.Namespace(
            programs=[str(square)], terrain="flat", seconds=1.0, json=True, gif=None,
            physics=list(physics),
        )  # fmt: skip
        status = simulate_command(args)
        return status, [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]

    status, (row,) = run("substeps=6")
    assert status == 0 and row["ok"] and row["valid"] is not False
    assert all(isinstance(row[k], float) for k in names)
    # a bound no body meets: the row is invalid, keeps its diagnostics and names the reason
    status, (row,) = run("max_bone_error=0", "bone_compliance=0.01")
    assert status == 1 and not row["ok"]
    assert row["error"]["reason"] == "bone_error" and row["bone_error"] > 0
    assert all(isinstance(row[k], float) for k in names)
    status, (row,) = run("gravityy=1")
    assert status == 1 and "unknown physics parameter 'gravityy'" in row["error"]["message"]
    status, (row,) = run("substeps")
    assert status == 1 and "KEY=VALUE" in row["error"]["message"]
