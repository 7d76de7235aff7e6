"""The operating-system layers of a sandbox worker: namespaces, identity, Landlock, seccomp.

The AST policy (`policy.py`) is a Python-level wall, and Python-level walls have holes. These
layers make the kernel refuse what a program must never do, whatever Python object it reaches:

- **namespaces** (`unshare`): a new network namespace (only a loopback that is down: no
  connection leaves the worker), and mount, IPC, UTS and pid namespaces; a user namespace too
  when the caller is not root (that is what lets an unprivileged caller create the others);
- **rlimits**: no core files, no file writes (`RLIMIT_FSIZE` 0), no new processes for a
  non-root identity (`RLIMIT_NPROC` 0), and per program CPU and address-space limits;
- **unprivileged user**: a root caller's worker becomes `nobody`, with no supplementary groups;
- **no_new_privs**: nothing the worker executes can gain privileges (set-uid, file caps);
- **Landlock**: every filesystem access right is handled and none is granted, so no file can be
  opened, created, removed or executed; TCP bind/connect is denied; and (ABI 6) the worker may
  not signal processes or reach abstract Unix sockets outside its own domain;
- **seccomp-bpf**: an allow-list of system calls. The worker's *template* filter allows `fork`
  (the template forks one child per program); each program's child adds a stricter filter of
  its own (no fork, no signals, no rlimit changes), so the child runs under both.
  System calls outside the list fail with EPERM (never a kill: a refused call is an ordinary
  Python `PermissionError`, and the worker keeps serving). No `socket`, `connect`, `execve`,
  `open` or `openat` (not even for reading: everything a worker needs is imported before the
  filter), `ptrace`, `kill`, `mount`, `unshare`, `setns`, `bpf`, `io_uring`.

Each layer is tried independently. One the kernel (or the caller's privileges) does not allow
is recorded as unavailable with the reason, and the worker carries on with the others; the pool
says so once, and `elmjax exec --isolation` prints the report.

The seccomp filter comes from libseccomp through `pyseccomp` (a maintained ctypes binding
with the API of libseccomp's own Python module), never hand-assembled BPF. Landlock is three
system calls on two small structs, called directly with ctypes: the Python Landlock packages
available cover the filesystem rules only, and the network and scope rights of ABI 4-6 are
the part that matters here.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from collections.abc import Iterable
from typing import Any

#: Every layer, in the order a worker applies them.
LAYERS: tuple[str, ...] = (
    "pid_namespace",
    "net_namespace",
    "mount_namespace",
    "ipc_namespace",
    "user_namespace",
    "rlimits",
    "unprivileged_user",
    "no_new_privs",
    "landlock",
    "seccomp",
)

try:  # imported now, with the filesystem still open: it looks up libseccomp.so.2
    import pyseccomp as _seccomp

    _SECCOMP_PROBLEM: str | None = None
except Exception as _exc:  # no package, or no libseccomp on this machine
    _seccomp = None
    _SECCOMP_PROBLEM = f"pyseccomp/libseccomp not usable ({type(_exc).__name__}: {_exc})"[:200]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000
CLONE_THREAD = 0x00010000
CLONE_NEW_ANY = (
    CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
    | CLONE_NEWCGROUP
)  # fmt: skip
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39


class LayerUnavailable(Exception):
    """A layer the kernel or the caller's privileges do not allow; the message says why."""


