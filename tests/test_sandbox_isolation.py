"""Each OS layer of the sandbox, proved on its own.

A program is given a deliberately planted hole: the real `os` and `socket` modules, injected
into its globals (something the AST policy never allows). What it can then do is exactly what
the operating system allows. A pool with no layer at all shows the probes do detect each act (so
the tests can fail); a pool with one layer shows which acts that layer alone refuses; the full
pool refuses them all, creates nothing and connects nowhere.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

from elmjax.sandbox import Limits, SandboxPool
from elmjax.sandbox.isolation import LAYERS, landlock_abi, seccomp_available

HOLE = {
    "os": "sandbox_checks:real_os",
    "socket": "sandbox_checks:real_socket",
    "thread": "sandbox_checks:real_thread",
    "OSError": "builtins:OSError",
}
LIMITS = Limits(cpu_seconds=2.0, wall_seconds=10.0, workers=1)
ROOT = os.geteuid() == 0

PROBE = """
def attempt(act):
    try:
        act()
        return "allowed"
    except OSError as exc:
        return errno_name(exc.errno)

def errno_name(number):
    return ERRNO_NAMES.get(number, str(number))

def make_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.close()

def connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(3)
        s.connect(("127.0.0.1", PORT))
    finally:
        s.close()

def write_file():
    fd = os.open(TARGET, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"escaped")
    finally:
        os.close(fd)

def read_file():
    fd = os.open(READABLE, os.O_RDONLY)
    os.read(fd, 16)
    os.close(fd)

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

def execute():
    os.execv("/nonexistent-elmjax-probe", ["probe"])

def signal_caller():
    os.kill(CALLER, 0)

def start_thread():
    try:
        thread.start_new_thread(int, ())
    except RuntimeError:  # "can't start new thread": the clone was refused
        raise OSError(1, "refused")

def status(field):
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY)
        text = os.read(fd, 8192).decode()
        os.close(fd)
    except OSError as exc:
        return errno_name(exc.errno)
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return line.split(":")[1].strip()
    return None

def namespace(kind):
    try:
        return os.readlink("/proc/self/ns/" + kind)
    except OSError as exc:
        return errno_name(exc.errno)

def probe():
    return {
        "socket": attempt(make_socket),
        "connect": attempt(connect),
        "write": attempt(write_file),
        "read": attempt(read_file),
        "fork": attempt(fork),
        "execve": attempt(execute),
        "kill": attempt(signal_caller),
        "thread": attempt(start_thread),
        "uid": os.getuid(),
        "ppid": os.getppid(),
        "no_new_privs": status("NoNewPrivs"),
        "seccomp": status("Seccomp"),
        "ns": {kind: namespace(kind) for kind in ("net", "mnt", "ipc", "user", "pid")},
    }
