"""What one stage-2 job does, as one frozen dataclass (`elmjax finetune --set key=value`).

Defaults are the clarified default arm: an elm-tiny-sized decoder trained from scratch on the
programs within 50% of their niche's best fitness (the paper's looser cut-off), unconditioned,
evaluated on 1,024 samples. `base=smollm2-135m lora_rank=8` is the optional, slower LoRA arm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from elmjax.config_values import ConfigError, build_dataclass, parse_override


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    # -- data
    #: keep programs with fitness >= best - within * |best| of their niche, the best taken over
    #: every run given. The paper's datasets kept programs scoring at least 50% (280K programs)
    #: and 80% (95K) of their niche's best: within=0.5 and within=0.2.
    within: float = 0.5
    #: share of the de-duplicated programs held out (never trained on; held-out loss).
    holdout: float = 0.05
    #: condition the prompt on the niche (height, width, mass of its cell centre).
    conditioned: bool = False
    #: seed lineages kept out of the data: wheel, galloper, runner are the OOD test and
    #: cppn_mutable is the LM operator benchmark's held-out lineage.
    exclude_lineages: tuple[str, ...] = ("wheel", "galloper", "runner", "cppn_mutable")
    #: longest example in tokens; longer programs are dropped (counted), never truncated.
    seq_len: int = 768
    # -- model
    #: "scratch" (elm-tiny's architecture and tokenizer, random weights) or any model name
    #: `elmjax models` knows (smollm2-135m, a directory) to fine-tune.
    base: str = "scratch"
    #: the model whose architecture and tokenizer a scratch model copies.
    architecture_of: str = "elm-tiny"
    lora_rank: int = 0  # > 0: LoRA adapters of this rank (merged into the saved weights)
    # -- training (elmjax.lm.train.TrainConfig)
    steps: int = 600
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.05
    seed: int = 0
    checkpoint_every: int = 50
    time_limit: float | None = None  # seconds of training in this call; rerun to continue
    # -- evaluation
    samples: int = 1024
    ood_samples: int = 64  # completions per hand-designed walker (best of N)
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 448
    sample_batch: int = 64  # prompts x samples decoded per sampler call

    def check(self) -> None:
        if not 0.0 <= self.within < 1.0:
            raise ConfigError("within", f"must be in [0, 1), got {self.within}")
        if not 0.0 < self.holdout < 0.5:
            raise ConfigError("holdout", f"must be in (0, 0.5), got {self.holdout}")
        for key in ("seq_len", "steps", "batch_size", "samples", "ood_samples", "sample_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(key, "must be >= 1")
        if self.lora_rank < 0:
            raise ConfigError("lora_rank", "must be >= 0")
        if self.lora_rank and self.base == "scratch":
            raise ConfigError("lora_rank", "LoRA adapts a trained base: set base=MODEL too")
        if self.lr <= 0:
            raise ConfigError("lr", "must be > 0")
        if not 0 < self.top_p <= 1 or self.temperature < 0:
            raise ConfigError("temperature", "need temperature >= 0 and 0 < top_p <= 1")

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        def unknown(key: str, known: list[str]) -> ConfigError:
            return ConfigError(key, f"unknown finetune key; known: {', '.join(sorted(known))}")

        config = build_dataclass(cls, data, unknown)
        config.check()
        return config

    def replace(self, overrides: Mapping[str, Any]) -> FinetuneConfig:
        return FinetuneConfig.from_dict({**self.to_dict(), **overrides})


def config_from_sets(sets: Iterable[str], **fields: Any) -> FinetuneConfig:
    """Defaults, then `fields` given by options (None = not given), then `--set key=value`."""
    overrides = {k: v for k, v in fields.items() if v is not None}
    overrides.update(parse_override(s) for s in sets)
    return FinetuneConfig().replace(overrides)
