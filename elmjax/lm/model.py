"""The decoder: a pure function of a parameter pytree (docs/architecture.md, "Language model").

Why pure functions over a dict rather than `flax.nnx` modules: the sampler jits one prefill and
one `lax.while_loop` decode over these functions, the trainer differentiates them, and weight
import writes straight into the dict; a module object would only have to be split back into
(graph, state) at each of those boundaries. The parameter layout is flat and named after what
each tensor does, so `flatten_params` gives stable safetensors keys (`layers.3.attn.q.w`).

Layout (every linear weight is stored [in, out], so a layer is `x @ w + b`):

    embed [V, D]; pos_embed [P, D] (GPT-2 only)
    layers: list (unrolled) or dict with a leading layer axis (scanned) of
        ln1 {scale[, bias]}; attn {q, k, v, o: {w[, b]}}; ln2 (not CodeGen)
        mlp: Llama {gate, up, down}; GPT-2 / CodeGen {fc_in, fc_out}
    final_norm {scale[, bias]}; lm_head {w[, b]} (absent when embeddings are tied)

Unrolled layers are the default: decode on CPU measured ~2.5x faster than `lax.scan` over
stacked layers (see benchmarks/RESULTS.md); `stack_layers` gives the scanned form, which
compiles in constant time for deep models.

Padding convention: rows are LEFT-padded so every row writes the same cache slot each step
(one `dynamic_update_slice`, no scatter); `KVCache.start[b]` is the first real slot of row b and
positions are passed explicitly, so RoPE / learned positions ignore the padding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from elmjax.lm.config import LMConfig

Params = dict[str, Any]

_NEG = -1e30  # finite "minus infinity": fully masked rows give uniform weights, never NaN


@struct.dataclass
class KVCache:
    """Keys and values of every layer, written in place as decoding proceeds.

    k, v: tuple over layers of [B, S, kv_heads, head_dim] (unrolled params) or one array
    [L, B, S, kv_heads, head_dim] (scanned params). `index` is the next slot to write (shared by
    all rows); slots < start[b] are padding of row b and never attended to.
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
    shape = (batch, length, config.kv_heads, config.hd)
    if scanned:
        k = jnp.zeros((config.n_layers, *shape), dtype)
        v = jnp.zeros((config.n_layers, *shape), dtype)
    else:
        k = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
    if start is None:
        start = jnp.zeros((batch,), jnp.int32)
    return KVCache(k=k, v=v, index=jnp.zeros((), jnp.int32), start=start.astype(jnp.int32))


# ----------------------------------------------------------------------------- building blocks


def _linear(p: Params, x: jax.Array) -> jax.Array:
    """x @ w (+ b) with float32 accumulation and output.

    Inputs are cast to the weight dtype: with bfloat16 weights the matmul reads half the bytes
    (decode is memory bound: measured 2x faster than float32 on this CPU) while the residual
    stream, norms and softmax stay float32. Casting the weights up instead would be slower
    than float32 weights (a converted copy per step).
    """
    w = p["w"]
    y = jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)
    if "b" in p:
        y = y + p["b"].astype(jnp.float32)
    return y


def _norm(p: Params, x: jax.Array, config: LMConfig) -> jax.Array:
    """RMSNorm (Llama) or LayerNorm (GPT-2, CodeGen), statistics in float32."""
    xf = x.astype(jnp.float32)
    if config.arch == "llama":
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + config.norm_eps)
        return p["scale"].astype(jnp.float32) * y
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + config.norm_eps)
    return y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)


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


def _rope(x: jax.Array, positions: jax.Array, config: LMConfig) -> jax.Array:
    """Rotary embedding of [B, T, heads, hd] at integer positions [B, T].

    Llama rotates the two halves of the head (HF `rotate_half`); CodeGen rotates interleaved pairs
    (2i, 2i+1) of only the first `rotary_dim` dims (GPT-J `rotate_every_two`).
    """
    rd = config.rope_dims
    if rd == 0:
        return x
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, rd, 2, dtype=np.float32) / rd))
    angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    sin = jnp.sin(angle)[:, :, None, :]
    cos = jnp.cos(angle)[:, :, None, :]
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