"""


@pytest.fixture(scope="module")
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    """A folder only root may write to (0o755): `nobody` cannot create files in it."""
    path = tmp_path_factory.mktemp("escape")
    path.chmod(0o755)
    return path


def probe_program(listener, target_dir) -> str:
    names = {getattr(errno, n): n for n in dir(errno) if n.startswith("E")}
    header = (
        f"PORT = {listener.getsockname()[1]}\n"
        f"TARGET = {str(target_dir / 'escaped.txt')!r}\n"
        f"READABLE = {str(pathlib.Path(__file__).resolve())!r}\n"
        f"CALLER = {os.getpid()}\n"
        f"ERRNO_NAMES = {names!r}\n"
    )
    return header + PROBE


def run_probe(layers, listener, target_dir) -> dict:
    with SandboxPool(LIMITS, preload=("sandbox_checks",), layers=layers) as pool:
        (result,) = pool.run(
            [probe_program(listener, target_dir)], "probe", "sandbox_checks:identity", inject=HOLE
        )
        report = pool.isolation
    assert result.ok, result.error
    value = result.value
    value["report"] = report
    (target_dir / "escaped.txt").unlink(missing_ok=True)
    accept_all(listener)
    return value


def accept_all(listener) -> int:
    accepted = 0
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, OSError):
            return accepted
        conn.close()
        accepted += 1


def own_namespace(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


@pytest.mark.skipif(not ROOT, reason="the baseline's acts need root (as on CI)")
def test_without_layers_the_planted_hole_is_real(listener, target_dir):
    """The probes detect each act: with no layer, everything goes through."""
    facts = run_probe((), listener, target_dir)
    for act in ("socket", "connect", "write", "read", "fork", "kill", "thread"):
        assert facts[act] == "allowed", (act, facts)
    assert facts["execve"] == "ENOENT"  # it tried: only the path is missing
    assert facts["ns"]["net"] == own_namespace("net")
    assert all(v == "disabled" for v in facts["report"].values())


@pytest.mark.skipif(seccomp_available() is not None, reason="no libseccomp here")
def test_seccomp_alone_refuses_socket_write_fork_exec_kill_and_threads(listener, target_dir):
    facts = run_probe(("seccomp",), listener, target_dir)
    for act in ("socket", "connect", "write", "read", "fork", "execve", "kill", "thread"):
        assert facts[act] == "EPERM", (act, facts)
    assert facts["report"]["seccomp"].startswith("active")
    assert not (target_dir / "escaped.txt").exists()


@pytest.mark.skipif(landlock_abi() < 4, reason="Landlock ABI 4+ needed (filesystem + TCP)")
def test_landlock_alone_refuses_files_tcp_and_signals(listener, target_dir):
    facts = run_probe(("landlock",), listener, target_dir)
    assert facts["write"] == "EACCES" and facts["read"] == "EACCES"
    assert facts["connect"] == "EACCES"
    if landlock_abi() >= 6:
        assert facts["kill"] == "EPERM"
    assert facts["socket"] == "allowed"  # Landlock rules acts on objects, not socket creation
    assert facts["report"]["landlock"].startswith("active")


def test_network_namespace_alone_leaves_no_route_to_the_caller(listener, target_dir):
    facts = run_probe(("net_namespace",), listener, target_dir)
    assert facts["report"]["net_namespace"] == "active"
    assert facts["ns"]["net"] != own_namespace("net")
    assert facts["connect"] in ("ENETUNREACH", "ECONNREFUSED", "EADDRNOTAVAIL")
    assert accept_all(listener) == 0


def test_mount_ipc_namespaces_are_the_workers_own(listener, target_dir):
    facts = run_probe(("mount_namespace", "ipc_namespace"), listener, target_dir)
    assert facts["ns"]["mnt"] != own_namespace("mnt")
    assert facts["ns"]["ipc"] != own_namespace("ipc")


def test_pid_namespace_alone_hides_every_outside_process(listener, target_dir):
    facts = run_probe(("pid_namespace",), listener, target_dir)
    assert facts["report"]["pid_namespace"] == "active"
    assert facts["ppid"] == 1  # the template is process 1 of the worker's namespace
    assert facts["kill"] == "ESRCH"  # the caller's pid does not exist in there


@pytest.mark.skipif(not ROOT, reason="only a root caller's workers change user")
def test_unprivileged_user_alone_cannot_write_or_signal_root(listener, target_dir):
    facts = run_probe(("unprivileged_user", "user_namespace"), listener, target_dir)
    assert facts["uid"] != 0
    assert facts["write"] == "EACCES"
    assert facts["kill"] == "EPERM"
    assert facts["ns"]["user"] != own_namespace("user")


def test_rlimits_alone_refuse_file_data(listener, target_dir):
    facts = run_probe(("rlimits",), listener, target_dir)
    assert facts["write"] == "EFBIG"  # RLIMIT_FSIZE 0: not one byte reaches a file


def test_no_new_privs_alone_is_set(listener, target_dir):
    facts = run_probe(("no_new_privs",), listener, target_dir)
    assert facts["no_new_privs"] == "1"
    assert facts["seccomp"] == "0"


def test_every_layer_together_refuses_everything(listener, target_dir):
    facts = run_probe(LAYERS, listener, target_dir)
    report = facts["report"]
    for act in ("socket", "connect", "write", "read", "fork", "execve", "kill", "thread"):
        assert facts[act] != "allowed", (act, facts)
    assert accept_all(listener) == 0
    assert not (target_dir / "escaped.txt").exists()
    assert facts["ppid"] in (0, 1) or report["pid_namespace"] != "active"
    assert set(report) == set(LAYERS)
    if ROOT:  # these machines: every layer is there (CI runs as root, kernel 6.x)
        unavailable = {k: v for k, v in report.items() if not v.startswith("active")}
        assert unavailable == {}, unavailable


def test_template_is_locked_down_seen_from_outside():
    """/proc of the template process, read by the caller: what the kernel holds it to."""
    with SandboxPool(LIMITS, preload=("sandbox_checks",)) as pool:
        report = pool.isolation
        (pid,) = pool.template_pids()
        status = dict(
            line.split(":", 1)
            for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        namespaces = {k: os.readlink(f"/proc/{pid}/ns/{k}") for k in ("net", "mnt", "ipc", "user")}
    if report["seccomp"].startswith("active"):
        assert status["Seccomp"].strip() == "2"  # filter mode
    assert status["NoNewPrivs"].strip() == "1"
    if ROOT:
        assert status["Uid"].split()[0] != "0"
        for kind, link in namespaces.items():
            assert link != own_namespace(kind), kind


CALLER_SCRIPT = """
import json
from elmjax.sandbox import Limits, SandboxPool
with SandboxPool(Limits(workers=1), preload=("sandbox_checks",)) as pool:
    layers = pool.isolation
    (result,) = pool.run(["def f():\\n    return 6 * 7\\n"], "f", "sandbox_checks:identity")
print(json.dumps({"layers": layers, "value": result.value}))
"""


@pytest.mark.parametrize(
    "mapping",
    [["--map-user=1000", "--map-group=1000"], ["--map-root-user"]],
    ids=["unprivileged_caller", "root_of_a_user_namespace"],
)
def test_callers_without_real_root_still_get_the_kernel_layers(mapping):
    """A caller that is not root (it creates the namespaces through a user namespace), and one
    that is root only inside a user namespace (as in rootless containers: `nobody` is not
    mapped, so that layer is reported unavailable and the others carry on)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    tests_dir = str(pathlib.Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, *sys.path]))
    proc = subprocess.run(
        ["unshare", "--user", *mapping, sys.executable, "-c", CALLER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    if proc.returncode != 0 and "unshare" in proc.stderr and "Traceback" not in proc.stderr:
        pytest.skip(f"user namespaces not available here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["value"] == 42
    layers = facts["layers"]
    for name in ("net_namespace", "pid_namespace", "no_new_privs", "landlock", "seccomp"):
        if name in ("landlock", "seccomp") and not layers[name].startswith("active"):
            assert "unavailable" in layers[name]  # a kernel or library without it
            continue
        assert layers[name].startswith("active"), (name, layers)
