"""The sandbox against a hostile corpus (tests/hostile/*.py, each naming the error kind it must
get), plus isolation, determinism, limits and worker replacement."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import socket
import struct
import subprocess
import sys
import threading
import time

import msgpack
import pytest

from elmjax.sandbox import ERROR_KINDS, ExecResult, Limits, SandboxPool, run_programs, wire
from elmjax.sandbox import pool as pool_module
from elmjax.sandbox import worker as worker_module
from elmjax.sodarace.seeds import load_seeds
from elmjax.sodarace.walker import check_walker, walker_creator

HOSTILE = pathlib.Path(__file__).parent / "hostile"
INJECT = {"walker_creator": "elmjax.sodarace.walker:walker_creator"}
CANARY = pathlib.Path("/tmp/elmjax-hostile-canary")
LIMITS = Limits(cpu_seconds=1.0, wall_seconds=5.0, address_space_bytes=256 << 20, workers=2)
SQUARE = load_seeds()["square"]


def hostile_cases() -> list[tuple[str, str, str]]:
    cases = []
    for path in sorted(HOSTILE.glob("*.py")):
        text = path.read_text()
        first = text.splitlines()[0]
        assert first.startswith("# expect: "), f"{path.name} must start with '# expect: KIND'"
        cases.append((path.stem, first.removeprefix("# expect: ").strip(), text))
    return cases


CASES = hostile_cases()


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(LIMITS, preload=("elmjax.sodarace.walker", "sandbox_checks")) as p:
        yield p


def run_walkers(pool, sources, **kw) -> list[ExecResult]:
    return pool.run(sources, "make_walker", check_walker, inject=INJECT, **kw)


@pytest.fixture(scope="module")
def hostile_batch(pool):
    """Every hostile program, each followed by the Square seed, in one batch."""
    CANARY.unlink(missing_ok=True)
    cwd_before = sorted(os.listdir("."))
    sources = []
    for _, _, text in CASES:
        sources += [text, SQUARE]
    start = time.monotonic()
    results = run_walkers(pool, sources)
    return results, time.monotonic() - start, cwd_before


def test_corpus_covers_every_error_kind():
    kinds = {kind for _, kind, _ in CASES}
    assert kinds == set(ERROR_KINDS), kinds


@pytest.mark.parametrize("name, kind", [(n, k) for n, k, _ in CASES])
def test_hostile_program_gets_its_error_kind(hostile_batch, name, kind):
    results, _, _ = hostile_batch
    result = results[2 * [n for n, _, _ in CASES].index(name)]
    assert not result.ok and result.value is None
    assert result.error.kind == kind, result.error
    assert 0 < len(result.error.message) <= LIMITS.max_message_chars
    assert result.seconds <= LIMITS.wall_seconds + 2.0


def test_next_program_in_the_batch_still_runs(hostile_batch):
    results, _, _ = hostile_batch
    followers = results[1::2]
    assert all(r.ok for r in followers), [r.error for r in followers if not r.ok]
    assert all(r.value == SQUARE_VALUE for r in followers)  # nothing forged, nothing left over


def test_caller_unharmed_and_nothing_written(hostile_batch, pool):
    _, _, cwd_before = hostile_batch
    assert not CANARY.exists()
    assert sorted(os.listdir(".")) == cwd_before
    assert math.pi == 3.141592653589793
    for workdir in pathlib.Path(pool.directory).iterdir():
        assert list(workdir.iterdir()) == []
    assert run_walkers(pool, [SQUARE])[0].ok


def test_messages_say_what_went_wrong(hostile_batch):
    results, _, _ = hostile_batch
    by_name = {name: results[2 * k].error.message for k, (name, _, _) in enumerate(CASES)}
    assert "'os'" in by_name["import_os"]
    assert "getattr" in by_name["getattr_built_strings"]
    assert (
        "__subclasses__" in by_name["subclasses_escape"]
        or "__class__" in by_name["subclasses_escape"]
    )
    assert "finite" in by_name["nan_coordinates"]
    assert "MAX_JOINTS" in by_name["many_joints"]
    assert "make_walker" in by_name["no_make_walker"]
    assert by_name["str_never_returns"].endswith("Stubborn")  # type name stands in for __str__
    assert "RecursionError" in by_name["deep_recursion"]
    assert by_name["runtime_error"].startswith("line 3: ZeroDivisionError")
    assert "SIGSEGV" in by_name["nested_map_stack_overflow"]
    assert "f_globals" in by_name["coroutine_frame"]
    assert "__traceback__" in by_name["traceback_through_format"]
    assert "'threading'" in by_name["import_threading"]
    assert "finite" in by_name["nan_amplitude"] and "finite" in by_name["inf_phase"]


def test_every_program_alone_returns_within_its_limit_plus_two_seconds(pool):
    for name in ("infinite_loop", "c_level_loop", "memory_growth"):
        text = next(t for n, _, t in CASES if n == name)
        start = time.monotonic()
        run_walkers(pool, [text])
        assert time.monotonic() - start <= LIMITS.wall_seconds + 2.0, name


# ---- results and isolation ------------------------------------------------------------------------


def test_seeds_and_results_in_input_order(pool):
    programs = [f"def make_walker():\n    return {k}\n" for k in range(40)]
    results = pool.run(programs, "make_walker", "sandbox_checks:identity")
    assert [r.value for r in results] == list(range(40))


def test_results_must_be_plain_data(pool):
    programs = {
        "def make_walker():\n    return {'a': (1, 2.5), 'b': [None, True, 'x']}\n": "ok",
        "class P:\n    pass\ndef make_walker():\n    return P()\n": "invalid",
        "def make_walker():\n    return {1: 2}\n": "invalid",
        "def make_walker():\n    return 2 ** 100\n": "invalid",
        "def make_walker():\n    return {1, 2}\n": "invalid",
        "def make_walker():\n    return ['x' * 1000] * 2000\n": "invalid",
        "def make_walker():\n    x = []\n    for _ in range(100):\n        x = [x]\n    return x\n": "invalid",
    }
    results = pool.run(list(programs), "make_walker", "sandbox_checks:identity")
    assert results[0].value == {"a": [1, 2.5], "b": [None, True, "x"]}
    for result, kind in zip(results[1:], list(programs.values())[1:]):
        assert result.error.kind == kind, result.error


def test_call_false_hands_the_function_to_check(pool):
    xor = "def parity(a, b):\n    return (a + b) % 2\n"
    crash = "def parity(a, b):\n    return a / 0\n"
    ok, bad = pool.run([xor, crash], "parity", "sandbox_checks:call_on_inputs", call=False)
    assert ok.value == [0, 1, 1, 0]
    assert bad.error.kind == "exception" and "ZeroDivisionError" in bad.error.message


def test_worker_is_locked_down(pool):
    (result,) = pool.run(["def f():\n    return 7\n"], "f", "sandbox_checks:worker_facts")
    facts = result.value
    assert facts["value"] == 7
    assert facts["cwd"] is None and facts["cwd_entries"] is None  # seccomp: no getcwd, no open
    assert not facts["jax_loaded"]
    assert not facts["socket_importable"]
    assert not facts["can_write_cwd"]
    assert not facts["can_fork"]
    if os.geteuid() == 0:
        assert facts["uid"] != 0 and facts["euid"] != 0
    assert facts["pid"] != os.getpid()


def test_modules_are_private_to_each_program(pool):
    vandal = (
        "import math, collections\n"
        "def make_walker():\n"
        "    math.pi = 3\n"
        "    collections.Counter.most_common = None\n"
        "    collections.namedtuple.note = 'was here'\n"
        "    walker_creator.note = 'was here'\n"
        "    return 0\n"
    )
    reader = (
        "import math, collections\n"
        "def note(thing):\n"
        "    try:\n"
        "        return thing.note\n"
        "    except AttributeError:\n"
        "        return None\n"
        "def make_walker():\n"
        "    return [math.pi, collections.Counter('aab').most_common(1)[0][1],\n"
        "            note(collections.namedtuple), note(walker_creator)]\n"
    )
    results = pool.run(
        [vandal] * 4 + [reader] * 4, "make_walker", "sandbox_checks:identity", inject=INJECT
    )
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.value for r in results[4:]] == [[math.pi, 2, None, None]] * 4


RANDOM_WALKER = """
import random

