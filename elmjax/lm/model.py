"""The decoder as `flax.nnx` modules (docs/architecture.md, "Language model").

One `Decoder` covers the three families users bring: Llama-style (RMSNorm, RoPE, GQA, SwiGLU),
GPT-2 (LayerNorm, learned positions, GELU MLP) and CodeGen (LayerNorm, partial interleaved
rotary, parallel attention + MLP residual). It is built from Flax layers (`nnx.Embed`,
`nnx.Linear`, `nnx.RMSNorm` / `nnx.LayerNorm`); attention is written here because it needs GQA,
two RoPE conventions and an external KV cache, which `nnx.MultiHeadAttention` does not offer.

Every parameter carries logical partitioning metadata (`out_sharding`, e.g. ("embed", "heads"));
`elmjax.lm.partitioning` maps the logical names onto the `data` / `model` mesh axes. Samplers and
trainers `nnx.split` a decoder into (graph, state) once and jit over the state.

The state tree (and the safetensors key scheme of `state.flat_state`), kernels stored [in, out]:

    embed.embedding [V, D]; pos_embed.embedding [P, D] (GPT-2 only)
    layers.{i}: ln1.{scale[, bias]}; attn.{q, k, v, o}.{kernel[, bias]}; ln2 (not CodeGen)
        mlp: Llama {gate, up, down}; GPT-2 / CodeGen {fc_in, fc_out}
    final_norm.{scale[, bias]}; lm_head.{kernel[, bias]} (absent when embeddings are tied)

Unrolled layers (an `nnx.List` of blocks) are the default: decode on CPU measured ~1.4-2.5x
faster than `lax.scan` over stacked layers (benchmarks/RESULTS.md); `state.stack_layers` gives
the scanned form (one block whose parameters have a leading layer axis), which compiles in
constant time for deep models. `state.py` also holds dtypes and the flat names of files.

Precision policy: matmul inputs are cast to the weight dtype and accumulate in float32
(`preferred_element_type`), so bfloat16 weights halve the bytes a memory-bound decode step reads
while the residual stream, norms and softmax stay float32.

Padding convention: rows are LEFT-padded so every row writes the same cache slot each step
(one `dynamic_update_slice`, no scatter); `KVCache.start[b]` is the first real slot of row b and
positions are passed explicitly, so RoPE / learned positions ignore the padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from elmjax.lm.config import LMConfig

_NEG = -1e30  # finite "minus infinity": fully masked rows give uniform weights, never NaN


@struct.dataclass
class KVCache:
    """Keys and values of every layer, written in place as decoding proceeds.

    k, v: tuple over layers of [B, kv_heads, S, head_dim] (unrolled decoder) or one array
    [L, B, kv_heads, S, head_dim] (scanned decoder): heads before slots, so attention reads a
    window of the cache as it lies, without transposing it every step. `index` is the next slot
    to write (shared by all rows); slots < start[b] are padding of row b and never attended to.
    """

    k: Any
    v: Any
    index: jax.Array
    start: jax.Array


def init_cache(
    config: LMConfig,
    batch: int,
    length: int,
    dtype: Any = jnp.float32,
    start: jax.Array | None = None,
    scanned: bool = False,
) -> KVCache:
    shape = (batch, config.kv_heads, length, config.hd)
    if scanned:
        k = jnp.zeros((config.n_layers, *shape), dtype)
        v = jnp.zeros((config.n_layers, *shape), dtype)
    else:
        k = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
    if start is None:
        start = jnp.zeros((batch,), jnp.int32)
    return KVCache(k=k, v=v, index=jnp.zeros((), jnp.int32), start=start.astype(jnp.int32))


# ----------------------------------------------------------------------------- Flax layers


def _cast_to_weight(arrays: tuple, dtype: Any = None) -> tuple:
    """`promote_dtype` of our Linear layers: inputs take the kernel's dtype (see module doc).

    Flax's default promotes to the wider type, which would upcast bfloat16 kernels to float32
    on every decode step (measured slower than float32 weights).
    """
    x, kernel, bias = arrays
    return x.astype(kernel.dtype), kernel, bias


def _partitioned(init: Callable, names: tuple[str | None, ...]) -> Callable:
    # eager_sharding=False: the metadata is recorded, and a mesh is applied only when asked
    return nnx.with_partitioning(init, names, eager_sharding=False)


def dense(
    n_in: int,
    n_out: int,
    bias: bool,
    std: float,
    names: tuple[str | None, str | None],
    dtype: Any,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """An `nnx.Linear` [in, out] with logical axis names and float32 accumulation."""
    return nnx.Linear(
        n_in,
        n_out,
        use_bias=bias,
        param_dtype=dtype,
        kernel_init=_partitioned(nnx.initializers.normal(std), names),
        bias_init=_partitioned(nnx.initializers.zeros_init(), (names[1],)),
        promote_dtype=_cast_to_weight,
        preferred_element_type=jnp.float32,
        rngs=rngs,
    )


def _norm(config: LMConfig, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
    """RMSNorm (Llama) or LayerNorm (GPT-2, CodeGen); statistics and output in float32."""
    scale = _partitioned(nnx.initializers.ones_init(), ("embed",))
    if config.arch == "llama":
        return nnx.RMSNorm(
            config.d_model,
            epsilon=config.norm_eps,
            dtype=jnp.float32,
            param_dtype=dtype,
            scale_init=scale,
            rngs=rngs,
        )
    return nnx.LayerNorm(
        config.d_model,
        epsilon=config.norm_eps,
        dtype=jnp.float32,
        param_dtype=dtype,
        use_fast_variance=False,
        scale_init=scale,
        bias_init=_partitioned(nnx.initializers.zeros_init(), ("embed",)),
        rngs=rngs,
    )


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unsupported activation {name!r}")


def rope_tables(positions: jax.Array, config: LMConfig) -> tuple[jax.Array, jax.Array] | None:
    """(sin, cos) [B, T, 1, rope_dims / 2] of integer positions [B, T], or None without RoPE.

    Computed once per forward pass and shared by every layer (each layer rotates its own q and k
    with the same tables), so the transcendentals are not repeated per layer.
    """
    rd = config.rope_dims
    if rd == 0:
        return None
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, rd, 2, dtype=np.float32) / rd))
    angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    return jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]


def _rope(x: jax.Array, tables: tuple[jax.Array, jax.Array] | None, config: LMConfig) -> jax.Array:
    """Rotary embedding of [B, T, heads, hd] with the `rope_tables` of its positions.

    Llama rotates the two halves of the head (HF `rotate_half`); CodeGen rotates interleaved pairs
    (2i, 2i+1) of only the first `rotary_dim` dims (GPT-J `rotate_every_two`).
    """
    if tables is None:
        return x
    sin, cos = tables
    rd = config.rope_dims
    xr = x[..., :rd].astype(jnp.float32)
    if config.arch == "codegen":
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(xr.shape)
    else:
        x1, x2 = xr[..., : rd // 2], xr[..., rd // 2 :]
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    out = out.astype(x.dtype)
    if rd == x.shape[-1]:
        return out
    return jnp.concatenate([out, x[..., rd:]], axis=-1)


def attention_mask(
    t: int, width: int | None = None, index: jax.Array | None = None, start: jax.Array | None = None
) -> jax.Array:
    """[B or 1, T, S] boolean mask of which keys each of T queries sees, built once per forward
    pass and shared by every layer.

    No cache (`width` None): causal over the T tokens. With a cache, query i sits at slot
    index + i and sees key slot k when start[b] <= k <= index + i (slots before start[b] are row
    b's left padding); S = `width` (a prefill into an empty cache: width = T and index = 0).
    """
    if width is None:
        slot = jnp.arange(t)
        return (slot[None, :] <= slot[:, None])[None]
    k = jnp.arange(width)[None, None, :]
    q = (index + jnp.arange(t))[None, :, None]
    return (k <= q) & (k >= start[:, None, None])


def _heads_major(x: jax.Array) -> jax.Array:
    """[B, T, heads, hd] -> [B, heads, T, hd], the layout of the KV cache."""
    return jnp.swapaxes(x, 1, 2)


def _write_cache(
    k_cache: jax.Array, v_cache: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The new keys and values [B, kv_heads, T, hd] written at slot `index` (cache dtype)."""
    return (
        jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, 0, index, 0)),
        jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, index, 0)),
    )