def _check(result: int, what: str) -> None:
    if result < 0:
        code = ctypes.get_errno()
        raise LayerUnavailable(f"{what}: {errno.errorcode.get(code, code)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def make_mounts_private() -> None:
    """Mount events of this namespace stay here (and the host's do not arrive)."""
    _check(
        _libc.mount(b"none", b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None),
        "mount --make-rprivate /",
    )


def die_with_parent(signal_number: int = 9) -> None:
    """Ask the kernel to send `signal_number` when the parent process exits."""
    _libc.prctl(PR_SET_PDEATHSIG, signal_number, 0, 0, 0)


def set_no_new_privs() -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


# ---- Landlock ------------------------------------------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
#: Filesystem rights per ABI version (each version adds the bits listed).
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: 1 << 13, 3: 1 << 14, 5: 1 << 15}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0 when Landlock is absent or disabled)."""
    version = _libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )  # fmt: skip
    return max(0, int(version))


def apply_landlock() -> str:
    """Deny every filesystem right the kernel knows, TCP bind/connect, and signals or abstract
    sockets beyond this domain; grant nothing. Returns what was covered."""
    abi = landlock_abi()
    if abi < 1:
        raise LayerUnavailable("Landlock is not enabled in this kernel")
    fs = sum(bits for version, bits in _FS_RIGHTS_BY_ABI.items() if version <= abi)
    attr = _RulesetAttr(fs, 0, 0)
    size = 8
    covered = ["filesystem"]
    if abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        size = 16
        covered.append("tcp")
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
        covered.append("signals")
    fd = _libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
    )
    _check(fd, "landlock_create_ruleset")
    try:
        _check(
            _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)),
            "landlock_restrict_self",
        )
    finally:
        os.close(fd)
    return f"ABI {abi}: " + ", ".join(covered)


# ---- seccomp -------------------------------------------------------------------------------------

#: What a program's process needs to run Python code, encode its reply and exit: memory,
#: signals (its CPU timer), clocks, reading/writing descriptors it already holds. Nothing that
#: names a file, a socket, a process or a privilege.
PROGRAM_SYSCALLS: tuple[str, ...] = (
    "read", "write", "readv", "writev", "pread64", "pwrite64", "close", "fstat", "newfstatat",
    "lseek", "mmap", "munmap", "mremap", "mprotect", "brk", "madvise", "rt_sigaction",
    "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "getpid", "gettid", "getppid", "getuid",
    "geteuid", "getgid", "getegid", "getrusage", "setitimer", "getitimer", "clock_gettime",
    "clock_getres", "gettimeofday", "futex", "exit", "exit_group", "getrandom", "sched_yield",
    "restart_syscall", "sched_getaffinity", "membarrier", "rseq", "fcntl", "dup", "uname",
)  # fmt: skip
#: What the template adds: forking one child per program (plain `fork`: `clone` without any
#: namespace or thread flag; `clone3` answers ENOSYS so the C library falls back to `clone`),
#: waiting for it, a pipe to it, polling, and the child's own set-up before its filter.
TEMPLATE_SYSCALLS: tuple[str, ...] = (
    "pipe2", "poll", "ppoll", "select", "pselect6", "wait4", "waitid", "kill", "prctl",
    "seccomp", "prlimit64", "setrlimit", "getrlimit", "close_range", "dup2", "dup3",
    "set_robust_list", "set_tid_address", "pidfd_open",
)  # fmt: skip


def _filter(allowed: Iterable[str], allow_fork: bool) -> Any:
    seccomp = _seccomp
    f = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
    arch = seccomp.system_arch()
    for name in allowed:
        try:
            seccomp.resolve_syscall(arch, name)
        except Exception:  # not a system call on this architecture
            continue
        f.add_rule(seccomp.ALLOW, name)
    if allow_fork:
        f.add_rule(
            seccomp.ALLOW, "clone",
            seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEW_ANY | CLONE_THREAD, 0),
        )  # fmt: skip
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return f


def template_filter() -> Any:
    """The worker's filter (loaded once): programs' calls plus fork/wait/pipe."""
    return _filter((*PROGRAM_SYSCALLS, *TEMPLATE_SYSCALLS), allow_fork=True)


def program_filter() -> Any:
    """Each program's child adds this on top of the template's filter (built once, in the
    template, before its own filter forbids what building it needs; loaded in each child)."""
    return _filter(PROGRAM_SYSCALLS, allow_fork=False)


def compiled_program_filter() -> bytes:
    """The program filter as the BPF program libseccomp generates for it (`export_bpf`), so
    that a child only hands it to the kernel (`load_bpf`). libseccomp's own `load` generates
    the BPF again on every call, which costs each program process ~0.9 ms of CPU."""
    read_end, write_end = os.pipe()
    try:
        with open(write_end, "wb", closefd=True) as sink:
            program_filter().export_bpf(sink)
        chunks = []
        while chunk := os.read(read_end, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(read_end)
    program = b"".join(chunks)
    if not program or len(program) % _BPF_INSTRUCTION_BYTES:
        raise LayerUnavailable(f"libseccomp exported {len(program)} bytes of BPF")
    return program


_BPF_INSTRUCTION_BYTES = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def load_bpf(program: bytes) -> None:
    """Install a seccomp filter from its BPF (`compiled_program_filter`) on this process, on
    top of any it has: `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)`, what libseccomp's
    `seccomp_load` does after generating the program (no_new_privs is already set)."""
    fprog = _SockFprog(len(program) // _BPF_INSTRUCTION_BYTES, program)
    _check(
        _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
        "prctl(PR_SET_SECCOMP)",
    )


def seccomp_available() -> str | None:
    """None when a filter can be built here, else why not."""
    return _SECCOMP_PROBLEM


# ---- identity and limits -------------------------------------------------------------------------


def unprivileged_ids() -> tuple[int, int]:
    """(uid, gid) of `nobody`, the user root workers run as."""
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def drop_privileges() -> None:
    uid, gid = unprivileged_ids()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise RuntimeError("sandbox worker could not drop root privileges")


def worker_rlimits() -> None:
    """Limits that hold for the worker's whole life (per-program CPU and memory are the
    program's child's, set in `program_rlimits`)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def program_rlimits(cpu_seconds: float, address_space_bytes: int) -> None:
    """A program's child: its CPU counter starts at zero (a fresh process), so the soft limit is
    its budget plus a second (SIGXCPU, caught) and the hard one a second more (SIGKILL)."""
    soft = int(cpu_seconds) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


