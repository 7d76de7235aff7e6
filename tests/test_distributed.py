"""Scale-out: the mesh, several host devices, several processes on loopback, bad launches.

The multi-device and multi-process runs are real `elmjax evolve` subprocesses (JAX fixes its
device count and distributed state per process). They compare the program store, row by row,
with a one-process, one-device run of the same config: same programs, same outcomes, same
fitness bits, same cells, so the same archive.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elmjax.config import RunConfig, dump_config, load_config
from elmjax.distributed import Cluster, DistributedError, agree, check_port_free

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT = 20  # seconds: distributed.heartbeat_timeout of the multi-process runs

TINY = """\
seed: 3
budget: 33
time_limit: null
batch_size: 8
lag: 1
report: false
progress: never
checkpoint_every: 2
env: {seconds: 2.0, chunk: 8}
archive: {shape: [6, 6, 6]}
mutation: {operator: gp, children_per_prompt: 2}
sandbox: {workers: 1}
"""

#: the same run with the embedded LM as the mutation operator (short completions: the test is
#: about which tokens each child draws, not about how good they are)
LM_TINY = """\
seed: 5
budget: 49
time_limit: null
batch_size: 16
lag: 1
report: false
progress: never
checkpoint_every: 2
env: {{seconds: 2.0, chunk: 8}}
archive: {{shape: [6, 6, 6]}}
mutation: {{operator: {operator}, model: elm-tiny, children_per_prompt: 2, max_new_tokens: 48}}
sandbox: {{workers: 1}}
"""

# -- pieces ------------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2, 3, 8])
def test_process_shards_partition_the_batch_in_order(processes):
    for n in range(0, 40):
        shards = [Cluster(p, processes).shard(n) for p in range(processes)]
        covered = [i for lo, hi in shards for i in range(lo, hi)]
        assert covered == list(range(n))  # disjoint, complete, in batch order
        sizes = [hi - lo for lo, hi in shards]
        assert max(sizes) - min(sizes) <= 1


def test_joint_stop_takes_the_first_reason_in_process_order():
    assert agree([None, None]) is None
    assert agree([None, "time_limit", "interrupted"]) == "time_limit"


def test_port_in_use_is_refused_before_jax_sees_it():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DistributedError, match="in use"):
            check_port_free(f"127.0.0.1:{port}")


def test_distributed_keys_are_checked_and_never_stored(tmp_path):
    with pytest.raises(ValueError, match="distributed.coordinator"):
        load_config(None, ["distributed.num_processes=2"])  # no coordinator, no id
    with pytest.raises(ValueError, match="distributed.process_id"):
        load_config(
            None,
            [
                "distributed.coordinator=127.0.0.1:1234",
                "distributed.num_processes=2",
                "distributed.process_id=2",
            ],
        )
    config = load_config(
        None,
        [
            "distributed.coordinator=10.0.0.1:1234",
            "distributed.num_processes=2",
            "distributed.process_id=1",
            "compile_cache=/somewhere",
        ],
    )
    dump_config(config, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "distributed" not in text and "compile_cache" not in text
    assert load_config(tmp_path / "config.yaml") == RunConfig()


def test_compile_cache_setting_resolves(monkeypatch, tmp_path):
    from elmjax import compile_cache

    assert load_config(None, ["compile_cache=off"]).compile_cache == "off"  # YAML: off = false
    monkeypatch.setenv("ELMJAX_CACHE_DIR", str(tmp_path / "c"))
    assert compile_cache.resolve("auto") == tmp_path / "c"
    assert compile_cache.resolve("off") is None
    assert compile_cache.resolve(str(tmp_path / "d")) == tmp_path / "d"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gp", "diff", "prompt", "crossover"])
def test_an_operator_gives_the_same_children_however_the_batch_is_split(name):
    """Every process of a run hands its operator the whole batch and its own `part`: the
    children of the parts, joined, are the children of one call over the whole batch (random
    streams by global index, crossover partners from the whole batch, one prompt length
    bucket), whatever the slices' sizes."""
    from elmjax.mutation.operators import make_operator
    from elmjax.sodarace.env import Sodarace

    seeds = list(Sodarace().seed_programs().values())
    parents = (seeds * 3)[:5]  # prompts of different lengths (and length buckets)
    ids = list(range(100, 105))
    if name == "gp":
        kw = {}
    else:
        kw = {"model": tiny_sampler().model, "sampler": tiny_sampler(), "max_new_tokens": 16}
    op = make_operator(name, **kw)
    whole = op.mutate(parents, 2, 123, parent_ids=ids)
    for cuts in ([0, 2, 5], [0, 1, 4, 5], [0, 0, 5]):
        parts = [
            child
            for lo, hi in zip(cuts, cuts[1:])
            for child in op.mutate(parents, 2, 123, parent_ids=ids, part=(lo, hi))
        ]
        assert parts == whole, cuts
    if name != "crossover":  # elm-tiny v2, a diff model, ends every crossover at once ("<END>")
        assert len({c.raw_output or c.text for c in whole}) > 1  # not one child repeated
    with pytest.raises(ValueError, match="part"):
        op.mutate(parents, 2, 123, parent_ids=ids, part=(3, 6))