def make_walker():
    wc = walker_creator()
    joints = [wc.add_joint(random.uniform(0, 20), random.uniform(0, 20)) for _ in range(6)]
    for a, b in zip(joints, joints[1:]):
        wc.add_muscle(a, b, random.choice([2.0, 5.0, 10.0]), random.random())
    return wc.get_walker()
"""

RESEEDING_WALKER = RANDOM_WALKER.replace(
    "wc = walker_creator()", "random.seed()\n    wc = walker_creator()"
)


def test_same_program_same_result_whichever_worker_and_whatever_ran_before(pool):
    noise = "import random\ndef make_walker():\n    return [random.random() for _ in range(50)]\n"
    batch = [RANDOM_WALKER, noise, RANDOM_WALKER, noise, noise, RANDOM_WALKER, RANDOM_WALKER]
    seeds = [7, 1, 7, 2, 3, 7, 8]
    first = run_walkers(pool, batch, seeds=seeds)
    again = run_walkers(pool, list(reversed(batch)), seeds=list(reversed(seeds)))[::-1]
    sevens = [
        r.value
        for r, s, p in zip(first + again, seeds * 2, batch * 2)
        if s == 7 and p == RANDOM_WALKER
    ]
    assert len(sevens) == 6 and all(v == sevens[0] for v in sevens)
    assert first[6].value != first[0].value  # a different seed gives a different walker
    (alone,) = run_programs(
        [RANDOM_WALKER],
        "make_walker",
        check_walker,
        limits=dataclasses.replace(LIMITS, workers=1),
        seeds=[7],
        inject=INJECT,
    )
    assert alone.value == sevens[0]


def test_random_seed_without_argument_stays_deterministic(pool):
    a, b = run_walkers(pool, [RESEEDING_WALKER] * 2, seeds=[3, 3])
    assert a.ok and a.value == b.value


# ---- limits and worker replacement ----------------------------------------------------------------


def test_cpu_limit_fires_before_the_wall_clock(pool):
    limits = dataclasses.replace(LIMITS, cpu_seconds=0.3, wall_seconds=10.0)
    loop = "def make_walker():\n    while True:\n        pass\n"
    (result,) = pool.run([loop], "make_walker", "sandbox_checks:identity", limits=limits)
    assert result.error.kind == "timeout" and "CPU time" in result.error.message


def test_blocked_program_is_killed_by_the_wall_clock(pool):
    limits = dataclasses.replace(LIMITS, wall_seconds=1.0)
    start = time.monotonic()
    results = pool.run(["def f():\n    return 1\n"] * 3, "f", "sandbox_checks:block", limits=limits)
    assert [r.error.kind for r in results] == ["timeout"] * 3
    assert "wall-clock" in results[0].error.message
    assert time.monotonic() - start < 3 * 1.0 + pool_module.WALL_GRACE_SECONDS + 5
    assert run_walkers(pool, [SQUARE])[0].ok


def test_dead_program_process_gives_crashed_and_the_next_runs(pool):
    results = pool.run(["def f():\n    return 1\n"] * 2, "f", "sandbox_checks:die")
    assert [r.error.kind for r in results] == ["crashed"] * 2
    assert "SIGSEGV" in results[0].error.message
    assert run_walkers(pool, [SQUARE, SQUARE])[1].ok


def test_oversized_and_non_text_programs(pool):
    huge = "x = 1\n" * (LIMITS.max_source_bytes // 6 + 1)
    big, not_text = pool.run([huge, b"def make_walker(): pass"], "make_walker", check_walker)
    assert big.error.kind == "forbidden" and not_text.error.kind == "invalid"


def test_bad_check_or_inject_is_the_callers_error(pool):
    with pytest.raises(ValueError):
        pool.run([SQUARE], "make_walker", lambda v: v)
    with pytest.raises((ValueError, ImportError, AttributeError)):
        pool.run([SQUARE], "make_walker", check_walker, inject={"wc": "elmjax.nope:thing"})
    with pytest.raises(ValueError):
        pool.run([SQUARE], "make_walker", check_walker, seeds=[1, 2])


def test_empty_batch(pool):
    assert pool.run([], "make_walker", check_walker) == []


def test_absent_builtins_are_ordinary_identifiers(pool):
    program = (
        "def make_walker():\n"
        "    id, dir, input = 1, 2, 3\n"
        "    try:\n"
        "        exit(0)\n"
        "    except NameError:\n"
        "        return id + dir + input\n"
    )
    (result,) = pool.run([program], "make_walker", "sandbox_checks:identity")
    assert result.ok and result.value == 6


def test_fast_path_and_tree_check_agree(pool):
    """A program with a suspicious word only in a comment takes the full tree check."""
    clean = "import math\ndef make_walker():\n    return math.floor(2.5)\n"
    flagged = clean.replace("import math\n", "import math  # no getattr here\n")
    results = pool.run([clean, flagged], "make_walker", "sandbox_checks:identity")
    assert [r.value for r in results] == [2, 2]


def test_caller_with_jax_loaded_gets_jax_free_workers(tmp_path):
    """A main script that imports JAX: its workers must not re-import it (nor fork its state)."""
    import subprocess
    import sys

    script = tmp_path / "main_with_jax.py"
    script.write_text(
        "import json, sys\n"
        "import jax.numpy as jnp\n"
        "jnp.zeros(3).block_until_ready()\n"
        "from elmjax.sandbox import Limits, run_programs\n"
        "if __name__ == '__main__':\n"
        "    (r,) = run_programs(['def f():\\n    return 1\\n'], 'f',\n"
        "                        'sandbox_checks:worker_facts', limits=Limits(workers=1))\n"
        "    print(json.dumps(r.value))\n"
    )
    tests_dir = str(pathlib.Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=tests_dir + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["value"] == 1 and facts["jax_loaded"] is False


def test_set_order_is_the_same_from_run_to_run():
    """String hashing is salted per interpreter; workers come from a fork server started with a
    fixed PYTHONHASHSEED, so a program that iterates over a set gives the same answer each run."""
    import subprocess
    import sys

    code = (
        "import json\n"
        "from elmjax.sandbox import Limits, run_programs\n"
        'src = \'def f():\\n    return list({"apple", "pear", "fig", "kiwi", "lime", "plum"})\\n\'\n'
        "(r,) = run_programs([src], 'f', 'sandbox_checks:identity', limits=Limits(workers=1))\n"
        "print(json.dumps(r.value))\n"
    )
    tests_dir = str(pathlib.Path(__file__).parent)
    outs = []
    for salt in ("1", "2"):
        env = dict(os.environ, PYTHONPATH=tests_dir, PYTHONHASHSEED=salt)
        env.pop("PYTHONHASHSEED") if salt == "2" else None
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(proc.stdout.strip().splitlines()[-1])
    assert outs[0] == outs[1]


def test_interrupted_batch_does_not_leak_into_the_next(pool, monkeypatch):
    slow = "def f():\n    while True:\n        pass\n"
    calls = {"n": 0}
    real_wait = pool._wait

    def interrupting_wait(*args, **kwargs):
        busy = [w for w in pool._workers if w is not None and w.pending]
        if not calls["n"] and len(busy) == len(pool._workers):  # Ctrl-C, every worker mid-batch
            calls["n"] += 1
            raise KeyboardInterrupt
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(pool, "_wait", interrupting_wait)
    with pytest.raises(KeyboardInterrupt):
        pool.run([slow] * 4, "f", "sandbox_checks:identity")
    monkeypatch.undo()
    results = pool.run(["def f():\n    return 'fresh'\n"] * 3, "f", "sandbox_checks:identity")
    assert calls["n"] == 1
    assert [r.value for r in results] == ["fresh"] * 3


def test_run_programs_keeps_its_pool_warm():
    limits = dataclasses.replace(LIMITS, workers=1)
    first = run_programs([SQUARE], "make_walker", check_walker, limits=limits, inject=INJECT)
    pool = pool_module._POOLS[(1, ("elmjax.sodarace.walker",))]
    pids = pool.worker_pids()
    second = run_programs([SQUARE], "make_walker", check_walker, limits=limits, inject=INJECT)
    assert first[0].value == second[0].value and pool.worker_pids() == pids


def test_limits_are_checked():
    with pytest.raises(ValueError):
        Limits(cpu_seconds=0)
    with pytest.raises(ValueError):
        Limits(workers=0)
    with pytest.raises(ValueError):
        Limits(address_space_bytes=1 << 20)


# ---- the caller against a worker that breaks the protocol -----------------------------------------


class _FakeProcess:
    """Stands in for a worker process that the test itself speaks for."""

    def __init__(self) -> None:
        self.sentinel, self._alive_w = os.pipe()
        self.exitcode = None
        self.pid = -1

    def is_alive(self) -> bool:
        return self.exitcode is None

    def kill(self) -> None:
        if self.exitcode is None:
            self.exitcode = -9
            os.close(self._alive_w)

    def join(self, timeout=None) -> None:
        pass


def _frame(payload: bytes) -> bytes:
    return struct.pack("!i", len(payload)) + payload


def _reply(index: int, body: bytes) -> bytes:
    return wire.outcome(index, 0.01, 0, None, body)


def _body(reply: dict) -> bytes:
    """A reply as a program process that broke the rules could write it (any msgpack)."""
    return msgpack.packb(reply, use_bin_type=True)


SQUARE_VALUE = check_walker(
    (lambda ns: (exec(SQUARE, ns), ns["make_walker"]())[1])({"walker_creator": walker_creator})
)
GOOD_BODY = _body({"ok": True, "value": SQUARE_VALUE})
BAD_JOINT = dict(
    SQUARE_VALUE, muscles=[[0, 99, {"type": "distance", "amplitude": 0.0, "phase": 0.0}]]
)
DEEP = b"\x91" * 100_000 + b"\xc0"  # a list in a list in ... 100,000 deep

PROTOCOL_BREAKS = {
    # a frame that never completes: the caller must not block on it
    "partial_frame": (struct.pack("!i", 1000) + b"{", "timeout", False),
    "oversized_frame": (struct.pack("!i", 2**31 - 1), "crashed", False),
    "negative_frame": (struct.pack("!i", -1), "crashed", False),
    "short_header": (_frame(b"garbage"), "crashed", False),
    "unknown_problem_code": (
        _frame(wire.OUTCOME.pack(0, 0, 200, 0.01) + GOOD_BODY),
        "crashed",
        False,
    ),
    "nan_seconds": (_frame(wire.OUTCOME.pack(0, 0, 0, math.nan) + GOOD_BODY), "crashed", False),
    "reply_for_another_program": (_reply(1, GOOD_BODY), "crashed", False),
    # the template is fine, the program's process sent nonsense: only that program is crashed
    "nan_in_value": (_reply(0, _body({"ok": True, "value": math.nan})), "crashed", True),
    "inf_coordinate": (
        _reply(0, _body({"ok": True, "value": dict(SQUARE_VALUE, joints=[[math.inf, 0.0]])})),
        "crashed",
        True,
    ),
    "muscle_to_missing_joint": (
        _reply(0, _body({"ok": True, "value": BAD_JOINT})),
        "crashed",
        True,
    ),
    "unknown_reply_key": (
        _reply(0, _body({"ok": True, "value": SQUARE_VALUE, "admin": 1})),
        "crashed",
        True,
    ),
    "unknown_error_kind": (
        _reply(0, _body({"ok": False, "kind": "pwned", "message": "x"})),
        "crashed",
        True,
    ),
    "truncated_reply": (_reply(0, GOOD_BODY[:-3]), "crashed", True),
    "trailing_bytes": (_reply(0, GOOD_BODY + b"\xc0"), "crashed", True),
    "extension_type": (
        _reply(0, _body({"ok": True, "value": msgpack.ExtType(5, b"x")})),
        "crashed",
        True,
    ),
    "bytes_value": (_reply(0, _body({"ok": True, "value": b"\x00" * 10})), "crashed", True),
    "int_key": (_reply(0, _body({"ok": True, "value": {1: 2}})), "crashed", True),
    "nested_too_deep": (_reply(0, b"\x82\xa2ok\xc3\xa5value" + DEEP), "crashed", True),
    "huge_int": (_reply(0, _body({"ok": True, "value": 2**64 - 1})), "crashed", True),
    "not_a_map": (_reply(0, _body([True, SQUARE_VALUE])), "crashed", True),
}


@pytest.mark.parametrize("case", sorted(PROTOCOL_BREAKS))
def test_caller_survives_a_worker_that_breaks_the_protocol(case, tmp_path):
    data, kind, worker_kept = PROTOCOL_BREAKS[case]
    limits = Limits(cpu_seconds=0.5, wall_seconds=0.5, workers=1)
    with SandboxPool(limits, preload=("elmjax.sodarace.walker",)) as pool:
        ours, theirs = socket.socketpair()
        fake = pool_module._Worker(
            _FakeProcess(), pool_module.mp_connection.Connection(ours.detach()), str(tmp_path)
        )
        fake.ready = True
        pool._workers[0] = fake
        their_conn = pool_module.mp_connection.Connection(theirs.detach())

        def speak() -> None:
            first_reply = True
            while True:
                try:
                    batch = their_conn.recv()
                except (EOFError, OSError):
                    return
                if batch is None:  # the pool says goodbye
                    return
                for index, _, _ in batch["tasks"]:
                    if first_reply:
                        os.write(their_conn.fileno(), data)
                        first_reply = False
                        if not worker_kept:
                            return
                    else:  # a template still in step answers the next program properly
                        os.write(their_conn.fileno(), _reply(index, GOOD_BODY))

        speaker = threading.Thread(target=speak, daemon=True)
        speaker.start()
        start = time.monotonic()
        first, second = run_walkers(pool, [SQUARE, SQUARE])
        elapsed = time.monotonic() - start
        assert not first.ok and first.error.kind == kind, first.error
        assert elapsed < limits.wall_seconds + pool_module.WALL_GRACE_SECONDS + 10
        assert second.ok and second.value == SQUARE_VALUE  # the rest of the batch is unharmed
        assert (pool._workers[0] is fake) == worker_kept
    speaker.join(timeout=10)  # the pool closed our end: the speaker sees EOF and stops
    their_conn.close()


def test_messages_hold_no_paths_and_none_of_the_callers_environment(pool, monkeypatch):
    secret = "hunter2-elmjax-secret"
    monkeypatch.setenv("ELMJAX_TEST_SECRET", secret)
    program = (
        f"def make_walker():\n    raise RuntimeError('{secret} in /root/.config/private/key.txt')\n"
    )
    (result,) = run_walkers(pool, [program])
    assert result.error.kind == "exception"
    assert secret not in result.error.message and "/root" not in result.error.message
    assert "<redacted>" in result.error.message and "<path>" in result.error.message


def test_program_sees_an_empty_environment(pool):
    (result,) = pool.run(["def f():\n    return 1\n"], "f", "sandbox_checks:environment")
    assert result.ok and result.value == {}


# ---- fresh state per program ----------------------------------------------------------------------

CLEAN = "def f():\n    return 1\n"
SUSPICIOUS = "class Box:\n    pass\n\ndef f():\n    return 2\n"  # `class`: the full tree check


# One worker and ten programs: the pool's first batch to it holds the first five (a batch is
# at most half the queue per worker), which is what these tests look at.


def test_a_clean_program_process_serves_the_next_program_of_its_batch():
    with SandboxPool(dataclasses.replace(LIMITS, workers=1), preload=("sandbox_checks",)) as pool:
        results = pool.run([CLEAN] * 10, "f", "sandbox_checks:process_id")
        assert len({r.value[1] for r in results[:5]}) == 1
        strict = dataclasses.replace(LIMITS, workers=1, reuse_clean_process=False)
        results = pool.run([CLEAN] * 10, "f", "sandbox_checks:process_id", limits=strict)
        assert len({r.value[1] for r in results}) == 10


def test_a_program_process_serves_later_batches_of_the_same_job_only():
    """A clean process waits for the next batch of the same job (no fork per batch); a batch of
    another job (other limits here) gets a fresh process; and no process runs more than
    MAX_PROGRAMS_PER_PROCESS programs."""
    with SandboxPool(dataclasses.replace(LIMITS, workers=1), preload=("sandbox_checks",)) as pool:
        first = pool.run([CLEAN] * 2, "f", "sandbox_checks:process_id")
        second = pool.run([CLEAN] * 2, "f", "sandbox_checks:process_id")
        assert len({r.value[1] for r in first + second}) == 1
        other = dataclasses.replace(LIMITS, workers=1, cpu_seconds=0.9)
        third = pool.run([CLEAN], "f", "sandbox_checks:process_id", limits=other)
        assert third[0].value[1] != first[0].value[1]
        cap = worker_module.MAX_PROGRAMS_PER_PROCESS
        many = pool.run([CLEAN] * (3 * cap), "f", "sandbox_checks:process_id")
        pids = [r.value[1] for r in many]
        assert max(pids.count(p) for p in set(pids)) <= cap
        assert len(set(pids)) >= 3


def test_a_suspicious_or_failed_program_retires_its_process():
    with SandboxPool(dataclasses.replace(LIMITS, workers=1), preload=("sandbox_checks",)) as pool:
        loop = "def f():\n    while True:\n        pass\n"
        batch = [CLEAN, SUSPICIOUS, CLEAN, loop, CLEAN] + [CLEAN] * 5
        limits = dataclasses.replace(LIMITS, workers=1, cpu_seconds=0.3)
        r = pool.run(batch, "f", "sandbox_checks:process_id", limits=limits)
        assert [x.ok for x in r[:5]] == [True, True, True, False, True]
        assert r[0].value[1] == r[1].value[1]  # the suspicious one ran where it was sent
        assert r[2].value[1] != r[1].value[1]  # ... but nothing runs there after it
        assert r[4].value[1] != r[2].value[1]  # a timeout retires the process too


def test_a_program_that_leaves_state_behind_is_not_followed_in_its_process():
    """Even past the Python layer (here: a check that hoards in a real module), what a program
    leaves in its process is never seen by the next program."""
    with SandboxPool(dataclasses.replace(LIMITS, workers=1), preload=("sandbox_checks",)) as pool:
        results = pool.run([CLEAN] * 10, "f", "sandbox_checks:leave_something_behind")
        assert [r.value for r in results] == [0] * 10


def test_a_process_for_one_program_cannot_answer_for_the_next():
    """With a fresh process per program, a process that writes replies of its own (past the
    Python layer: here its `check` does) can forge at most its own answer: the template hands
    it one program and kills it after one reply, so the next program's answer is its own."""
    strict = dataclasses.replace(LIMITS, workers=1, reuse_clean_process=False)
    forger = "def f():\n    return 'forge'\n"
    honest = "def f():\n    return 'honest'\n"
    with SandboxPool(strict, preload=("sandbox_checks",)) as pool:
        # ten programs, one worker: the first batch holds five (see the note above)
        results = pool.run([forger] + [honest] * 9, "f", "sandbox_checks:forge_next_reply")
    assert [r.value for r in results[1:]] == ["honest"] * 9, results


