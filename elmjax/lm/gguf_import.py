"""Import GGUF files (llama.cpp's format): dequantized weights, config and tokenizer.

Read with the `gguf` package; every tensor is dequantized to float32 (`gguf.quants`, which
covers Q4_0/Q4_1/Q5_x/Q8_0/K-quants), so the model computes with exactly the values llama.cpp
would, just unquantized. llama.cpp's converter permutes the rows of Q and K so that its RoPE can
rotate interleaved pairs; we undo that permutation so the Llama forward (rotate halves, as in
Hugging Face) applies unchanged. The tokenizer is rebuilt from the metadata (vocabulary, merges,
token types, pre-tokenizer name) with the `tokenizers` library.

`write_gguf` is the inverse for our own parameters (used by tests, and to hand models to
llama.cpp): it applies the permutation and writes float32 tensors.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from elmjax.lm.bundle import LanguageModel
from elmjax.lm.config import LMConfig
from elmjax.lm.state import decoder_from_nested, flat_state

SUPPORTED_ARCHS = ("llama", "qwen2")

#: GGUF pre-tokenizer names -> split regex (before the byte-level mapping), as llama.cpp does.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


class GGUFError(ValueError):
    """A GGUF file elmjax cannot import (architecture, tokenizer or tensor it does not know)."""


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _permute_back(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's `permute` of Q/K rows ([out, in] weight): interleaved -> halves."""
    out = w.shape[0]
    return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation (halves -> interleaved)."""
    out = w.shape[0]
    return w.reshape(n_heads, 2, out // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_config(reader: Any) -> LMConfig:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"GGUF architecture {arch!r} not supported (supported: {SUPPORTED_ARCHS})")
    d = int(_field(reader, f"{arch}.embedding_length"))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    names = {t.name for t in reader.tensors}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = _field(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
    if vocab is None:
        vocab = next(t for t in reader.tensors if t.name == "token_embd.weight").shape[1]
    head_dim = _field(reader, f"{arch}.attention.key_length")
    return LMConfig(
        arch="llama",
        vocab_size=int(vocab),
        d_model=d,
        n_layers=int(_field(reader, f"{arch}.block_count")),
        n_heads=heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        d_mlp=int(_field(reader, f"{arch}.feed_forward_length")),
        head_dim=int(head_dim) if head_dim and int(head_dim) != d // heads else None,
        max_seq_len=int(_field(reader, f"{arch}.context_length", 2048)),
        rope_theta=_f32_decimal(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=_f32_decimal(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names,
        attn_bias="blk.0.attn_q.bias" in names,
        bos_token_id=_opt_int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=_opt_int(_field(reader, "tokenizer.ggml.eos_token_id")),
    )


def _f32_decimal(x: Any) -> float:
    """GGUF stores floats as float32: 1e-5 reads back as 9.99999974e-06. Take the shortest
    decimal that rounds to the same float32, i.e. the value the converter was given."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def _opt_int(x: Any) -> int | None:
    return None if x is None else int(x)


def _dequantize(tensor: Any) -> np.ndarray:
    from gguf.quants import dequantize

    arr = dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(s) for s in reversed(tensor.shape))  # ggml order is reversed
    return np.asarray(arr, np.float32).reshape(shape)


