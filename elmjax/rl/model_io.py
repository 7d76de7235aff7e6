"""Loading the stage-2 model for RL, and the checks that run before any training.

Refusals come here, before a weight is read or a step is taken: a `--model` that is not an
elmjax model bundle, and a config whose tensors would not fit in the memory of the device the
run would use. `RLSetupError` carries a message meant for the user.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from elmjax.rl.config import DEFAULT_PROMPT, RLConfig


class RLSetupError(RuntimeError):
    """A run that cannot start: the message says why and what to give instead."""


def resolve_bundle(model: str) -> Path:
    """The model bundle directory named by `model` (a directory or a built-in elmjax bundle)."""
    from elmjax.lm.bundle import is_model_dir

    if not model:
        raise RLSetupError("no model: give --model MODEL_DIR (a stage-2 bundle, `elmjax finetune`)")
    path = Path(model).expanduser()
    if path.is_dir():
        if not is_model_dir(path):
            raise RLSetupError(
                f"{path} is not an elmjax model bundle (it needs config.json with "
                "format 'elmjax-lm', model weights and tokenizer.json; `elmjax finetune --out` "
                "writes one)"
            )
        return path
    from elmjax.lm.registry import ModelNotFound, resolve

    try:
        kind, loc = resolve(model)
    except ModelNotFound as err:
        raise RLSetupError(f"--model {model}: {err}") from None
    if kind != "elmjax":
        raise RLSetupError(
            f"--model {model} is a {kind} model, not an elmjax model bundle; convert it first "
            "(`elmjax models convert`) or give a stage-2 MODEL_DIR"
        )
    return Path(loc)


def bundle_meta(path: Path) -> dict[str, Any]:
    """config.json of a bundle (read without loading weights)."""
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise RLSetupError(f"{path}/config.json cannot be read: {err}") from None


def model_prompt(path: Path, config: RLConfig) -> str:
    """The prompt the policy continues: the config's; for a stage-2 bundle of `elmjax
    finetune` (it has finetune.json) the unconditioned header it was trained on
    (`finetune.prompts.program_prompt`); else a `prompt` string in the bundle's training.json
    or config.json; else `DEFAULT_PROMPT`."""
    if config.prompt is not None:
        return config.prompt
    if (path / "finetune.json").exists():
        from elmjax.finetune.prompts import program_prompt

        return program_prompt()
    for name in ("training.json", "config.json"):
        try:
            value = json.loads((path / name).read_text()).get("prompt")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str):
            return value
    return DEFAULT_PROMPT


def weights_file(path: Path) -> Path | None:
    for name in ("model.safetensors", "params"):
        if (path / name).exists():
            return path / name
    return None


def estimate_bytes(config: RLConfig, lm: dict[str, Any], prompt_tokens: int) -> dict[str, int]:
    """Bytes a run needs at its peak, by part (float32 throughout).

    Parameters: the policy's decoder, its frozen reference, gradients and Adam's two moments
    (5 copies when the LM trains, 2 when only the embedding does). Activations of the update:
    per layer and token the residual stream and the attention/MLP intermediates (~(6 d_model +
    2 d_mlp) floats kept for the backward pass) plus the attention scores (heads x sequence);
    the logits and their log-softmax (2 x vocab per token, twice for the backward pass). The
    sampling KV cache is smaller than these and not counted separately.
    """
    d, layers = int(lm["d_model"]), int(lm["n_layers"])
    vocab, heads = int(lm["vocab_size"]), int(lm["n_heads"])
    d_mlp = int(lm.get("d_mlp") or 4 * d)
    per_layer = 4 * d * d + 3 * d * d_mlp
    n_params = layers * per_layer + vocab * d * (1 if lm.get("tie_embeddings") else 2)
    copies = 5 if config.train_lm else 2
    seq = config.prefix_len + prompt_tokens + config.max_new_tokens
    rows = max(config.batch // config.minibatches, config.eval_samples * len(config.terrains))
    acts = rows * seq * layers * (6 * d + 2 * d_mlp + heads * seq)
    logits = rows * config.max_new_tokens * vocab * 4
    return {"parameters": 4 * copies * n_params, "activations": 4 * acts, "logits": 4 * logits}


def available_bytes() -> tuple[int, str]:
    """(bytes, what) the run may use: the accelerator's memory limit when JAX has one, else the
    host's available memory (MemAvailable)."""
    import jax

    device = jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} memory"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available host memory"
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host memory"


def check_memory(config: RLConfig, lm: dict[str, Any], prompt_tokens: int) -> dict[str, int]:
    """Refuse a config whose estimated peak (`estimate_bytes`) exceeds what the machine has."""
    need = estimate_bytes(config, lm, prompt_tokens)
    total = sum(need.values())
    have, what = available_bytes()
    if total > have:
        parts = ", ".join(f"{k} {v / 2**30:.1f} GiB" for k, v in need.items())
        raise RLSetupError(
            f"this config needs about {total / 2**30:.1f} GiB ({parts}) but the machine has "
            f"{have / 2**30:.1f} GiB of {what}; lower samples_per_terrain, eval_samples, "
            "max_new_tokens or raise minibatches"
        )
    return need