def test_a_finaliser_past_the_budget_is_the_programs_timeout_whatever_ran_before(pool):
    """The garbage collector swallows the timer's exception inside a finaliser: the program
    must still get `timeout`, after any predecessor in its process, and the next one run."""
    trap = next(t for n, _, t in CASES if n == "finaliser_generator_hangs_next")
    limits = dataclasses.replace(LIMITS, cpu_seconds=0.3)
    for before in range(3):
        batch = [SQUARE] * before + [trap, SQUARE]
        results = run_walkers(pool, batch * 3, limits=limits)
        assert [r.error.kind for r in results if not r.ok] == ["timeout"] * 3
        assert sum(r.ok for r in results) == 3 * (before + 1)


ORDER_SCRIPT = """
import json, sys
from elmjax.sandbox import Limits, SandboxPool
from elmjax.sodarace.walker import check_walker
limits = Limits(cpu_seconds=1.0, wall_seconds=5.0, address_space_bytes=256 << 20, workers=2)
with SandboxPool(limits, preload=("numpy",)) as heavy:  # the first pool of the process
    heavy.run(["def f():\\n    return 1\\n"], "f", "sandbox_checks:identity")
sources = json.loads(sys.stdin.read())
with SandboxPool(limits, preload=("elmjax.sodarace.walker", "sandbox_checks")) as light:
    results = light.run(sources, "make_walker", check_walker,
                        inject={"walker_creator": "elmjax.sodarace.walker:walker_creator"})
print(json.dumps([r.error.kind if r.error else None for r in results]))
"""


def test_the_hostile_corpus_holds_whatever_pool_came_first():
    """Every pool of a process shares one fork server. A module a first pool needs (numpy here,
    ~100 MiB of address space) must not end up in a later pool's workers, where it would count
    against each program's memory limit: the whole hostile corpus, run in a fresh process after
    a numpy pool, gets the same error kinds as in `hostile_batch` (the memory hoarder, which fits
    its limit, got `memory` instead of `exception` when the server preloaded the first pool's
    modules)."""
    tests_dir = str(pathlib.Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, *sys.path]))
    proc = subprocess.run(
        [sys.executable, "-c", ORDER_SCRIPT],
        input=json.dumps([s for _, _, text in CASES for s in (text, SQUARE)]),  # as hostile_batch
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kinds = json.loads(proc.stdout.strip().splitlines()[-1])[::2]
    assert dict(zip([n for n, _, _ in CASES], kinds)) == {n: k for n, k, _ in CASES}
