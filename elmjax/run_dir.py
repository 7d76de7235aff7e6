"""The run module: what a run directory holds, the checks before a run starts, and how to open it.

```
RUN_DIR/
  config.yaml        the whole recipe; `--resume` reads it back
  provenance.json    elmjax commit, jax/jaxlib/flax versions, XLA flags, devices, model + sha256,
                     store schema version, physics identity (Sodarace: version + SimParams
                     hash; resume refuses another), start time, command line
  programs.sqlite    every candidate ever evaluated (the journal, `elmjax.store`)
  checkpoints/       orbax checkpoints (archive window, generation)
  metrics.jsonl      one JSON object per generation
  tb/                TensorBoard event files
  report/            index.html + assets (`elmjax.viz.report`)
```

Checks that happen before any work: the directory is writable (a probe file is created and
removed, so a read-only mount or a path under a file fails in milliseconds, not after model
loading), and a directory that already holds a run is never overwritten without `force`.

Opening a run (`open_run`, or the pieces one by one): the environment its config names
(`make_environment`), the archive grid (`grid_spec`), the program store (`open_store`), the
checkpoints of the archive window (`open_checkpoints`), and the archives rebuilt from both
(`rebuild_window`). The loop (`elmjax.loop`), resume and the report (`elmjax.viz.report`) all
open runs through here, so a run directory is read one way only. This module sits below the
loop, the stages and `viz`, and imports none of them (docs/architecture.md, "Run directory").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmjax.config import ConfigError, RunConfig, dump_config, load_config
from elmjax.run_window import WindowCheckpoints, open_checkpoints, rebuild_window

CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
STORE = "programs.sqlite"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
REPORT = "report"
#: files whose presence means "a run lives here". `config.yaml` alone is not one: a run that
#: stopped before its first generation (a missing model, say) can simply be started again.
_RUN_MARKERS = (STORE, METRICS, CHECKPOINTS)


class RunDirError(RuntimeError):
    """The run directory cannot be used (exists without --force, unwritable, not a run)."""


def holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in _RUN_MARKERS)


def prepare_new(path: str | Path, config: RunConfig, force: bool = False) -> Path:
    """Create (or, with `force`, clear) a run directory and write `config.yaml`.

    Refuses a directory that holds a run unless `force`; with `force` only the run's own files
    are removed (never unrelated files a user put there).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    if path.is_dir() and holds_run(path):
        if not force:
            raise RunDirError(
                f"{path} already holds a run; continue it with `elmjax evolve --resume {path}`, "
                "or pass --force to overwrite it"
            )
        remove_entries(
            path,
            (*_RUN_MARKERS, PROVENANCE, TENSORBOARD, REPORT, STORE + "-wal", STORE + "-shm"),
        )
    check_writable(path)
    dump_config(config, path / CONFIG)
    return path