def _matmul_out_in(x: jax.Array, kernel: jax.Array, **kwargs: Any) -> jax.Array:
    """x [..., in] times a kernel stored [out, in], as one rank-2 [rows, in] x [out, in] dot.

    Why rank 2: XLA canonicalises a dot whose input has more than two axes ([B, T, in] in
    decoding) by moving the kernel's contracted axis first, a transpose it then folds into the
    weights; with bfloat16 weights that silently undid the [out, in] layout (measured: the
    SmolLM2 decode step's weight dots 1.4x slower; benchmarks/RESULTS.md).
    """
    rows = x.reshape(-1, x.shape[-1])
    out = jax.lax.dot_general(rows, kernel, (((1,), (1,)), ((), ())), **kwargs)
    return out.reshape(*x.shape[:-1], kernel.shape[0])


def _dot_kernel_out_in(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, **kwargs: Any
) -> jax.Array:
    """`nnx.Linear`'s `dot_general` for a kernel stored [out, in] (`decode_layout`): the same
    product, contracting the kernel's last axis instead of its first. `nnx.Linear` always asks
    for its input's last axis against a rank-2 kernel, so `dimension_numbers` carry nothing
    else."""
    del dimension_numbers
    return _matmul_out_in(lhs, rhs, **kwargs)


