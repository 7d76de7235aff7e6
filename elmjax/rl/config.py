"""The recipe of a stage-3 run (`elmjax rl`): one frozen dataclass, saved as `config.yaml`.

Every key can be set with `--set key=value`; `--resume` reads the file back and lets only
`RESUMABLE_KEYS` change (`steps`, which is a total, and display keys), so a resumed run is the
run that was started. The checks here run before any model weight is read: a terrain that does
not exist or a number that cannot work is refused with the key's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from elmjax.config_values import ConfigError, build_dataclass, parse_override

#: What the policy is asked before it writes a program when neither the config nor the bundle
#: says (`model_io.model_prompt`: `elmjax finetune` bundles get their own header): elm-tiny's
#: program slot, so elm-tiny-derived models start inside a program.
DEFAULT_PROMPT = "<NME> walker.py\n<BEF> "
#: The paper's two terrain sets (section 7).
PAPER_TERRAIN_SETS = (("left_wall", "right_wall", "tunnel"), ("left_wall", "right_wall", "bumpy"))
#: Keys `--resume` may change: the total number of steps and what is displayed or evaluated.
RESUMABLE_KEYS = ("steps", "progress", "eval_samples", "gifs", "stage1_run")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """PPO over whole programs, conditioned on a terrain (see `elmjax.rl.trainer`)."""

    model: str = ""  # the stage-2 model bundle (directory or built-in elmjax bundle name)
    terrains: tuple[str, ...] = PAPER_TERRAIN_SETS[0]  # conditioning terrains, matrix order
    steps: int = 20  # PPO iterations in total (resume continues to this total)
    seed: int = 0
    samples_per_terrain: int = 8  # programs sampled per conditioning terrain per step
    prompt: str | None = None  # None: the bundle's own prompt, else DEFAULT_PROMPT
    stop: tuple[str, ...] = ("<MSG>", "<DFF>", "<END>")  # strings that end a program early
    max_new_tokens: int = 512  # longest program (tokens); longer ones are cut and usually fail
    temperature: float = 1.0  # the policy is softmax(logits / temperature)
    prefix_len: int = 4  # soft-prompt vectors per terrain
    profile_points: int = 32  # height samples the terrain encoder reads
    encoder_hidden: int = 64
    train_lm: bool = True  # False: train only the terrain embedding and the value head
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    kl_coef: float = 0.05  # per-token KL penalty to the frozen stage-2 model
    clip: float = 0.2  # PPO ratio clip
    value_clip: float = 0.2
    value_coef: float = 0.5
    gamma: float = 1.0  # discount over the tokens of one program
    lam: float = 0.95  # GAE lambda
    epochs: int = 2  # passes over each step's samples
    minibatches: int = 1
    reward_scale: float = 0.1  # reward = scale * distance (units) so values are O(1)
    invalid_penalty: float = -1.0  # reward (before scaling: distance units) of a program that fails
    seconds: float = 10.0  # simulated seconds per walker, as in `evolve`
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    max_rollbacks: int = 5  # consecutive NaN rollbacks before the run stops
    eval_samples: int = 16  # samples per conditioning for eval.json
    stage1_run: str | None = None  # an `elmjax evolve` run dir: best-single-walker baseline
    stage1_top: int = 64  # its best elites that are tried on every terrain
    gifs: bool = True  # pictures of typical walkers per terrain in eval/
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError("steps", f"must be >= 0, got {self.steps}")
        for key in ("samples_per_terrain", "max_new_tokens", "prefix_len", "profile_points",
                    "encoder_hidden", "epochs", "minibatches", "checkpoint_every",
                    "keep_checkpoints", "eval_samples", "stage1_top"):  # fmt: skip
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("temperature", "learning_rate", "seconds", "reward_scale"):
            if not getattr(self, key) > 0:
                raise ConfigError(key, f"must be > 0, got {getattr(self, key)}")
        for key in ("kl_coef", "clip", "value_clip", "value_coef", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise ConfigError(key, f"must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ConfigError("gamma", "gamma and lam must lie in [0, 1]")
        if not self.terrains:
            raise ConfigError("terrains", "name at least one terrain")
        if len(set(self.terrains)) != len(self.terrains):
            raise ConfigError("terrains", f"a terrain is named twice: {list(self.terrains)}")
        rows = len(self.terrains) * self.samples_per_terrain
        if rows % self.minibatches:
            raise ConfigError(
                "minibatches", f"must divide the {rows} programs of a step (terrains x samples)"
            )

    @property
    def batch(self) -> int:
        """Programs per PPO step."""
        return len(self.terrains) * self.samples_per_terrain


def parse_terrains(text: str | Iterable[str]) -> tuple[str, ...]:
    """`LEFT-WALL,right_wall,tunnel` -> canonical names, in the given order (`get_terrain`
    decides what exists; an unknown name is a ConfigError naming the choices)."""
    from elmjax.sodarace.terrain import get_terrain

    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    out = []
    for name in names:
        if not name:
            raise ConfigError("terrains", f"empty terrain name in {text!r}")
        try:
            out.append(get_terrain(name).name)
        except ValueError as err:
            raise ConfigError("terrains", str(err)) from None
    return tuple(out)


def build_config(values: dict[str, Any]) -> RLConfig:
    """An RLConfig from plain values (YAML or `--set`), each coerced to its declared type."""

    def unknown(key: str, known: list[str]) -> ConfigError:
        return ConfigError(key, f"unknown key for `elmjax rl` (known: {', '.join(sorted(known))})")

    if "terrains" in values:  # names through get_terrain, before the type coercion
        terrains = values["terrains"]
        terrains = parse_terrains(terrains if isinstance(terrains, str) else list(terrains))
        values = {**values, "terrains": terrains}
    return build_dataclass(RLConfig, values, unknown)


def apply_overrides(base: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """`--set key=value` items applied over `base` (plain values)."""
    out = dict(base)
    for item in overrides:
        key, value = parse_override(item)
        out[key] = value
    return out


def to_dict(config: RLConfig) -> dict[str, Any]:
    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(config)
    }


def save_config(config: RLConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def load_config(path: Path) -> RLConfig:
    return build_config(yaml.safe_load(path.read_text()) or {})


def resumed_config(saved: RLConfig, overrides: Iterable[str]) -> RLConfig:
    """The saved recipe with only `RESUMABLE_KEYS` changed (anything else is refused)."""
    changes: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        if key not in RESUMABLE_KEYS:
            raise ConfigError(key, f"cannot change on resume (only {', '.join(RESUMABLE_KEYS)})")
        changes[key] = value
    return build_config({**to_dict(saved), **changes})