@functools.cache
def tiny_sampler():
    """The embedded model's sampler on one device, built once for the module."""
    from elmjax.lm import load_model
    from elmjax.lm.sampler import Sampler

    return Sampler(load_model("elm-tiny"), mesh=None)


def test_mesh_axes_are_auto_and_the_model_axis_divides_the_devices():
    import jax
    from jax.sharding import AxisType

    from elmjax.mesh import DATA, MODEL, data_mesh, make_mesh

    mesh = make_mesh()
    assert mesh.axis_names == (DATA, MODEL)
    assert mesh.shape[DATA] == len(jax.local_devices()) and mesh.shape[MODEL] == 1
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="divide"):
        make_mesh(model=len(jax.local_devices()) + 1)
    assert data_mesh(jax.local_devices()[:1]) is None  # one device: plain jit


# -- runs ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evolve(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "elmjax.cli", "evolve", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def launch_two(
    args: list[str],
    port: int,
    env1: dict[str, str] | None = None,
    env0: dict[str, str] | None = None,
) -> list:
    keys = [
        f"distributed.coordinator=127.0.0.1:{port}",
        "distributed.num_processes=2",
        f"distributed.heartbeat_timeout={HEARTBEAT}",
    ]
    procs = []
    for pid in (0, 1):
        sets = [a for k in [*keys, f"distributed.process_id={pid}"] for a in ("--set", k)]
        procs.append(evolve([*args, *sets], env1 if pid == 1 else env0))
    return procs


