"""Configuration of the decoder family (docs/architecture.md, "Language model").

One frozen dataclass describes every architecture elmjax runs: Llama-style (RMSNorm, RoPE,
grouped-query attention, SwiGLU; SmolLM2, Qwen2.5-Coder, CodeLlama), GPT-2 (LayerNorm, learned
positions, GELU MLP, fused c_attn) and CodeGen (LayerNorm, partial interleaved rotary, parallel
attention + MLP residual; the architecture of the published ELM diff models). The differences are
data, not code paths scattered through the model: `model.py` branches only on `arch`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

ARCHS = ("llama", "gpt2", "codegen")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Hyper-parameters of one decoder. Immutable so it can be a static argument of `jax.jit`.

    Field names follow nanoGPT / Llama conventions; `hf.py` maps each Hugging Face config onto them.
    """

    arch: str = "llama"
    vocab_size: int = 512
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads (multi-head)
    d_mlp: int = 512  # MLP hidden width (Llama: intermediate_size; GPT-2: n_inner or 4 * d)
    head_dim: int | None = None  # None = d_model // n_heads
    max_seq_len: int = 2048  # GPT-2: number of learned positions; others: documentation only
    rope_theta: float = 10000.0
    rotary_dim: int | None = None  # CodeGen: rotary on the first rotary_dim dims of each head
    norm_eps: float = 1e-5
    tie_embeddings: bool = False  # lm_head shares the token embedding matrix
    attn_bias: bool = False  # bias on q, k, v projections (GPT-2, Qwen2)
    attn_out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # bias on the MLP projections (GPT-2, CodeGen)
    lm_head_bias: bool = False  # CodeGen
    activation: str | None = None  # None = the architecture's own ("silu" / "gelu_new")
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} not a multiple of n_kv_heads={self.kv_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} not divisible by n_heads={self.n_heads}")
        if self.rotary_dim is not None and (self.rotary_dim % 2 or self.rotary_dim > self.hd):
            raise ValueError(f"rotary_dim={self.rotary_dim} must be even and <= head_dim")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hd(self) -> int:
        """Per-head width."""
        return self.head_dim or self.d_model // self.n_heads

    @property
    def act(self) -> str:
        return self.activation or ("silu" if self.arch == "llama" else "gelu_new")

    @property
    def rope_dims(self) -> int:
        """How many dimensions of each head are rotated (0 for GPT-2's learned positions)."""
        if self.arch == "gpt2":
            return 0
        return self.rotary_dim or self.hd

    def replace(self, **changes: Any) -> LMConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LMConfig fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LMConfig:
        return cls.from_dict(json.loads(text))
