"""A language model as one value (config + nnx decoder + tokenizer) and its on-disk format.

The elmjax model directory (what `save_model` writes and `elm-tiny` ships as):

    config.json         {"format": "elmjax-lm", "version": 2, "config": LMConfig fields}
    model.safetensors   parameters under their NNX state paths (`layers.0.attn.q.kernel`, see
                        `model.flat_state`), float32 or bfloat16 as saved
    tokenizer.json      Hugging Face `tokenizers` file

`config.json` may also name the model's `diff_format` (how the diff operator prompts it; absent:
the ELM paper's rendering).

Version 1 (the shipped elm-tiny bundle, and orbax caches written before the NNX decoder) named
the tensors after the old dict layout (`layers.0.attn.q.w`, `embed`); they load through
`model.legacy_to_state_name`, so those files are read as they are, never rewritten.

Safetensors rather than an orbax checkpoint for shipped models: one small file, readable
without JAX, and the same reader serves Hugging Face imports. The cache of converted weights
(`registry.py`) writes the same directory with `weights="orbax"`: parameters as an orbax
checkpoint under `params/` instead of `model.safetensors` (restored in parallel, float32 kept).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from elmjax.lm.config import LMConfig
from elmjax.lm.model import Decoder
from elmjax.lm.state import decoder_from_flat, flat_state
from elmjax.lm.tokenizer import load_tokenizer, save_tokenizer

FORMAT = "elmjax-lm"
FORMAT_VERSION = 2


@dataclasses.dataclass
class LanguageModel:
    """What `load_model` returns and `Sampler` / `train` consume."""

    config: LMConfig
    decoder: Decoder  # a flax.nnx module (float32 parameters as loaded)
    tokenizer: Tokenizer
    name: str = "model"
    source: str = ""  # where it came from (path, hub id), for provenance
    # how a diff model wants its prompts (`elmjax.mutation.diff_format.FORMATS`); None: the ELM
    # paper's rendering, which the published diff models and general code models read
    diff_format: str | None = None

    def __iter__(self) -> Any:  # `config, decoder, tokenizer = load_model(name)`
        return iter((self.config, self.decoder, self.tokenizer))


def is_model_dir(path: str | os.PathLike) -> bool:
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def save_model(
    model: LanguageModel,
    directory: str | os.PathLike,
    dtype: Any = None,
    weights: str = "safetensors",
) -> str:
    """Write `model` in the elmjax model directory format; returns the directory.

    `dtype` (e.g. "bfloat16") casts floating parameters on the way out to halve the file;
    `weights="orbax"` stores them as an orbax checkpoint (the converted-weights cache).
    """
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    if weights == "orbax":
        import orbax.checkpoint as ocp

        flat = {k: jnp.asarray(v) for k, v in flat_state(model.decoder).items()}
        if dtype is not None:
            flat = {k: v.astype(dtype) for k, v in flat.items()}
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(os.path.join(os.path.abspath(directory), "params"), flat, force=True)
        _write_meta(model, directory)
        return directory
    if weights != "safetensors":
        raise ValueError(f"weights must be 'safetensors' or 'orbax', got {weights!r}")
    flat = flat_state(model.decoder)
    if dtype is not None:
        flat = {k: np.asarray(jnp.asarray(v).astype(dtype)) for k, v in flat.items()}
    if any(v.dtype == jnp.bfloat16 for v in flat.values()):
        from safetensors.flax import save_file as save_jax

        save_jax(
            {k: jnp.asarray(v) for k, v in flat.items()},
            os.path.join(directory, "model.safetensors"),
        )
    else:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in flat.items()},
            os.path.join(directory, "model.safetensors"),
        )
    _write_meta(model, directory)
    return directory


def _write_meta(model: LanguageModel, directory: str) -> None:
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": model.name,
        "source": model.source,
        "config": model.config.to_dict(),
    }
    if model.diff_format is not None:
        meta["diff_format"] = model.diff_format
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    save_tokenizer(model.tokenizer, os.path.join(directory, "tokenizer.json"))


def load_saved_model(directory: str | os.PathLike, name: str | None = None) -> LanguageModel:
    """Read a directory written by `save_model`."""
    from safetensors.flax import load_file

    directory = os.fspath(directory)
    with open(os.path.join(directory, "config.json")) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{directory}/config.json is not an elmjax model (format={meta.get('format')!r})"
        )
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{directory}: model format version {meta['version']} is newer than this elmjax"
        )
    config = LMConfig.from_dict(meta["config"])
    if os.path.isdir(os.path.join(directory, "params")):
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ckpt:
            flat = ckpt.restore(os.path.join(os.path.abspath(directory), "params"))
    else:
        flat = load_file(os.path.join(directory, "model.safetensors"))
    legacy = meta.get("version", 1) < 2
    decoder = decoder_from_flat(config, flat, jnp.float32, legacy=legacy)
    tok = load_tokenizer(os.path.join(directory, "tokenizer.json"))
    return LanguageModel(
        config,
        decoder,
        tok,
        name=name or meta.get("name", os.path.basename(directory)),
        source=meta.get("source") or directory,
        diff_format=meta.get("diff_format"),
    )