def store_rows(run: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{run / 'programs.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT program_id, generation, batch_index, text, parents, outcome_kind, valid, "
            "fitness, descriptor, cell, entered, status FROM programs ORDER BY program_id"
        ).fetchall()
    finally:
        db.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> list[tuple]:
    """The store of the run on one process and one device."""
    out = tmp_path_factory.mktemp("one") / "run"
    code, err = finish(evolve(["--config", str(tiny), "--out", str(out)]))
    assert code == 0, err[-3000:]
    rows = store_rows(out)
    assert len(rows) == 33 and any(r[6] for r in rows[1:])  # children, some valid
    return rows


@pytest.mark.slow
def test_eight_host_devices_give_the_same_run_as_one(tiny, reference, tmp_path):
    out = tmp_path / "run"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    code, err = finish(evolve(["--config", str(tiny), "--out", str(out)], env))
    assert code == 0, err[-3000:]
    assert len(json.loads((out / "provenance.json").read_text())["devices"]) == 8
    assert store_rows(out) == reference


@pytest.mark.slow
def test_two_processes_give_the_same_run_as_one(tiny, reference, tmp_path):
    out = tmp_path / "run"
    procs = launch_two(["--config", str(tiny), "--out", str(out)], free_port())
    results = [finish(p) for p in procs]
    for code, err in results:
        assert code == 0, err[-3000:]
    assert store_rows(out) == reference
    assert json.loads((out / "provenance.json").read_text())["processes"] == 2
    assert "distributed" not in (out / "config.yaml").read_text()


def all_rows(run: Path) -> list[dict]:
    """Every column of the store (prompts, raw model outputs, outcomes...) but wall times."""
    db = sqlite3.connect(f"file:{run / 'programs.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT * FROM programs ORDER BY program_id").fetchall()
        return [{k: v for k, v in zip(r.keys(), r) if k != "seconds"} for r in rows]
    finally:
        db.close()


@pytest.fixture(scope="module")
def lm_reference(tmp_path_factory):
    """(config, store rows) of the LM run on one process and one device, per operator."""
    runs: dict[str, tuple[Path, list[dict]]] = {}

    def run(operator: str) -> tuple[Path, list[dict]]:
        if operator not in runs:
            config = tmp_path_factory.mktemp(f"lm-{operator}") / "lm.yaml"
            config.write_text(LM_TINY.format(operator=operator))
            out = config.parent / "one"
            code, err = finish(evolve(["--config", str(config), "--out", str(out)]))
            assert code == 0, err[-3000:]
            rows = all_rows(out)
            outputs = {r["raw_output"] for r in rows if r["generation"] > 0}
            assert len(rows) == 49 and len(outputs) > 4  # the model's own, varied samples
            runs[operator] = (config, rows)
        return runs[operator]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("operator", ["diff", "prompt"])
def test_two_processes_give_the_same_lm_run_as_one(operator, lm_reference, tmp_path):
    """Each process samples its own slice of the prompts, yet every child draws the tokens it
    would draw in one process: the same prompts, raw outputs, programs and archive."""
    config, reference = lm_reference(operator)
    out = tmp_path / "run"
    procs = launch_two(["--config", str(config), "--out", str(out)], free_port())
    for code, err in [finish(p) for p in procs]:
        assert code == 0, err[-3000:]
    assert all_rows(out) == reference


@pytest.mark.slow
def test_eight_host_devices_give_the_same_lm_run_as_one(lm_reference, tmp_path):
    """The sampler splits the 16 rows of a generation's prompts over 8 devices.

    Every column is bit-equal but the simulator's float diagnostics (`DIAGNOSTIC_COLUMNS`),
    which the sharded simulator accumulates a few ulps apart for some bodies (measured:
    airborne_fraction 0.45000002 vs 0.44999999, muscle_work 9884.6807 vs 9884.6816); fitness,
    descriptors and cells are bit-equal, as the GP test above checks."""
    from elmjax.store import DIAGNOSTIC_COLUMNS

    config, reference = lm_reference("diff")
    out = tmp_path / "run"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    code, err = finish(evolve(["--config", str(config), "--out", str(out)], env))
    assert code == 0, err[-3000:]
    got = all_rows(out)
    for row, ref in zip(got, reference):
        for name in DIAGNOSTIC_COLUMNS:
            if ref[name] is not None:
                assert row[name] == pytest.approx(ref[name], rel=1e-5, abs=1e-6), name
            row[name] = ref[name]
    assert got == reference


@pytest.mark.slow
def test_a_killed_process_ends_the_other_and_the_run_resumes_whole(tiny, reference, tmp_path):
    out = tmp_path / "run"
    # process 1 dies (SIGKILL) while preparing generation 3; process 0 must notice and stop
    procs = launch_two(
        ["--config", str(tiny), "--out", str(out)],
        free_port(),
        env1={"ELMJAX_FAULT": "3:prepare"},
    )
    code1, _ = finish(procs[1])
    assert code1 == -9
    t0 = time.monotonic()
    code0, err0 = finish(procs[0], timeout=HEARTBEAT + 120)  # bounded: never a hang
    waited = time.monotonic() - t0
    assert code0 == 4, err0[-3000:]
    assert "lost contact with the other processes" in err0 and "--resume" in err0
    assert waited < HEARTBEAT + 120
    # a resume with another process count is refused, naming the count to use
    code, err = finish(evolve(["--resume", str(out)]))
    assert code == 1 and "started with 2 process(es)" in err, err[-2000:]
    # both processes resume: nothing lost, nothing duplicated
    procs = launch_two(["--resume", str(out)], free_port())
    for code, err in [finish(p) for p in procs]:
        assert code == 0, err[-3000:]
    assert store_rows(out) == reference


@pytest.mark.slow
def test_a_full_disk_on_process_0_stops_every_process_at_the_same_generation(tiny, tmp_path):
    out = tmp_path / "run"
    procs = launch_two(
        ["--config", str(tiny), "--out", str(out)],
        free_port(),
        env0={"ELMJAX_FAULT": "2:store:enospc"},
    )
    (code0, err0), (code1, err1) = [finish(p, timeout=600) for p in procs]
    assert code0 == 3 and "disk full" in err0, err0[-3000:]
    assert code1 == 3 and "--resume" in err1, err1[-3000:]  # stopped with it, not "lost contact"
    assert "lost contact" not in err1


@pytest.mark.slow
def test_bad_launches_get_clear_messages(tiny, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        procs = launch_two(["--config", str(tiny), "--out", str(tmp_path / "r")], port)
        code0, err0 = finish(procs[0], timeout=120)
        procs[1].kill()
        procs[1].wait()
    assert code0 == 1 and f"127.0.0.1:{port}" in err0 and "in use" in err0, err0[-2000:]
    # JAX used before the run could join the others
    code = (
        "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()\n"
        "from elmjax import distributed\n"
        "try:\n"
        f"    distributed.initialize('127.0.0.1:{free_port()}', 2, 0, initialization_timeout=5)\n"
        "except distributed.DistributedError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "JAX was used before the multi-process run could be set up" in out.stdout, out.stderr


@pytest.mark.slow
def test_sampler_rows_over_eight_host_devices_sample_as_one_device():
    code = (
        "import json, jax\n"
        "from elmjax.lm import load_model\n"
        "from elmjax.lm.sampler import Sampler\n"
        "model = load_model('elm-tiny')\n"
        "prompts = [f'def make_walker():\\n    # walker {i}\\n' for i in range(8)]\n"
        "kw = dict(max_new_tokens=12, temperature=0.8, top_p=0.95)\n"
        "sharded = Sampler(model)\n"
        "single = Sampler(model, mesh=None)\n"
        "a = sharded.sample(prompts, 2, jax.random.key(5), **kw)\n"
        "b = single.sample(prompts, 2, jax.random.key(5), **kw)\n"
        "print(json.dumps({'devices': sharded.mesh.size, 'same': a == b, 'a': a[:2]}))\n"
    )
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["devices"] == 8
    assert got["same"], got["a"]