def decode_layout(decoder: Decoder) -> Decoder:
    """Every `nnx.Linear` kernel of a (traced) decoder transposed to [out, in], in place.

    Call it inside jit on a decoder merged for one program (the sampler does, once per call,
    before its decode loop); the parameter tree outside is untouched. Why: at the few rows of a
    decode step the dots stream their weights, and XLA:CPU's small-M dot reads a kernel laid
    out [out, in] (each output's weights contiguous along the contracted axis) faster than
    [in, out]: measured 16% less CPU per SmolLM2 decode step in float32, 20% in bfloat16
    (benchmarks/RESULTS.md). The transpose is one pass over the weights per call, outside the
    loop. Scanned layers keep their leading layer axis. Values are the same products, summed in
    a different order (float tolerance).
    """
    for _, module in nnx.iter_modules(decoder):
        if isinstance(module, nnx.Linear) and module.dot_general is not _dot_kernel_out_in:
            module.kernel.set_value(jnp.swapaxes(module.kernel[...], -1, -2))
            module.dot_general = _dot_kernel_out_in
    return decoder


# ----------------------------------------------------------------------------- blocks


class Attention(nnx.Module):
    """Causal self-attention with grouped-query heads, RoPE and an external KV cache."""

    def __init__(self, config: LMConfig, dtype: Any, std: float, out_std: float, rngs: nnx.Rngs):
        d, h, kvh, hd = config.d_model, config.n_heads, config.kv_heads, config.hd
        self.config = config
        self.q = dense(d, h * hd, config.attn_bias, std, ("embed", "heads"), dtype, rngs)
        self.k = dense(d, kvh * hd, config.attn_bias, std, ("embed", "kv_heads"), dtype, rngs)
        self.v = dense(d, kvh * hd, config.attn_bias, std, ("embed", "kv_heads"), dtype, rngs)
        self.o = dense(h * hd, d, config.attn_out_bias, out_std, ("heads", "embed"), dtype, rngs)

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        mask: jax.Array,
        k_cache: jax.Array | None = None,
        v_cache: jax.Array | None = None,
        index: jax.Array | None = None,
        fresh: bool = False,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """Attention output [B, T, D] and the updated caches.

        `rope`: `rope_tables` of the positions; `mask` [B or 1, T, S]: `attention_mask`.
        No cache: causal over the T tokens. `fresh`: a prefill into an empty cache, attending to
        the T new keys only (in float32). Otherwise the T tokens attend to the first S cache
        slots (the mask's width), which must include slot index + T - 1: the sampler decodes in
        length buckets (a cache per bucket) so it reads only the filled part of the cache.

        Keys and values are laid out [B, kv_heads, S, hd] (the cache's layout), so both attention
        products are batched over (B, kv_heads) with no transpose of the cache per step.
        """
        config = self.config
        b, t, _ = x.shape
        h, kvh, hd = config.n_heads, config.kv_heads, config.hd
        groups = h // kvh
        q = _rope(self.q(x).reshape(b, t, h, hd), rope, config) * (hd**-0.5)
        k = _heads_major(_rope(self.k(x).reshape(b, t, kvh, hd), rope, config))
        v = _heads_major(self.v(x).reshape(b, t, kvh, hd))
        if k_cache is None or fresh:
            keys, values = k, v
            if k_cache is not None:
                k_cache, v_cache = _write_cache(k_cache, v_cache, k, v, index)
        else:
            k_cache, v_cache = _write_cache(k_cache, v_cache, k, v, index)
            width = mask.shape[-1]
            keys, values = k_cache[:, :, :width], v_cache[:, :, :width]
        # [B, T, kvh * groups, hd] -> [B, kvh, groups * T, hd]: query heads grouped by KV head
        qg = jnp.moveaxis(q.reshape(b, t, kvh, groups, hd), 1, 3).reshape(b, kvh, groups * t, hd)
        scores = jnp.einsum(
            "bkqd,bksd->bkqs", qg.astype(keys.dtype), keys, preferred_element_type=jnp.float32
        ).reshape(b, kvh, groups, t, -1)
        scores = jnp.where(mask[:, None, None], scores, _NEG)
        weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
        out = jnp.einsum(
            "bkqs,bksd->bkqd",
            weights.reshape(b, kvh, groups * t, -1),
            values,
            preferred_element_type=jnp.float32,
        )
        out = jnp.moveaxis(out.reshape(b, kvh, groups, t, hd), 3, 1)  # [B, T, kvh, groups, hd]
        return self.o(out.reshape(b, t, h * hd)), k_cache, v_cache


