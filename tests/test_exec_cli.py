"""`elmjax exec`: one JSON object per program, exit status, no traceback, no JAX import."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

from elmjax.sodarace.seeds import load_seeds
from elmjax.sodarace.walker import Walker, descriptors

SEEDS_DIR = pathlib.Path(__file__).resolve().parent.parent / "elmjax" / "sodarace" / "seeds"
HOSTILE = pathlib.Path(__file__).resolve().parent / "hostile"


def elmjax(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elmjax.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_seeds_all_ok():
    names = list(load_seeds())
    proc = elmjax("exec", *(str(SEEDS_DIR / f"{n}.py") for n in names), "--json")
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    assert [o["program"] for o in out] == [str(SEEDS_DIR / f"{n}.py") for n in names]
    for name, obj in zip(names, out):
        assert set(obj) == {"program", "ok", "joints", "muscles", "descriptor"}
        namespace: dict = {}
        from elmjax.sodarace.walker import walker_creator

        namespace["walker_creator"] = walker_creator
        exec(load_seeds()[name], namespace)
        walker: Walker = namespace["make_walker"]()
        assert obj["joints"] == len(walker.joints) and obj["muscles"] == len(walker.muscles)
        assert obj["descriptor"] == dict(zip(("height", "width", "mass"), descriptors(walker)))


def test_bad_programs_and_files_are_json_errors(tmp_path):
    not_utf8 = tmp_path / "latin1.py"
    not_utf8.write_bytes(b"# \xe9\xff\ndef make_walker(): pass\n")
    args = [
        str(SEEDS_DIR / "square.py"),
        str(HOSTILE / "syntax_error.py"),
        str(HOSTILE / "import_os.py"),
        str(tmp_path / "missing.py"),
        str(tmp_path),
        str(not_utf8),
        str(HOSTILE / "nan_coordinates.py"),
    ]
    proc = elmjax("exec", *args, "--json")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    out = lines(proc.stdout)
    assert [o["program"] for o in out] == args
    assert [o["ok"] for o in out] == [True] + [False] * 6
    kinds = [o["error"]["kind"] for o in out[1:]]
    assert kinds == ["syntax", "forbidden", "invalid", "invalid", "invalid", "invalid"]
    assert "cannot read" in out[3]["error"]["message"]
    assert "UTF-8" in out[5]["error"]["message"]


def test_timeout_option():
    start = time.monotonic()
    proc = elmjax("exec", str(HOSTILE / "infinite_loop.py"), "--timeout", "1")
    assert time.monotonic() - start < 30
    (out,) = lines(proc.stdout)
    assert proc.returncode == 1 and out["error"]["kind"] == "timeout"


def test_exec_does_not_import_jax():
    code = (
        "import sys\n"
        "from elmjax.cli import main\n"
        f"rc = main(['exec', {str(SEEDS_DIR / 'square.py')!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'numpy'))\n"
        "print('HEAVY', heavy, rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY [] 0", proc.stdout + proc.stderr


def test_isolation_option_reports_every_layer_on_stderr():
    from elmjax.sandbox.isolation import LAYERS

    proc = elmjax("exec", str(SEEDS_DIR / "square.py"), "--isolation", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    (out,) = lines(proc.stdout)  # stdout stays the JSON results only
    assert out["ok"]
    report = {}
    for line in proc.stderr.splitlines():
        if line.startswith("sandbox isolation: "):
            name, _, state = line.removeprefix("sandbox isolation: ").partition(" ")
            report[name] = state.strip()
    assert set(report) == set(LAYERS)
    assert all(s.startswith(("active", "unavailable", "disabled")) for s in report.values())
    assert report["seccomp"].startswith("active") or "unavailable" in report["seccomp"]


def test_isolation_option_alone_and_bad_workers():
    proc = elmjax("exec", "--isolation")
    assert proc.returncode == 0 and "sandbox isolation: seccomp" in proc.stderr
    proc = elmjax("exec", str(SEEDS_DIR / "square.py"), "--workers", "0")
    assert proc.returncode == 1 and "--workers" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_workers_option_runs_a_batch_in_one_worker():
    paths = [str(SEEDS_DIR / "square.py"), str(HOSTILE / "memory_bomb.py")] * 3
    proc = elmjax("exec", *paths, "--workers", "1")
    out = lines(proc.stdout)
    assert [o["ok"] for o in out] == [True, False] * 3
    assert {o["error"]["kind"] for o in out[1::2]} == {"memory"}