def _write_cache(
    k_cache: jax.Array, v_cache: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The new keys and values written into the caches at slot `index` (cache dtype)."""
    return (
        jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0)),
        jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0)),
    )


def _attention(
    p: Params,
    x: jax.Array,
    positions: jax.Array,
    k_cache: jax.Array | None,
    v_cache: jax.Array | None,
    index: jax.Array | None,
    start: jax.Array | None,
    config: LMConfig,
    fresh: bool = False,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    b, t, _ = x.shape
    h, kvh, hd = config.n_heads, config.kv_heads, config.hd
    q = _rope(_linear(p["q"], x).reshape(b, t, h, hd), positions, config)
    k = _rope(_linear(p["k"], x).reshape(b, t, kvh, hd), positions, config)
    v = _linear(p["v"], x).reshape(b, t, kvh, hd)
    if k_cache is None:
        keys, values = k, v
        slot = jnp.arange(t)
        mask = (slot[None, :] <= slot[:, None])[None]  # [1, T, S] causal
    elif fresh:  # prefill into an empty cache: attend to the new keys only, in float32
        k_cache, v_cache = _write_cache(k_cache, v_cache, k, v, index)
        keys, values = k, v
        slot = jnp.arange(t)
        mask = (slot[None, None, :] <= slot[None, :, None]) & (
            slot[None, None, :] >= start[:, None, None]
        )
    else:
        k_cache, v_cache = _write_cache(k_cache, v_cache, k, v, index)
        keys, values = k_cache, v_cache
        q_slot = index + jnp.arange(t)
        k_slot = jnp.arange(k_cache.shape[1])
        mask = (k_slot[None, None, :] <= q_slot[None, :, None]) & (
            k_slot[None, None, :] >= start[:, None, None]
        )  # [B, T, S]
    groups = h // kvh
    qg = q.reshape(b, t, kvh, groups, hd)
    scores = jnp.einsum(
        "btkgd,bskd->bkgts", qg.astype(keys.dtype), keys, preferred_element_type=jnp.float32
    )
    scores = scores * (hd**-0.5)
    scores = jnp.where(mask[:, None, None], scores, _NEG)
    weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, values, preferred_element_type=jnp.float32)
    return _linear(p["o"], out.reshape(b, t, h * hd)), k_cache, v_cache


def _mlp(p: Params, x: jax.Array, config: LMConfig) -> jax.Array:
    if config.arch == "llama":
        return _linear(
            p["down"], _activation(config.act, _linear(p["gate"], x)) * _linear(p["up"], x)
        )
    return _linear(p["fc_out"], _activation(config.act, _linear(p["fc_in"], x)))


def _block(
    lp: Params,
    x: jax.Array,
    positions: jax.Array,
    k_cache: jax.Array | None,
    v_cache: jax.Array | None,
    index: jax.Array | None,
    start: jax.Array | None,
    config: LMConfig,
    fresh: bool = False,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    h = _norm(lp["ln1"], x, config)
    a, k_cache, v_cache = _attention(
        lp["attn"], h, positions, k_cache, v_cache, index, start, config, fresh
    )
    if config.arch == "codegen":  # parallel residual: attention and MLP read the same norm
        return x + a + _mlp(lp["mlp"], h, config), k_cache, v_cache
    x = x + a
    return x + _mlp(lp["mlp"], _norm(lp["ln2"], x, config), config), k_cache, v_cache


# ----------------------------------------------------------------------------- forward


def hidden_states(
    params: Params,
    config: LMConfig,
    tokens: jax.Array,
    positions: jax.Array,
    cache: KVCache | None = None,
    fresh_cache: bool = False,
) -> tuple[jax.Array, KVCache | None]:
    """Final-normed hidden states [B, T, D] and the updated cache."""
    x = params["embed"][tokens].astype(jnp.float32)  # the residual stream is float32
    if config.arch == "gpt2":
        x = x + params["pos_embed"][positions].astype(jnp.float32)
    index = None if cache is None else cache.index
    start = None if cache is None else cache.start
    layers = params["layers"]
    if isinstance(layers, (list, tuple)):
        ks, vs = [], []
        for i, lp in enumerate(layers):
            kc = None if cache is None else cache.k[i]
            vc = None if cache is None else cache.v[i]
            x, kc, vc = _block(lp, x, positions, kc, vc, index, start, config, fresh_cache)
            ks.append(kc)
            vs.append(vc)
        new_k, new_v = tuple(ks), tuple(vs)
    elif cache is None:

        def body(x: jax.Array, lp: Params) -> tuple[jax.Array, None]:
            return _block(lp, x, positions, None, None, None, None, config)[0], None

        x, _ = jax.lax.scan(body, x, layers)
        new_k = new_v = None
    else:

        def body_c(x: jax.Array, inp: Any) -> tuple[jax.Array, Any]:
            lp, kc, vc = inp
            x, kc, vc = _block(lp, x, positions, kc, vc, index, start, config, fresh_cache)
            return x, (kc, vc)

        x, (new_k, new_v) = jax.lax.scan(body_c, x, (layers, cache.k, cache.v))
    x = _norm(params["final_norm"], x, config)
    if cache is not None:
        cache = cache.replace(k=new_k, v=new_v, index=cache.index + tokens.shape[1])
    return x, cache


def logits_from_hidden(params: Params, config: LMConfig, x: jax.Array) -> jax.Array:
    """Float32 logits [..., V]."""
    if config.tie_embeddings:
        w = params["embed"]
        logits = jnp.einsum(
            "...d,vd->...v", x.astype(w.dtype), w, preferred_element_type=jnp.float32
        )
    else:
        w = params["lm_head"]["w"]
        logits = jnp.einsum(
            "...d,dv->...v", x.astype(w.dtype), w, preferred_element_type=jnp.float32
        )
        if "b" in params["lm_head"]:
            logits = logits + params["lm_head"]["b"].astype(jnp.float32)
    return logits


def forward(
    params: Params,
    config: LMConfig,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    cache: KVCache | None = None,
    *,
    last_only: bool = False,
    fresh_cache: bool = False,
) -> tuple[jax.Array, KVCache | None]:
    """Logits (float32) for `tokens` [B, T] at `positions` [B, T] (default 0..T-1).

    Without a cache the attention is causal over the T tokens (training, scoring). With a cache
    the T tokens are written at slots cache.index.. and attend to every earlier valid slot.
    `last_only` returns logits of the last position only ([B, V]), which is all a prefill needs.
    `fresh_cache` promises the cache holds nothing yet (a prefill): attention then runs over the
    T new keys in float32 instead of the whole (possibly bfloat16) cache.
    """
    tokens = jnp.asarray(tokens)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x, cache = hidden_states(params, config, tokens, positions, cache, fresh_cache)
    if last_only:
        x = x[:, -1]
    return logits_from_hidden(params, config, x), cache


# ----------------------------------------------------------------------------- parameters


def _dense(key: jax.Array, n_in: int, n_out: int, bias: bool, std: float, dtype: Any) -> Params:
    p = {"w": (jax.random.normal(key, (n_in, n_out), jnp.float32) * std).astype(dtype)}
    if bias:
        p["b"] = jnp.zeros((n_out,), dtype)
    return p


def _norm_params(config: LMConfig, dtype: Any) -> Params:
    p = {"scale": jnp.ones((config.d_model,), dtype)}
    if config.arch != "llama":
        p["bias"] = jnp.zeros((config.d_model,), dtype)
    return p


def init_params(
    config: LMConfig, key: jax.Array, dtype: Any = jnp.float32, std: float = 0.02
) -> Params:
    """GPT-2 style initialisation: N(0, std), residual projections scaled by 1/sqrt(2 L)."""
    d, hd, h, kvh = config.d_model, config.hd, config.n_heads, config.kv_heads
    out_std = std / np.sqrt(2 * config.n_layers)
    keys = jax.random.split(key, config.n_layers + 3)
    layers = []
    for i in range(config.n_layers):
        k = jax.random.split(keys[i], 7)
        lp: Params = {
            "ln1": _norm_params(config, dtype),
            "attn": {
                "q": _dense(k[0], d, h * hd, config.attn_bias, std, dtype),
                "k": _dense(k[1], d, kvh * hd, config.attn_bias, std, dtype),
                "v": _dense(k[2], d, kvh * hd, config.attn_bias, std, dtype),
                "o": _dense(k[3], h * hd, d, config.attn_out_bias, out_std, dtype),
            },
        }
        if config.arch != "codegen":
            lp["ln2"] = _norm_params(config, dtype)
        if config.arch == "llama":
            lp["mlp"] = {
                "gate": _dense(k[4], d, config.d_mlp, config.mlp_bias, std, dtype),
                "up": _dense(k[5], d, config.d_mlp, config.mlp_bias, std, dtype),
                "down": _dense(k[6], config.d_mlp, d, config.mlp_bias, out_std, dtype),
            }
        else:
            lp["mlp"] = {
                "fc_in": _dense(k[4], d, config.d_mlp, config.mlp_bias, std, dtype),
                "fc_out": _dense(k[6], config.d_mlp, d, config.mlp_bias, out_std, dtype),
            }
        layers.append(lp)
    params: Params = {
        "embed": (jax.random.normal(keys[-1], (config.vocab_size, d)) * std).astype(dtype),
        "layers": layers,
        "final_norm": _norm_params(config, dtype),
    }
    if config.arch == "gpt2":
        params["pos_embed"] = (
            jax.random.normal(keys[-2], (config.max_seq_len, d)) * std / 2
        ).astype(dtype)
    if not config.tie_embeddings:
        params["lm_head"] = _dense(keys[-3], d, config.vocab_size, config.lm_head_bias, std, dtype)
    return params


def stack_layers(params: Params) -> Params:
    """Unrolled (list of layers) -> scanned (one pytree with a leading layer axis)."""
    layers = params["layers"]
    if not isinstance(layers, (list, tuple)):
        return params
    return {**params, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(params: Params) -> Params:
    """Scanned -> unrolled."""
    layers = params["layers"]
    if isinstance(layers, (list, tuple)):
        return params
    n = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": [jax.tree.map(lambda x, i=i: x[i], layers) for i in range(n)]}


def cast_params(params: Params, dtype: Any) -> Params:
    """Every floating leaf cast to `dtype` (e.g. bfloat16 weights for decode)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )


def count_params(params: Params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def flatten_params(params: Params) -> dict[str, np.ndarray]:
    """Dotted names -> host arrays (`layers.0.attn.q.w`); the safetensors key scheme."""
    params = unstack_layers(params)
    out: dict[str, np.ndarray] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(f"{prefix}{i}.", v)
        else:
            out[prefix[:-1]] = np.asarray(node)

    walk("", params)
    return out


def unflatten_params(flat: dict[str, Any]) -> Params:
    """Inverse of `flatten_params` (layers come back as a list)."""
    root: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.split(".")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = jnp.asarray(value)
    layers = root.get("layers", {})
    root["layers"] = [layers[str(i)] for i in range(len(layers))]
    return root
