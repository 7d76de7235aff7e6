"""Import Hugging Face model directories (config.json + safetensors) for Llama, GPT-2, CodeGen.

Each architecture's tensor names are mapped onto the `Decoder`'s state paths; linear weights are
transposed from PyTorch's [out, in] to our [in, out] (GPT-2's Conv1D is already [in, out]).
CodeGen's fused `qkv_proj` is the subtle one: its rows are grouped for mp_num = 4 model-parallel
shards, each shard holding [q | v | k] (in that order) for its d/4 slice, so the rows are
reshaped to [4, 3, d/4, d] and regathered per projection (see transformers' modeling_codegen).
Sharded checkpoints (`model.safetensors.index.json`) are read shard by shard.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from elmjax.lm.bundle import LanguageModel
from elmjax.lm.config import LMConfig
from elmjax.lm.state import decoder_from_nested

LLAMA_TYPES = ("llama", "mistral", "qwen2")
CODEGEN_MP_NUM = 4


class HFImportError(ValueError):
    """A Hugging Face directory elmjax cannot import."""


def is_hf_dir(path: str | os.PathLike) -> bool:
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg) as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


def config_from_hf(hf: dict[str, Any]) -> LMConfig:
    """Map a transformers config.json onto `LMConfig` (refusing what we would compute wrongly)."""
    mt = hf.get("model_type")
    if mt in LLAMA_TYPES:
        scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
        if isinstance(scaling, dict):
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind not in (None, "default"):
                raise HFImportError(f"rope scaling {kind!r} not supported")
            theta = scaling.get("rope_theta", hf.get("rope_theta", 10000.0))
        else:
            theta = hf.get("rope_theta", 10000.0)
        window = hf.get("sliding_window") if mt == "mistral" else None
        if window and window < hf.get("max_position_embeddings", 0):
            raise HFImportError("sliding-window attention not supported")
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        hd = hf.get("head_dim")
        return LMConfig(
            arch="llama",
            vocab_size=hf["vocab_size"],
            d_model=d,
            n_layers=hf["num_hidden_layers"],
            n_heads=h,
            n_kv_heads=hf.get("num_key_value_heads") or h,
            d_mlp=hf["intermediate_size"],
            head_dim=hd if hd and hd != d // h else None,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            rope_theta=float(theta),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attn_bias=bool(hf.get("attention_bias", mt == "qwen2")),
            attn_out_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            activation=hf.get("hidden_act", "silu"),
            bos_token_id=_int(hf.get("bos_token_id")),
            eos_token_id=_int(hf.get("eos_token_id")),
        )
    if mt == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise HFImportError("GPT-2 attention variants (inverse layer idx scaling) unsupported")
        if hf.get("scale_attn_weights") is False:
            raise HFImportError("GPT-2 without attention scaling unsupported")
        d = hf["n_embd"]
        return LMConfig(
            arch="gpt2",
            vocab_size=hf["vocab_size"],
            d_model=d,
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            d_mlp=hf.get("n_inner") or 4 * d,
            max_seq_len=hf.get("n_positions", 1024),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            attn_bias=True,
            attn_out_bias=True,
            mlp_bias=True,
            activation=hf.get("activation_function", "gelu_new"),
            bos_token_id=_int(hf.get("bos_token_id")),
            eos_token_id=_int(hf.get("eos_token_id")),
        )
    if mt == "codegen":
        d = hf["n_embd"]
        if not hf.get("rotary_dim"):
            raise HFImportError("CodeGen without rotary_dim is not supported")
        return LMConfig(
            arch="codegen",
            vocab_size=hf["vocab_size"],
            d_model=d,
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            d_mlp=hf.get("n_inner") or 4 * d,
            max_seq_len=hf.get("n_positions", 2048),
            rotary_dim=hf["rotary_dim"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            mlp_bias=True,
            lm_head_bias=True,
            activation=hf.get("activation_function", "gelu_new"),
            bos_token_id=_int(hf.get("bos_token_id")),
            eos_token_id=_int(hf.get("eos_token_id")),
        )
    raise HFImportError(f"model_type {mt!r} not supported (llama/mistral/qwen2, gpt2, codegen)")


def _int(x: Any) -> int | None:
    if isinstance(x, list):
        x = x[0] if x else None
    return None if x is None else int(x)


def read_safetensors(directory: str) -> dict[str, np.ndarray]:
    """All tensors of a directory as float32 numpy (single file or sharded index)."""
    from safetensors import safe_open

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(directory, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise HFImportError(
            f"{directory}: no model.safetensors or model.safetensors.index.json "
            "(PyTorch .bin checkpoints are not read; convert them to safetensors)"
        )
    out: dict[str, np.ndarray] = {}
    for name in files:
        with safe_open(os.path.join(directory, name), framework="flax") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                out[key] = np.asarray(f.get_tensor(key).astype("float32"))
    return out


def _strip(tensors: dict[str, np.ndarray], prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tensors.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p) :]
                break
        out[k] = v
    return out


def params_from_hf(config: LMConfig, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """The `Decoder` state as a nested dict (float32 numpy) from Hugging Face tensor names."""
    t = dict(tensors)

    def take(name: str) -> np.ndarray:
        if name not in t:
            raise HFImportError(f"tensor {name} missing from checkpoint")
        return t.pop(name)

    def lin(name: str, bias: bool, transpose: bool = True) -> dict[str, np.ndarray]:
        w = take(f"{name}.weight")
        p = {"kernel": np.ascontiguousarray(w.T if transpose else w)}
        if bias:
            p["bias"] = take(f"{name}.bias")
        return p

    def ln(name: str) -> dict[str, np.ndarray]:
        p = {"scale": take(f"{name}.weight")}
        if config.arch != "llama":
            p["bias"] = take(f"{name}.bias")
        return p

    layers = []
    if config.arch == "llama":
        t = _strip(t, ("model.",))
        for i in range(config.n_layers):
            b = f"layers.{i}"
            layers.append(
                {
                    "ln1": ln(f"{b}.input_layernorm"),
                    "attn": {
                        "q": lin(f"{b}.self_attn.q_proj", config.attn_bias),
                        "k": lin(f"{b}.self_attn.k_proj", config.attn_bias),
                        "v": lin(f"{b}.self_attn.v_proj", config.attn_bias),
                        "o": lin(f"{b}.self_attn.o_proj", config.attn_out_bias),
                    },
                    "ln2": ln(f"{b}.post_attention_layernorm"),
                    "mlp": {
                        "gate": lin(f"{b}.mlp.gate_proj", config.mlp_bias),
                        "up": lin(f"{b}.mlp.up_proj", config.mlp_bias),
                        "down": lin(f"{b}.mlp.down_proj", config.mlp_bias),
                    },
                }
            )
        params = {"embed": {"embedding": take("embed_tokens.weight")}, "final_norm": ln("norm")}
    elif config.arch == "gpt2":
        t = _strip(t, ("transformer.",))
        d = config.d_model
        for i in range(config.n_layers):
            b = f"h.{i}"
            w = take(f"{b}.attn.c_attn.weight")  # Conv1D: [in, 3d]
            bias = take(f"{b}.attn.c_attn.bias")
            layers.append(
                {
                    "ln1": ln(f"{b}.ln_1"),
                    "attn": {
                        "q": {"kernel": w[:, :d].copy(), "bias": bias[:d]},
                        "k": {"kernel": w[:, d : 2 * d].copy(), "bias": bias[d : 2 * d]},
                        "v": {"kernel": w[:, 2 * d :].copy(), "bias": bias[2 * d :]},
                        "o": lin(f"{b}.attn.c_proj", True, transpose=False),
                    },
                    "ln2": ln(f"{b}.ln_2"),
                    "mlp": {
                        "fc_in": lin(f"{b}.mlp.c_fc", True, transpose=False),
                        "fc_out": lin(f"{b}.mlp.c_proj", True, transpose=False),
                    },
                }
            )
            for k in (f"{b}.attn.bias", f"{b}.attn.masked_bias"):
                t.pop(k, None)
        params = {
            "embed": {"embedding": take("wte.weight")},
            "pos_embed": {"embedding": take("wpe.weight")},
            "final_norm": ln("ln_f"),
        }
    else:  # codegen
        t = _strip(t, ("transformer.",))
        d = config.d_model
        local = d // CODEGEN_MP_NUM
        for i in range(config.n_layers):
            b = f"h.{i}"
            qkv = take(f"{b}.attn.qkv_proj.weight").reshape(CODEGEN_MP_NUM, 3, local, d)
            q, v, k = (qkv[:, j].reshape(d, d) for j in range(3))  # shard order: q, v, k
            layers.append(
                {
                    "ln1": ln(f"{b}.ln_1"),
                    "attn": {
                        "q": {"kernel": np.ascontiguousarray(q.T)},
                        "k": {"kernel": np.ascontiguousarray(k.T)},
                        "v": {"kernel": np.ascontiguousarray(v.T)},
                        "o": lin(f"{b}.attn.out_proj", False),
                    },
                    "mlp": {
                        "fc_in": lin(f"{b}.mlp.fc_in", True),
                        "fc_out": lin(f"{b}.mlp.fc_out", True),
                    },
                }
            )
            for key in (f"{b}.attn.causal_mask", f"{b}.attn.masked_bias"):
                t.pop(key, None)
        params = {"embed": {"embedding": take("wte.weight")}, "final_norm": ln("ln_f")}
    params["layers"] = layers
    if config.tie_embeddings:
        t.pop("lm_head.weight", None)
    else:
        params["lm_head"] = lin("lm_head", config.lm_head_bias)
    leftover = [k for k in t if not k.endswith(("rotary_emb.inv_freq", "embed_positions"))]
    if leftover:
        raise HFImportError(f"unexpected tensors in checkpoint: {sorted(leftover)[:8]}")
    return params


def load_hf_tokenizer(directory: str) -> Tokenizer:
    """tokenizer.json, or a byte-level BPE rebuilt from GPT-2 style vocab.json + merges.txt."""
    tj = os.path.join(directory, "tokenizer.json")
    if os.path.exists(tj):
        return Tokenizer.from_file(tj)
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    if os.path.exists(vocab) and os.path.exists(merges):
        from tokenizers import decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    raise HFImportError(f"{directory}: no tokenizer.json (or vocab.json + merges.txt)")


def load_hf_dir(directory: str | os.PathLike, name: str | None = None) -> LanguageModel:
    """A Hugging Face model directory -> LanguageModel with float32 parameters."""
    directory = os.fspath(directory)
    with open(os.path.join(directory, "config.json")) as f:
        hf = json.load(f)
    config = config_from_hf(hf)
    decoder = decoder_from_nested(config, params_from_hf(config, read_safetensors(directory)))
    tok = load_hf_tokenizer(directory)
    return LanguageModel(
        config, decoder, tok, name=name or os.path.basename(directory.rstrip("/")), source=directory
    )