# ---- the whole sequence --------------------------------------------------------------------------


def enter_namespaces(layers: frozenset[str], report: dict[str, str]) -> None:
    """Network, mount, IPC/UTS (and, for a non-root caller, user) namespaces, in one `unshare`
    when possible. Called once per worker, before the identity changes."""
    wanted = 0
    if "net_namespace" in layers:
        wanted |= CLONE_NEWNET
    if "mount_namespace" in layers:
        wanted |= CLONE_NEWNS
    if "ipc_namespace" in layers:
        wanted |= CLONE_NEWIPC | CLONE_NEWUTS
    if not wanted:
        return
    user = 0
    if os.geteuid() != 0 and "user_namespace" in layers:
        user = CLONE_NEWUSER  # what lets an unprivileged process create the other namespaces
    names = {
        CLONE_NEWNET: "net_namespace", CLONE_NEWNS: "mount_namespace",
        CLONE_NEWIPC: "ipc_namespace",
    }  # fmt: skip
    try:
        unshare(wanted | user)
        for bit, name in names.items():
            if wanted & bit:
                report[name] = "active"
        if user:
            report["user_namespace"] = "active (caller is not root)"
    except LayerUnavailable as first:
        for bit, name in names.items():  # one at a time: keep what the kernel allows
            if wanted & bit:
                try:
                    unshare(bit | user)
                    report[name] = "active"
                except LayerUnavailable as exc:
                    report[name] = f"unavailable: {exc}"
        if user and "user_namespace" not in report:
            report["user_namespace"] = f"unavailable: {first}"
    if report.get("mount_namespace") == "active":
        try:
            make_mounts_private()
        except LayerUnavailable as exc:
            report["mount_namespace"] = f"active, mounts not private ({exc})"


def enter_user_namespace(layers: frozenset[str], report: dict[str, str]) -> None:
    """A root caller's worker, now `nobody`, moves into a user namespace of its own as well: it
    holds no mapping, so the worker stays the overflow user outside and owns nothing there."""
    if "user_namespace" not in layers or "user_namespace" in report:
        return
    try:
        unshare(CLONE_NEWUSER)
        report["user_namespace"] = "active"
    except LayerUnavailable as exc:
        report["user_namespace"] = f"unavailable: {exc}"


def lock_down(layers: frozenset[str], report: dict[str, str]) -> Any:
    """Everything after the namespaces, in the order that works: rlimits -> drop user ->
    user namespace -> no_new_privs -> Landlock -> seccomp (last: it forbids what the others
    use). Returns the program filter's BPF (`compiled_program_filter`, built now, loaded by each
    program's child with `load_bpf`), or None."""
    if "rlimits" in layers:
        worker_rlimits()
        report["rlimits"] = "active"
    if "unprivileged_user" in layers:
        if os.geteuid() == 0:
            try:
                drop_privileges()
                report["unprivileged_user"] = f"active (uid {os.getuid()})"
            except OSError as exc:  # root of a user namespace in which `nobody` is not mapped
                report["unprivileged_user"] = f"unavailable: {exc.strerror or exc}"
        else:
            report["unprivileged_user"] = "active (the caller is not root)"
    enter_user_namespace(layers, report)
    if "no_new_privs" in layers or "seccomp" in layers:  # seccomp needs it unprivileged
        try:
            set_no_new_privs()
            report["no_new_privs"] = "active"
        except LayerUnavailable as exc:
            report["no_new_privs"] = f"unavailable: {exc}"
    if "landlock" in layers:
        try:
            report["landlock"] = "active (" + apply_landlock() + ")"
        except LayerUnavailable as exc:
            report["landlock"] = f"unavailable: {exc}"
    child_filter = None
    if "seccomp" in layers:
        problem = seccomp_available()
        if problem is not None:
            report["seccomp"] = f"unavailable: {problem}"
        else:
            try:
                child_filter = compiled_program_filter()
                template_filter().load()
                report["seccomp"] = "active (template allows fork; each program adds its own)"
            except Exception as exc:
                child_filter = None
                report["seccomp"] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    for name in LAYERS:
        report.setdefault(name, "disabled")
    return child_filter