def remove_entries(path: Path, names: Iterable[str]) -> None:
    """Delete the named files and directories under `path` (those that exist): how `--force`
    clears what an earlier job left, and nothing else of the directory."""
    for name in names:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def check_writable(path: Path) -> None:
    """Fail fast with a clear message when `path` cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        if err.errno == errno.ENOSPC:
            reason = "no space left on device"
        raise RunDirError(f"cannot write run directory {path}: {reason}") from None


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not (path / CONFIG).exists():
        raise RunDirError(f"{path} is not a run directory (no {CONFIG}); nothing to resume")
    return load_config(path / CONFIG)


# -- provenance -------------------------------------------------------------------------------


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        info["commit"] = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        info["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # installed from a wheel or no git: the version below still identifies the code
    return info


def sha256_of(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (sorted relative paths and contents)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


#: instruction-set extensions that change what XLA:CPU emits (vector width, FMA, bf16 units).
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")


def cpu_identity() -> dict[str, Any]:
    """The CPU model and the ISA extensions XLA compiles for. Runs are bit-for-bit repeatable
    on one machine, not across CPUs: XLA:CPU compiles for the host it runs on, so another CPU
    can get other vector code and another order of float reductions, and a chaotic simulation
    turns that rounding into a different archive."""
    model, flags = platform.processor() or None, set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model name") and model in (None, "", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features"):
                flags |= set(value.split())
    return {"model": model, "isa": [f for f in _ISA_FLAGS if f in flags]}


def provenance(
    config: RunConfig, model: dict[str, Any] | None, store_schema: int | None
) -> dict[str, Any]:
    """Everything needed to say which code, libraries and hardware produced a run."""
    import flax
    import jax
    import jaxlib

    import elmjax

    return {
        "elmjax": {"version": getattr(elmjax, "__version__", None), **_git_commit()},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "cpu": cpu_identity(),
        "model": model,
        "operator": config.mutation.operator,
        "store_schema_version": store_schema,
        "physics": physics_provenance(config),
        "seed": config.seed,
        "command": sys.argv,
        "started_unix": time.time(),
    }


def write_provenance(path: Path, info: dict[str, Any], resumed: bool = False) -> None:
    """Write provenance.json; a resumed run appends its own entry under `resumes`."""
    target = path / PROVENANCE
    if resumed and target.exists():
        old = json.loads(target.read_text())
        first = old.get("cpu")
        if first is not None and info.get("cpu") is not None and first != info["cpu"]:
            # not an error (the run continues correctly), but no longer the run one machine
            # would have made: say so where the user looks and where the record is kept
            info["cpu_differs_from_start"] = True
            print(
                f"warning: {path} started on {first['model']} and resumes on "
                f"{info['cpu']['model']}: the rest of the run is repeatable on this CPU, not "
                "the same as an uninterrupted run on the first",
                file=sys.stderr,
            )
        old.setdefault("resumes", []).append(info)
        info = old
    _atomic_write(target, json.dumps(info, indent=2, default=str))


def _atomic_write(target: Path, text: str) -> None:
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


# -- metrics ----------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl (one line per generation) and TensorBoard scalars, written together.

    On resume the file is truncated to the generations that are committed in the store, so the
    log of a resumed run equals that of an uninterrupted one (a generation cut off after its
    metrics line but before its store commit is recomputed, not logged twice).
    """

    def __init__(self, path: Path, tensorboard: bool = True):
        self.path = path / METRICS
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            with contextlib.suppress(Exception):  # TensorBoard is a convenience, never fatal
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(path / TENSORBOARD), flush_secs=30)

    @staticmethod
    def restore(path: Path, store_path: Path) -> list[dict[str, Any]]:
        """Make metrics.jsonl hold exactly one line per committed generation, in order.

        Lines of generations the store did not commit (cut off after their line was written)
        and torn lines are dropped; committed generations whose line is missing (killed between
        commit and log) get the row the loop stored with the generation. Returns the rows.
        """
        import sqlite3

        committed: dict[int, dict[str, Any]] = {}
        if store_path.exists():
            db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
            try:
                for generation, info in db.execute(
                    "SELECT generation, info FROM generations ORDER BY generation"
                ):
                    committed[int(generation)] = json.loads(info or "{}")
            finally:
                db.close()
        logged = {
            row["generation"]: row
            for row in read_metrics(path)
            if row.get("generation") in committed
        }
        rows = [logged.get(g) or committed[g] for g in sorted(committed)]
        _atomic_write(path / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(row["evaluations"])
            for key, value in row.items():
                if (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    self._tb.add_scalar(key, value, step)
            for stage, seconds in row.get("time", {}).items():
                self._tb.add_scalar(f"time/{stage}", seconds, step)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        if self._tb is not None:
            with contextlib.suppress(Exception):
                self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    target = Path(path) / METRICS
    rows = []
    if target.exists():
        for line in target.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


# -- opening a run: the pieces its config names ---------------------------------------------------


def sim_params(config: RunConfig) -> Any:
    """The simulator's `SimParams` of a Sodarace config (`env.seconds`, then `env.physics`)."""
    from elmjax.sodarace.params import SimParams, with_overrides

    return with_overrides(SimParams(seconds=config.env.seconds), dict(config.env.physics))


def physics_provenance(config: RunConfig) -> dict[str, Any] | None:
    """The run's physics identity (`physics.physics_identity`); None for domains without one."""
    if config.env.name != "sodarace":
        return None
    from elmjax.sodarace.params import physics_identity

    return physics_identity(sim_params(config))


def check_physics(path: Path, config: RunConfig) -> None:
    """Refuse to resume a run made under other physics (or whose physics is not recorded):
    scores from two simulators in one archive compare nothing."""
    current = physics_provenance(config)
    if current is None:
        return
    try:
        recorded = json.loads((path / PROVENANCE).read_text()).get("physics")
    except (OSError, ValueError, AttributeError):
        recorded = None
    now = f"version {current['version']}, parameters {current['params_hash']}"
    if not isinstance(recorded, dict):
        raise RunDirError(
            f"{path} records no physics identity in {PROVENANCE} (made by an elmjax older than "
            f"physics version 2?); this elmjax simulates physics {now}. Its scores would not be "
            "comparable: start a new run instead of resuming"
        )
    if (recorded.get("version"), recorded.get("params_hash")) != (
        current["version"],
        current["params_hash"],
    ):
        old = recorded.get("params") or {}
        changed = sorted(k for k in current["params"] if old.get(k) != current["params"][k])
        raise RunDirError(
            f"{path} was made under physics version {recorded.get('version')}, parameters "
            f"{recorded.get('params_hash')}; this elmjax simulates physics {now}"
            + (f" (differs in: {', '.join(changed)})" if changed and old else "")
            + ". Its scores would not be comparable: resume it with the elmjax that made it, "
            "or start a new run"
        )


def make_environment(config: RunConfig) -> Any:
    """The `Environment` a config names (`env.name`), built the same way for a run and its report."""
    if config.env.name == "sodarace":
        from elmjax.sodarace.env import Sodarace

        return Sodarace(
            terrain=config.env.terrain,
            params=sim_params(config),
            chunk=config.env.chunk or None,
        )
    from elmjax.envs.parity import Parity

    return Parity()


def grid_spec(config: RunConfig, env: Any) -> Any:
    """The archive grid: config shape over the environment's descriptor space (or config bounds)."""
    from elmjax import qd

    space = env.descriptor_space
    if len(config.archive.shape) != space.dim:
        raise ConfigError(
            "archive.shape", f"needs {space.dim} axes for {space.names}, got {config.archive.shape}"
        )
    low = config.archive.low if config.archive.low is not None else space.low
    high = config.archive.high if config.archive.high is not None else space.high
    return qd.GridSpec(shape=config.archive.shape, low=low, high=high)


def program_seed(run_seed: int, program_id: int) -> int:
    """The seed of `random` inside the sandbox for one program: (run seed, program id).

    Part of the run directory's contract: a program of the store re-run with this seed (the
    report's GIFs, a stage re-evaluating it) builds exactly the walker the run scored.
    """
    import numpy as np

    return int(np.random.SeedSequence([run_seed, program_id]).generate_state(1)[0] >> 1)


def store_schema_version() -> int:
    from elmjax.store import SCHEMA_VERSION

    return SCHEMA_VERSION


def open_store(path: Path) -> Any:
    from elmjax.store import ProgramStore

    return ProgramStore(path)


@dataclass
class OpenRun:
    """A run directory opened for reading (and, by the loop, for writing): its config, its
    environment and archive grid, its program store and its checkpoints. Close it (or use it as
    a context manager) to release the store and the checkpointer."""

    path: Path
    config: RunConfig
    env: Any
    spec: Any
    store: Any
    checkpoints: WindowCheckpoints

    def rebuild_window(self) -> tuple[dict[int, Any], int]:
        """See `rebuild_window`: the last `lag + 1` archives and the next generation to run."""
        return rebuild_window(self.store, self.checkpoints, self.spec, self.config.lag)

    def close(self) -> None:
        try:
            self.checkpoints.close()
        finally:
            self.store.close()

    def __enter__(self) -> OpenRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_run(path: str | Path, config: RunConfig | None = None, env: Any = None) -> OpenRun:
    """Open the run in `path` (its own config.yaml unless `config` is given; an environment
    already built from that config may be passed to avoid building a second one)."""
    path = Path(path)
    config = config if config is not None else load_run_config(path)
    env = env if env is not None else make_environment(config)
    spec = grid_spec(config, env)
    store = open_store(path / STORE)
    try:
        checkpoints = open_checkpoints(path / CHECKPOINTS, config.keep_checkpoints)
    except BaseException:
        store.close()
        raise
    return OpenRun(path, config, env, spec, store, checkpoints)


def model_provenance(config: RunConfig) -> dict[str, Any] | None:
    """Model name and sha256 of its weights (None for the GP operator, which uses no model)."""
    if config.mutation.operator == "gp":
        return None
    info: dict[str, Any] = {"name": config.mutation.model}
    try:
        from elmjax.lm.registry import resolve

        kind, path = resolve(config.mutation.model)
        info["kind"] = kind
        info["path"] = str(path)
        info["sha256"] = sha256_of(path) if Path(path).exists() else None
    except Exception as err:  # provenance must never stop a run
        info["sha256"] = None
        info["note"] = f"could not hash the weights: {err}"
    return info
