"""Run configuration: a frozen dataclass tree, loaded from YAML, overridden from the command line.

Every knob of an ELM run lives here so that a run directory's `config.yaml` is the whole recipe:
load it back and the run is the same. Three ways in, one check:

- `RunConfig()`: the defaults (the README's main job).
- `load_config(path, overrides)`: a YAML file (`experiments/configs/*.yaml`), then `--set
  key=value` overrides with dotted keys (`mutation.temperature=0.7`, `archive.shape=[8,8,8]`).
- `RunConfig.from_dict(d)`: what `load_config` uses after merging.

A config is checked completely before anything starts: an unknown key, a value of the wrong type
or an impossible value raises `ConfigError` naming the dotted key, so a typo never costs a run.
Override values are parsed as YAML scalars/lists (`3`, `0.5`, `true`, `[12, 12, 12]`, `null`) and
then coerced to the field's declared type; durations accept `"90"`, `"30s"`, `"10m"`, `"1h"`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from elmjax.config_values import (  # noqa: F401  (re-exported: the config API)
    ConfigError,
    build_dataclass,
    coerce_value,
    parse_duration,
    parse_override,
    to_plain,
)


def config_keys(config: Any = None, prefix: str = "") -> dict[str, Any]:
    """Every dotted config key with its value in `config` (default: the defaults)."""
    config = RunConfig() if config is None else config
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(config_keys(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def unknown_key(key: str, section_keys: Sequence[str] = ()) -> ConfigError:
    """ "unknown key" with the closest known key(s) (difflib) as a suggestion.

    Looks among the whole tree's dotted keys and the keys of the section the typo sits in, and
    catches a known key given without its section (`temperature` -> `mutation.temperature`)."""
    keys = list(config_keys())
    sections = sorted({k.rsplit(".", 1)[0] for k in keys if "." in k})
    known = keys + sections
    guesses = [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
    guesses += difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    leaf = key.rsplit(".", 1)[-1]
    guesses += [prefix + g for g in difflib.get_close_matches(leaf, list(section_keys), n=2)]
    guesses = [g for g in dict.fromkeys(guesses) if g != key and g in known]
    hint = f"; did you mean {guesses[0]!r}?" if guesses else ""
    return ConfigError(key, f"unknown key{hint} (every key: `elmjax evolve --help`)")


def keys_help(width: int = 100) -> str:
    """The config keys and their defaults, for `elmjax evolve --help`."""
    import textwrap

    items = [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in config_keys().items()
    ]
    return textwrap.fill(
        "  ".join(items), width=width, break_long_words=False, break_on_hyphens=False
    )


#: mutation operators (`elmjax.mutation.operators.make_operator`); the LM ones use `mutation.model`.
OPERATORS = ("diff", "prompt", "gp", "crossover")
#: terrain names (`elmjax.sodarace.terrain.TERRAINS`; a test keeps the two equal). Listed here
#: because this module, like the command line's parser, imports no JAX.
TERRAIN_NAMES = ("flat", "hills", "bumpy", "stairs", "left_wall", "right_wall", "tunnel")


def normal_terrain(name: str) -> str:
    """A terrain name as `get_terrain` reads it: case-insensitive, '-' or '_'."""
    return name.lower().replace("-", "_")


def _cache_setting(value: Any) -> str:
    """`compile_cache`: YAML reads a bare `off` / `no` as false (and `on` as true)."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    if not isinstance(value, str):
        raise TypeError(f'expected "auto", "off" or a directory, got {value!r}')
    return value


def _duration_field(default: float | None) -> Any:
    return field(default=default, metadata={"parse": parse_duration})