class GatedMLP(nnx.Module):
    """Llama's SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config: LMConfig, dtype: Any, std: float, out_std: float, rngs: nnx.Rngs):
        d, m, bias = config.d_model, config.d_mlp, config.mlp_bias
        self.act = config.act
        self.gate = dense(d, m, bias, std, ("embed", "mlp"), dtype, rngs)
        self.up = dense(d, m, bias, std, ("embed", "mlp"), dtype, rngs)
        self.down = dense(m, d, bias, out_std, ("mlp", "embed"), dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(_activation(self.act, self.gate(x)) * self.up(x))


class MLP(nnx.Module):
    """GPT-2 / CodeGen: fc_out(act(fc_in(x)))."""

    def __init__(self, config: LMConfig, dtype: Any, std: float, out_std: float, rngs: nnx.Rngs):
        d, m, bias = config.d_model, config.d_mlp, config.mlp_bias
        self.act = config.act
        self.fc_in = dense(d, m, bias, std, ("embed", "mlp"), dtype, rngs)
        self.fc_out = dense(m, d, bias, out_std, ("mlp", "embed"), dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc_out(_activation(self.act, self.fc_in(x)))


class Block(nnx.Module):
    """One decoder layer: pre-norm attention and MLP (CodeGen: in parallel from one norm)."""

    def __init__(self, config: LMConfig, dtype: Any, std: float, out_std: float, rngs: nnx.Rngs):
        self.parallel = config.arch == "codegen"
        self.ln1 = _norm(config, dtype, rngs)
        self.attn = Attention(config, dtype, std, out_std, rngs)
        self.ln2 = None if self.parallel else _norm(config, dtype, rngs)
        mlp = GatedMLP if config.arch == "llama" else MLP
        self.mlp = mlp(config, dtype, std, out_std, rngs)

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        mask: jax.Array,
        k_cache: jax.Array | None = None,
        v_cache: jax.Array | None = None,
        index: jax.Array | None = None,
        fresh: bool = False,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        h = self.ln1(x)
        a, k_cache, v_cache = self.attn(h, rope, mask, k_cache, v_cache, index, fresh)
        if self.parallel:
            return x + a + self.mlp(h), k_cache, v_cache
        x = x + a
        return x + self.mlp(self.ln2(x)), k_cache, v_cache


def _remat_layers(
    blocks: list[Block], x: jax.Array, rope: tuple[jax.Array, jax.Array] | None, mask: jax.Array
) -> jax.Array:
    """The layers without a cache, each under `jax.checkpoint`, as a `lax.scan` over their
    states stacked on the fly (one copy of the weights per step).

    Why a scan: unrolled checkpointed layers leave XLA free to schedule every recomputation
    early (none depends on the incoming gradient): on CPU they held as much as no remat at
    all. A scan's backward loop recomputes one layer per iteration. The function is pure in
    the layers' states (split here, merged inside), so it composes with a plain `jax.grad` over
    merged modules as well as with `nnx.grad`.
    """
    splits = [nnx.split(block) for block in blocks]
    graph = splits[0][0]
    if any(g != graph for g, _ in splits):
        raise ValueError("remat scans the layers: they must share one structure")

    def layer(x: jax.Array, state: Any) -> tuple[jax.Array, None]:
        return nnx.merge(graph, state)(x, rope, mask)[0], None

    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[s for _, s in splits])
    return jax.lax.scan(jax.checkpoint(layer), x, stacked)[0]


class Decoder(nnx.Module):
    """The language model: token ids [B, T] -> float32 logits [B, T, V] (and the KV cache).

    GPT-2 style initialisation: N(0, std), residual projections scaled by 1/sqrt(2 L).
    """

    def __init__(
        self,
        config: LMConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        std: float = 0.02,
    ) -> None:
        d = config.d_model
        out_std = std / np.sqrt(2 * config.n_layers)
        self.config = config
        self.scanned = False
        self.embed = nnx.Embed(
            config.vocab_size,
            d,
            param_dtype=dtype,
            embedding_init=_partitioned(nnx.initializers.normal(std), ("vocab", "embed")),
            rngs=rngs,
        )
        self.pos_embed = (
            nnx.Embed(
                config.max_seq_len,
                d,
                param_dtype=dtype,
                embedding_init=_partitioned(nnx.initializers.normal(std / 2), (None, "embed")),
                rngs=rngs,
            )
            if config.arch == "gpt2"
            else None
        )
        self.layers: Any = nnx.List(
            [Block(config, dtype, std, out_std, rngs) for _ in range(config.n_layers)]
        )
        self.final_norm = _norm(config, dtype, rngs)
        self.lm_head = (
            None
            if config.tie_embeddings
            else dense(
                d, config.vocab_size, config.lm_head_bias, std, ("embed", "vocab"), dtype, rngs
            )
        )

    def hidden_states(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: KVCache | None = None,
        fresh_cache: bool = False,
        window: int | None = None,
        remat: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states [B, T, D] (float32) and the updated cache."""
        x = self.embed(tokens).astype(jnp.float32)  # the residual stream is float32
        return self.hidden_states_of_vectors(x, positions, cache, fresh_cache, window, remat)

    def hidden_states_of_vectors(
        self,
        x: jax.Array,
        positions: jax.Array,
        cache: KVCache | None = None,
        fresh_cache: bool = False,
        window: int | None = None,
        remat: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """`hidden_states` from input vectors x [B, T, D] instead of token ids: the way in for
        a soft prompt (learned vectors before the token embeddings, as stage 3's policy uses).

        `remat` (training, no cache): a gradient through this call keeps only each layer's input
        and recomputes the layer's inside on the way back (`_remat_layers`), for one more forward
        pass. Without it the backward pass holds every layer's attention intermediates, [B, H, T, T]
        float32 each: a LoRA step of SmolLM2-135M at batch 8 x 768 tokens compiles to 25.2 GB of
        temporaries without remat and 2.6 GB with it.
        """
        if remat and cache is not None:
            raise ValueError("remat is for training (no cache)")
        x = x.astype(jnp.float32)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions).astype(jnp.float32)
        index = None if cache is None else cache.index
        t = x.shape[1]
        # shared by every layer: RoPE tables and the attention mask
        rope = rope_tables(positions, self.config)
        if cache is None:
            mask = attention_mask(t)
        elif fresh_cache:
            mask = attention_mask(t, t, jnp.zeros((), jnp.int32), cache.start)
        else:
            slots = cache.k[0].shape[2] if not self.scanned else cache.k.shape[3]
            width = slots if window is None else min(window, slots)
            mask = attention_mask(t, width, index, cache.start)
        if not self.scanned:
            if remat:
                return self.final_norm(_remat_layers(list(self.layers), x, rope, mask)), None
            ks, vs = [], []
            for i, block in enumerate(self.layers):
                kc = None if cache is None else cache.k[i]
                vc = None if cache is None else cache.v[i]
                x, kc, vc = block(x, rope, mask, kc, vc, index, fresh_cache)
                ks.append(kc)
                vs.append(vc)
            new_k, new_v = tuple(ks), tuple(vs)
        else:
            graph, stacked = nnx.split(self.layers)
            if cache is None:

                def body(x: jax.Array, state: Any) -> tuple[jax.Array, None]:
                    return nnx.merge(graph, state)(x, rope, mask)[0], None

                x, _ = jax.lax.scan(jax.checkpoint(body) if remat else body, x, stacked)
                new_k = new_v = None
            else:

                def body_c(x: jax.Array, inp: Any) -> tuple[jax.Array, Any]:
                    state, kc, vc = inp
                    block = nnx.merge(graph, state)
                    x, kc, vc = block(x, rope, mask, kc, vc, index, fresh_cache)
                    return x, (kc, vc)

                x, (new_k, new_v) = jax.lax.scan(body_c, x, (stacked, cache.k, cache.v))
        x = self.final_norm(x)
        if cache is not None:
            cache = cache.replace(k=new_k, v=new_v, index=cache.index + t)
        return x, cache

    def logits(self, x: jax.Array) -> jax.Array:
        """Float32 logits [..., V] from final hidden states."""
        if self.lm_head is not None:
            return self.lm_head(x)
        w = self.embed.embedding[...]  # tied: the table [vocab, in] is an [out, in] kernel
        return _matmul_out_in(x.astype(w.dtype), w, preferred_element_type=jnp.float32)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        *,
        last_only: bool = False,
        fresh_cache: bool = False,
        window: int | None = None,
        remat: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits (float32) for `tokens` [B, T] at `positions` [B, T] (default 0..T-1).

        Without a cache the attention is causal over the T tokens (training, scoring). With a cache
        the T tokens are written at slots cache.index.. and attend to every earlier valid slot
        below `window`. `last_only` returns logits of the last position only ([B, V]), which is
        all a prefill needs. `fresh_cache` promises the cache holds nothing yet (a prefill):
        attention then runs over the T new keys in float32 instead of the whole cache. `remat`
        trades compute for memory in training (`hidden_states_of_vectors`).
        """
        tokens = jnp.asarray(tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x, cache = self.hidden_states(tokens, positions, cache, fresh_cache, window, remat)
        if last_only:
            x = x[:, -1]
        return self.logits(x), cache


def init_decoder(
    config: LMConfig, key: jax.Array | int = 0, dtype: Any = jnp.float32, std: float = 0.02
) -> Decoder:
    """A randomly initialised decoder (GPT-2 style, see `Decoder`)."""
    return Decoder(config, rngs=nnx.Rngs(params=key), dtype=dtype, std=std)