def read_params(reader: Any, config: LMConfig) -> dict[str, Any]:
    """The `Decoder` state as a nested dict ([in, out] kernels), float32 numpy."""
    arch = _field(reader, "general.architecture")
    raw = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        if name not in raw:
            raise GGUFError(f"tensor {name} missing from GGUF")
        return _dequantize(raw[name])

    def lin(name: str, permute_heads: int | None = None) -> dict[str, np.ndarray]:
        w = get(f"{name}.weight")  # [out, in]
        if permute_heads is not None:
            w = _permute_back(w, permute_heads)
        p = {"kernel": np.ascontiguousarray(w.T)}
        if f"{name}.bias" in raw:
            b = get(f"{name}.bias")
            if permute_heads is not None:
                b = _permute_back(b, permute_heads)
            p["bias"] = b
        return p

    # llama.cpp permutes Q/K for the llama architecture only (qwen2 uses NEOX-style rope as is)
    permute = arch == "llama"
    layers = []
    for i in range(config.n_layers):
        b = f"blk.{i}"
        layers.append(
            {
                "ln1": {"scale": get(f"{b}.attn_norm.weight")},
                "attn": {
                    "q": lin(f"{b}.attn_q", config.n_heads if permute else None),
                    "k": lin(f"{b}.attn_k", config.kv_heads if permute else None),
                    "v": lin(f"{b}.attn_v"),
                    "o": lin(f"{b}.attn_output"),
                },
                "ln2": {"scale": get(f"{b}.ffn_norm.weight")},
                "mlp": {
                    "gate": lin(f"{b}.ffn_gate"),
                    "up": lin(f"{b}.ffn_up"),
                    "down": lin(f"{b}.ffn_down"),
                },
            }
        )
    params: dict[str, Any] = {
        "embed": {"embedding": get("token_embd.weight")},
        "layers": layers,
        "final_norm": {"scale": get("output_norm.weight")},
    }
    if not config.tie_embeddings:
        params["lm_head"] = lin("output")
    return params


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what byte-level vocabularies use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_tokenizer(reader: Any) -> Tokenizer:
    """A `tokenizers.Tokenizer` from the GGUF vocabulary (byte-level BPE vocabularies)."""
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(
            f"GGUF tokenizer model {kind!r} not supported (byte-level BPE 'gpt2' only); "
            "pass a Hugging Face tokenizer.json instead"
        )
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    alphabet = set(_bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre == "smollm":  # digits one by one, then GPT-2's split (SmolLM's tokenizer.json)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types)
        if ty == 3 and set(t) <= alphabet | set("<>|_") or (ty == 3 and t.startswith("<"))
    ]
    tok.add_special_tokens(special)
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    if _field(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None:
        b = tokens[int(bos)]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, int(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def load_gguf(path: str | os.PathLike, name: str | None = None) -> LanguageModel:
    """Config, dequantized float32 parameters and tokenizer of a GGUF file."""
    import gguf

    path = os.fspath(path)
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise GGUFError(f"cannot read GGUF {path}: {e}") from e
    config = read_config(reader)
    decoder = decoder_from_nested(config, read_params(reader, config))
    tok = read_tokenizer(reader)
    return LanguageModel(
        config, decoder, tok, name=name or os.path.basename(path), source=os.path.abspath(path)
    )


def write_gguf(model: LanguageModel, path: str | os.PathLike) -> None:
    """Write a Llama-architecture model as float32 GGUF (Q/K permuted as llama.cpp expects)."""
    import gguf

    cfg = model.config
    if cfg.arch != "llama":
        raise GGUFError("write_gguf supports the llama architecture only")
    flat = flat_state(model.decoder)
    w = gguf.GGUFWriter(os.fspath(path), "llama")
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_mlp)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    _write_tokenizer(w, model.tokenizer, cfg)

    def add(name: str, x: Any) -> None:
        w.add_tensor(name, np.ascontiguousarray(np.asarray(x, np.float32)))

    def add_lin(name: str, path: str, permute_heads: int | None = None) -> None:
        wt = np.asarray(flat[f"{path}.kernel"], np.float32).T  # [out, in]
        if permute_heads is not None:
            wt = _permute(wt, permute_heads)
        add(f"{name}.weight", wt)
        if f"{path}.bias" in flat:
            b = np.asarray(flat[f"{path}.bias"], np.float32)
            add(f"{name}.bias", _permute(b, permute_heads) if permute_heads else b)

    add("token_embd.weight", flat["embed.embedding"])
    for i in range(cfg.n_layers):
        b, lp = f"blk.{i}", f"layers.{i}"
        add(f"{b}.attn_norm.weight", flat[f"{lp}.ln1.scale"])
        add_lin(f"{b}.attn_q", f"{lp}.attn.q", cfg.n_heads)
        add_lin(f"{b}.attn_k", f"{lp}.attn.k", cfg.kv_heads)
        add_lin(f"{b}.attn_v", f"{lp}.attn.v")
        add_lin(f"{b}.attn_output", f"{lp}.attn.o")
        add(f"{b}.ffn_norm.weight", flat[f"{lp}.ln2.scale"])
        add_lin(f"{b}.ffn_gate", f"{lp}.mlp.gate")
        add_lin(f"{b}.ffn_up", f"{lp}.mlp.up")
        add_lin(f"{b}.ffn_down", f"{lp}.mlp.down")
    add("output_norm.weight", flat["final_norm.scale"])
    if not cfg.tie_embeddings:
        add_lin("output", "lm_head")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_tokenizer(w: Any, tok: Tokenizer, cfg: LMConfig) -> None:
    """Byte-level BPE vocabulary and merges (tokenizer.json of a BPE model) into GGUF metadata."""
    import json

    spec = json.loads(tok.to_str())
    if spec["model"]["type"] != "BPE":
        raise GGUFError("only BPE tokenizers can be written to GGUF")
    vocab = spec["model"]["vocab"]
    tokens = [""] * max(cfg.vocab_size, len(vocab))
    types = [1] * len(tokens)
    for t, i in vocab.items():
        tokens[i] = t
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = 3 if added.get("special") else 4
    for i, t in enumerate(tokens):
        if not t:
            tokens[i], types[i] = f"[PAD{i}]", 5
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if cfg.bos_token_id is not None:
        w.add_bos_token_id(cfg.bos_token_id)
    if cfg.eos_token_id is not None:
        w.add_eos_token_id(cfg.eos_token_id)
    w.add_add_bos_token(False)