@dataclass(frozen=True)
class EnvConfig:
    """Which domain and how it scores. Sodarace: terrain and simulated seconds per evaluation."""

    name: str = "sodarace"
    terrain: str = "flat"
    #: simulated seconds per walker; T (10 s; at least 3 muscle periods).
    seconds: float = 10.0
    #: Sodarace: walkers simulated per compiled call (each size bucket is padded to a multiple
    #: of it); 0 = the simulator's default (128 per device). For small batches (32) 16 measured
    #: 2-10x faster end to end on 2 CPU cores than 32 or 128 (benchmarks/e2e.py).
    chunk: int = 16
    #: Sodarace: simulator parameters by `SimParams` field name (`env.physics.substeps: 12`,
    #: `--set env.physics.friction=0.5`), the same keys as `elmjax simulate --physics`.
    #: They are part of the run's physics identity (provenance.json); resume refuses a change.
    physics: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.physics:
            if self.name != "sodarace":
                raise ConfigError("env.physics", f"only Sodarace has physics, not {self.name!r}")
            from elmjax.sodarace.params import SimParams, with_overrides

            try:
                with_overrides(SimParams(seconds=self.seconds), self.physics)
            except ValueError as err:
                raise ConfigError("env.physics", str(err)) from None
        if self.name not in ("sodarace", "parity"):
            raise ConfigError("env.name", f"unknown environment {self.name!r} (sodarace, parity)")
        if self.name == "sodarace" and normal_terrain(self.terrain) not in TERRAIN_NAMES:
            raise ConfigError(
                "env.terrain",
                f"unknown terrain {self.terrain!r} (choose one of: {', '.join(TERRAIN_NAMES)})",
            )
        if not (0 < self.seconds <= 600):
            raise ConfigError("env.seconds", f"must be in (0, 600], got {self.seconds}")
        if not (0 <= self.chunk <= 65_536):
            raise ConfigError("env.chunk", f"must be in [0, 65536] (0 = default), got {self.chunk}")


@dataclass(frozen=True)
class ArchiveConfig:
    """MAP-Elites grid over the environment's descriptor space (the paper's 12 x 12 x 12)."""

    shape: tuple[int, ...] = (12, 12, 12)
    #: descriptor bounds; None takes the environment's documented `descriptor_space`.
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    #: parent selection: "uniform" over filled cells (the paper) or the archive's other options.
    selection: str = "uniform"

    def check(self) -> None:
        if not self.shape or any(s < 1 for s in self.shape):
            raise ConfigError("archive.shape", f"every dimension must be >= 1, got {self.shape}")
        if math.prod(self.shape) > 10_000_000:
            raise ConfigError("archive.shape", f"{math.prod(self.shape)} cells is too many")
        for key, bound in (("archive.low", self.low), ("archive.high", self.high)):
            if bound is not None and len(bound) != len(self.shape):
                raise ConfigError(key, f"needs {len(self.shape)} values (one per grid axis)")
        if (
            self.low is not None
            and self.high is not None
            and any(lo >= hi for lo, hi in zip(self.low, self.high))
        ):
            raise ConfigError("archive.low", "every low bound must be below its high bound")


