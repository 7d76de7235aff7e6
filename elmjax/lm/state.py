"""A decoder's state: layer layouts, dtypes, and flat names for files.

- `stack_layers` / `unstack_layers` switch between unrolled layers (an `nnx.List` of blocks,
  fastest decode) and scanned layers (one block with a leading layer axis, constant compile
  time); `cast_state` / `cast_decoder` change the parameters' dtype.
- `flat_state` names every parameter by its NNX state path (`layers.0.attn.q.kernel`), the key
  scheme of model files and caches; `decoder_from_flat` / `decoder_from_nested` write arrays
  into a decoder's state (weight import, loading), checking every name and shape, and
  `legacy_to_state_name` maps the dict-layout names of version-1 files (`layers.0.attn.q.w`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elmjax.lm.config import LMConfig
from elmjax.lm.model import Decoder


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def stack_layers(decoder: Decoder) -> Decoder:
    """Unrolled -> scanned: a new decoder whose one block holds every layer's parameters along
    a leading axis (logical name "layers", never sharded). The input is left unchanged."""
    if decoder.scanned:
        return decoder
    graph, state = nnx.split(decoder)
    out = nnx.merge(graph, state, copy=True)
    block_graph, _ = nnx.split(decoder.layers[0])
    states = [nnx.state(b) for b in decoder.layers]

    def stack(*vs: nnx.Variable) -> nnx.Variable:
        names = vs[0].get_metadata().get("out_sharding") or (None,) * vs[0].ndim
        return vs[0].replace(jnp.stack([v[...] for v in vs]), out_sharding=("layers", *names))

    stacked = jax.tree.map(stack, *states, is_leaf=_is_var)
    out.layers = nnx.merge(block_graph, stacked)
    out.scanned = True
    return out


def unstack_layers(decoder: Decoder) -> Decoder:
    """Scanned -> unrolled (a new decoder; the input is left unchanged)."""
    if not decoder.scanned:
        return decoder
    graph, state = nnx.split(decoder)
    out = nnx.merge(graph, state, copy=True)
    block_graph, stacked = nnx.split(decoder.layers)

    def pick(i: int) -> Any:
        def one(v: nnx.Variable) -> nnx.Variable:
            names = v.get_metadata().get("out_sharding")
            return v.replace(v[...][i], out_sharding=tuple(names[1:]) if names else None)

        return jax.tree.map(one, stacked, is_leaf=_is_var)

    out.layers = nnx.List([nnx.merge(block_graph, pick(i)) for i in range(decoder.config.n_layers)])
    out.scanned = False
    return out


def cast_state(state: Any, dtype: Any) -> Any:
    """Every floating parameter of an nnx state cast to `dtype` (e.g. bfloat16 for decode)."""
    dtype = jnp.dtype(dtype)

    def cast(x: jax.Array) -> jax.Array:
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, state)


def cast_decoder(decoder: Decoder, dtype: Any) -> Decoder:
    """A copy of `decoder` with floating parameters in `dtype`."""
    graph, state = nnx.split(decoder)
    return nnx.merge(graph, cast_state(state, dtype))


def count_params(decoder: Decoder) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(decoder, nnx.Param))))


# ----------------------------------------------------------------------------- flat names

# The elmjax model format v1 (and the shipped elm-tiny bundle, and orbax caches written before
# the NNX decoder) named tensors after a dict layout: `embed`, `layers.0.attn.q.w` / `.b`.
_LEGACY_NAMES = {"embed": "embed.embedding", "pos_embed": "pos_embed.embedding"}


def legacy_to_state_name(name: str) -> str:
    """A v1 flat name -> its NNX state path (`layers.0.attn.q.w` -> `layers.0.attn.q.kernel`)."""
    if name in _LEGACY_NAMES:
        return _LEGACY_NAMES[name]
    head, _, last = name.rpartition(".")
    if last == "w":
        return f"{head}.kernel"
    if last == "b":
        return f"{head}.bias"
    return name


def flat_state(decoder: Decoder) -> dict[str, np.ndarray]:
    """Dotted NNX state paths -> host arrays (`layers.0.attn.q.kernel`), unrolled layout."""
    state = nnx.state(unstack_layers(decoder), nnx.Param)
    return {
        ".".join(str(k) for k in path): np.asarray(v[...]) for path, v in nnx.to_flat_state(state)
    }


def decoder_from_flat(
    config: LMConfig, flat: dict[str, Any], dtype: Any = None, *, legacy: bool = False
) -> Decoder:
    """A decoder whose state is `flat` (names as `flat_state` writes them; `legacy` maps v1
    names). Every parameter must be present with its shape; extra names are an error."""
    if legacy:
        flat = {legacy_to_state_name(k): v for k, v in flat.items()}
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graph, state = nnx.split(abstract)
    expected = {".".join(str(k) for k in path): v for path, v in nnx.to_flat_state(state)}
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(
            f"parameters do not match the config: missing {missing[:6]}, unexpected {extra[:6]}"
        )
    pure: dict[Any, Any] = {}
    for name, var in expected.items():
        value = jnp.asarray(flat[name])
        if value.shape != var.shape:
            raise ValueError(f"{name}: shape {value.shape}, config needs {var.shape}")
        if dtype is not None and jnp.issubdtype(value.dtype, jnp.floating):
            value = value.astype(dtype)
        node = pure
        parts = [int(p) if p.isdigit() else p for p in name.split(".")]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graph, state)


def decoder_from_nested(config: LMConfig, params: dict[str, Any], dtype: Any = None) -> Decoder:
    """A decoder from a nested dict in the state layout (layers may be a list), as the weight
    importers build it."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(f"{prefix}{i}.", v)
        else:
            flat[prefix[:-1]] = node

    walk("", params)
    return decoder_from_flat(config, flat, dtype)