@dataclass(frozen=True)
class MutationConfig:
    """The mutation operator and, for LM operators, the model and its sampling settings."""

    #: diff (diff model, the paper's ELM), prompt, gp (the genetic-programming baseline), crossover.
    operator: str = "diff"
    #: built-in name (elm-tiny, smollm2-135m), local HF directory, GGUF path or hub id.
    model: str = "elm-tiny"
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 384
    #: children sampled per prompt (they share one prefill); prompts = batch_size / this.
    children_per_prompt: int = 4
    #: the LM's compute dtype: float32 (CPU) or bfloat16 (GPU, TPU: half the memory traffic).
    dtype: str = "float32"
    #: devices on the mesh's `model` axis that the LM's parameters are sharded over
    #: (elmjax.mesh.make_mesh, rules in elmjax.lm.partitioning); 1 = replicated, right for
    #: models that fit one device.
    model_parallel: int = 1
    #: online fine-tuning (elmjax.loop.finetune): every this many generations the diff model is
    #: fine-tuned on the diffs that entered the archive so far, beside the loop; 0 = off.
    finetune_every: int = 0
    #: weights trained after generation k are used from generation k + this, exactly.
    finetune_delay: int = 2
    #: training steps, rows per step (packed rows of finetune_seq_len tokens), peak learning
    #: rate and LoRA rank (0 = full fine-tuning) of each fine-tuning job.
    finetune_steps: int = 20
    finetune_batch_size: int = 4
    finetune_lr: float = 3e-4
    finetune_lora_rank: int = 0
    finetune_seq_len: int = 1024

    def check(self) -> None:
        if self.finetune_every < 0:
            raise ConfigError("mutation.finetune_every", "must be >= 0 (0 = off)")
        if self.finetune_every and self.operator != "diff":
            raise ConfigError(
                "mutation.finetune_every", "online fine-tuning trains the diff operator's model"
            )
        if self.finetune_delay < 1:
            raise ConfigError("mutation.finetune_delay", "must be >= 1")
        if self.finetune_steps < 1 or self.finetune_batch_size < 1:
            raise ConfigError("mutation.finetune_steps", "steps and batch size must be >= 1")
        if not self.finetune_lr > 0:
            raise ConfigError("mutation.finetune_lr", f"must be > 0, got {self.finetune_lr}")
        if self.finetune_lora_rank < 0:
            raise ConfigError("mutation.finetune_lora_rank", "must be >= 0 (0 = full)")
        if not (64 <= self.finetune_seq_len <= 65_536):
            raise ConfigError("mutation.finetune_seq_len", "must be in [64, 65536]")
        if self.operator not in OPERATORS:
            raise ConfigError(
                "mutation.operator",
                f"unknown operator {self.operator!r} (choose one of: {', '.join(OPERATORS)})",
            )
        if not self.model:
            raise ConfigError("mutation.model", "must name a model")
        if not (0.0 <= self.temperature <= 5.0):
            raise ConfigError("mutation.temperature", f"must be in [0, 5], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ConfigError("mutation.top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError("mutation.top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        if not (1 <= self.max_new_tokens <= 8192):
            raise ConfigError("mutation.max_new_tokens", "must be in [1, 8192]")
        if self.children_per_prompt < 1:
            raise ConfigError("mutation.children_per_prompt", "must be >= 1")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(
                "mutation.dtype", f"must be float32, bfloat16 or float16, not {self.dtype!r}"
            )
        if self.model_parallel < 1:
            raise ConfigError("mutation.model_parallel", "must be >= 1")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for running untrusted programs (docs/architecture.md, "Contracts")."""

    #: worker processes; 0 = one per CPU core.
    workers: int = 0
    #: wall-clock seconds per program.
    timeout: float = 5.0
    #: CPU seconds per program.
    cpu_seconds: float = 2.0
    #: address-space limit per worker in MiB.
    memory_mb: int = 512

    def check(self) -> None:
        if self.workers < 0:
            raise ConfigError("sandbox.workers", "must be >= 0 (0 = one per core)")
        if not (0 < self.timeout <= 600):
            raise ConfigError("sandbox.timeout", f"must be in (0, 600], got {self.timeout}")
        if not (0 < self.cpu_seconds <= 600):
            raise ConfigError("sandbox.cpu_seconds", f"must be in (0, 600], got {self.cpu_seconds}")
        if self.memory_mb < 64:
            raise ConfigError("sandbox.memory_mb", f"must be >= 64, got {self.memory_mb}")


@dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run (`jax.distributed`; docs/launch.md).

    Launch-only: given per process on every start and resume, never written to config.yaml
    (they say where a process runs, not what the run computes). All unset: one process, unless
    a TPU pod or a SLURM job with several tasks is detected (JAX's own auto-detection)."""

    #: HOST:PORT of process 0's coordinator (process 0 binds exactly this address), or "auto":
    #: let JAX find the cluster (TPU pod slice, SLURM, ...) and its coordinator.
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    #: seconds without a heartbeat before JAX declares a peer dead and ends the survivors.
    heartbeat_timeout: int = 30
    #: seconds to wait for every process to join at start.
    initialization_timeout: int = 120

    def check(self) -> None:
        if self.coordinator not in (None, "auto") and not re.fullmatch(
            r"\[?[^\s\]]+\]?:\d{1,5}", self.coordinator
        ):
            raise ConfigError(
                "distributed.coordinator", f"must be HOST:PORT, got {self.coordinator!r}"
            )
        if self.num_processes is not None and self.num_processes < 1:
            raise ConfigError("distributed.num_processes", "must be >= 1")
        if self.process_id is not None:
            if self.num_processes is None:
                raise ConfigError("distributed.process_id", "needs distributed.num_processes")
            if not (0 <= self.process_id < self.num_processes):
                raise ConfigError(
                    "distributed.process_id",
                    f"must be in [0, {self.num_processes}), got {self.process_id}",
                )
        given = [self.coordinator, self.num_processes, self.process_id]
        if self.coordinator != "auto" and (self.num_processes or 1) > 1 and None in given:
            raise ConfigError(
                "distributed.coordinator",
                "several processes need distributed.coordinator, distributed.num_processes and "
                "distributed.process_id together (or none of them on a TPU pod or under SLURM)",
            )
        if not (1 <= self.heartbeat_timeout <= 3600):
            raise ConfigError("distributed.heartbeat_timeout", "must be in [1, 3600] seconds")
        if not (1 <= self.initialization_timeout <= 3600):
            raise ConfigError("distributed.initialization_timeout", "must be in [1, 3600] seconds")


#: config keys/sections that say how a process is launched, not what the run computes: never
#: stored in config.yaml, given again on every start and resume.
LAUNCH_SECTIONS = ("distributed", "compile_cache")


@dataclass(frozen=True)
class RunConfig:
    """One ELM run. `budget` counts evaluations (every candidate, failed ones included).

    The defaults are the README's main job (`experiments/configs/default.yaml` says the same,
    and a test keeps them equal): about 10 minutes on 2 CPU cores.
    """

    seed: int = 0
    #: evaluations (candidates) to spend; the run stops at the first generation boundary past it.
    budget: int = 1_000_000
    #: wall-clock limit ("10m"); None = only the budget. The run stops cleanly with a checkpoint.
    time_limit: float | None = _duration_field(600.0)
    #: candidates per generation (one simulated batch).
    batch_size: int = 32
    #: seed programs by name (the environment's seeds) or path to a .py file; the paper uses one.
    seed_programs: tuple[str, ...] = ("square",)
    #: parents of generation k come from the archive as it stood before the last `lag`
    #: generations were inserted (0: classic MAP-Elites; 1: one generation in flight, which is what
    #: lets the overlapped pipeline prepare k+1 while k simulates). Part of the result, not of
    #: the schedule: overlapped and sequential pipelines give the same run for the same lag.
    lag: int = 1
    #: overlapped: a host thread mutates + sandboxes generation k+1 while k simulates and inserts;
    #: sequential: one stage after the other (for measurement and debugging).
    pipeline: str = "overlapped"
    #: save a checkpoint every this many generations (and on SIGINT/SIGTERM and at the end).
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    #: write report/ at the end of the run.
    report: bool = True
    #: elites shown (program text and GIF) in the report.
    report_top: int = 4
    #: live progress bar: auto (when stderr is a terminal), always, never.
    progress: str = "auto"
    #: JAX's persistent compilation cache, so restarts, resumes and pod workers do not compile
    #: the simulator and sampler again: "auto" (a user cache directory: $ELMJAX_CACHE_DIR, else
    #: $JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/elmjax/jax, else ~/.cache/elmjax/jax),
    #: a directory, or "off". Launch-only, like `distributed`: not stored in config.yaml.
    compile_cache: str = field(default="auto", metadata={"parse": _cache_setting})
    env: EnvConfig = field(default_factory=EnvConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    mutation: MutationConfig = field(default_factory=MutationConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def check(self) -> None:
        """Raise ConfigError naming the first impossible value."""
        if not (0 <= self.seed < 2**31):
            raise ConfigError("seed", f"must be in [0, 2^31), got {self.seed}")
        if self.budget < 1:
            raise ConfigError("budget", f"must be >= 1 evaluation, got {self.budget}")
        if not (1 <= self.batch_size <= 65_536):
            raise ConfigError("batch_size", f"must be in [1, 65536], got {self.batch_size}")
        if not self.seed_programs:
            raise ConfigError("seed_programs", "needs at least one seed program")
        if self.lag < 0 or self.lag > 16:
            raise ConfigError("lag", f"must be in [0, 16], got {self.lag}")
        if self.pipeline not in ("overlapped", "sequential"):
            raise ConfigError(
                "pipeline", f"must be overlapped or sequential, not {self.pipeline!r}"
            )
        if self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every", "must be >= 1 generation")
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints", "must be >= 1")
        if self.report_top < 0:
            raise ConfigError("report_top", "must be >= 0")
        if self.progress not in ("auto", "always", "never"):
            raise ConfigError("progress", f"must be auto, always or never, not {self.progress!r}")
        if self.batch_size % self.mutation.children_per_prompt:
            raise ConfigError(
                "mutation.children_per_prompt",
                f"must divide batch_size ({self.batch_size}), got "
                f"{self.mutation.children_per_prompt}",
            )
        if not self.compile_cache:
            raise ConfigError("compile_cache", 'must be "auto", "off" or a directory')
        for section in (self.env, self.archive, self.mutation, self.sandbox, self.distributed):
            section.check()

    # -- conversion -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able dict (tuples become lists)."""
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build and check a config; unknown keys, wrong types and bad values raise ConfigError."""
        config = build_dataclass(cls, data, unknown_key)
        config.check()
        return config

    def replace(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with dotted-key overrides applied (values already parsed), checked."""
        data = self.to_dict()
        for key, value in overrides.items():
            set_dotted(data, key, value)
        return RunConfig.from_dict(data)


# -- loading -------------------------------------------------------------------------------------


#: Sections whose keys are not fixed by the config classes (checked by their owner instead):
#: `env.physics` takes any `SimParams` field.
OPEN_SECTIONS = ("env.physics",)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """data["a"]["b"] = value for key "a.b", creating nothing: unknown sections raise (keys of
    an `OPEN_SECTIONS` section are created)."""
    parts = key.split(".")
    if ".".join(parts[:-1]) in OPEN_SECTIONS:
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        return
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            if part in node:
                raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section")
            raise unknown_key(".".join(parts[: i + 1]), list(node))
        node = child
    if parts[-1] not in node:
        raise unknown_key(key, list(node))
    node[parts[-1]] = value


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> RunConfig:
    """Defaults, then the YAML file at `path` (if any), then `key=value` overrides; checked."""
    data = RunConfig().to_dict()
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as err:
            raise ConfigError(
                str(path), f"cannot read it: {err.strerror or err}", option="--config"
            ) from None
        except yaml.YAMLError as err:
            raise ConfigError(str(path), f"is not valid YAML: {err}", option="--config") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(str(path), "must hold a mapping of keys", option="--config")
        _merge(data, loaded, prefix="")
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        set_dotted(data, key, value)
    return RunConfig.from_dict(data)


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise unknown_key(dotted, list(base))
        if dotted in OPEN_SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(dotted, "must be a mapping (a section)")
            base[key] = {**base[key], **value}
        elif isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(dotted, "must be a mapping (a section)")
            _merge(base[key], value, prefix=dotted + ".")
        else:
            base[key] = value


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write `config.yaml` so that `load_config(path)` gives the same config back, less the
    launch-only sections (`LAUNCH_SECTIONS`), which are given again on every start."""
    data = {k: v for k, v in config.to_dict().items() if k not in LAUNCH_SECTIONS}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
