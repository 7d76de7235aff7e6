"""Logical axis names -> mesh axes: how the decoder's parameters are laid out over devices.

Every parameter of `model.Decoder` names its dimensions with logical axes (`embed`, `heads`,
`kv_heads`, `mlp`, `vocab`, and `layers` for the stacked form). One rule table maps them onto
a 2-D mesh (`data`, `model`): the feature dimensions of attention, MLP and vocabulary are split
over `model` (Megatron-style tensor parallelism, XLA inserting the collectives), the residual
width `embed` is replicated, and batches go over `data`. `nnx.get_partition_spec` reads the
metadata under these rules. A dimension that the `model` axis does not divide stays replicated
(e.g. 3 KV heads x 64 over 8 devices would split heads unevenly), so any model runs on any mesh.

The mesh itself is `elmjax.mesh.make_mesh(model=...)`; the size of its `model` axis is the run
config key `mutation.model_parallel` (1 = replicated parameters, the right choice for models
that fit one device).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from elmjax.mesh import DATA, MODEL

#: logical axis -> mesh axis (None: replicated).
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", DATA),
    ("vocab", MODEL),
    ("heads", MODEL),
    ("kv_heads", MODEL),
    ("mlp", MODEL),
    ("embed", None),
    ("layers", None),
)


def partition_specs(state: Any, mesh: Mesh | None = None, rules: Any = LOGICAL_RULES) -> Any:
    """PartitionSpecs (mesh axes) for an nnx state, from its logical metadata and `rules`.

    With a mesh, axes it lacks and dimensions it does not divide evenly are replicated.
    """
    with nn.logical_axis_rules(rules):
        specs = nnx.get_partition_spec(state)

    def fit(var: Any, spec_var: Any) -> Any:
        spec = spec_var.get_value() if isinstance(spec_var, nnx.Variable) else spec_var
        if mesh is None or spec is None:
            return spec
        shape = np.shape(var.get_value() if isinstance(var, nnx.Variable) else var)
        axes = []
        for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
            ok = axis is not None and axis in mesh.shape and dim % mesh.shape[axis] == 0
            axes.append(axis if ok else None)
        return PartitionSpec(*axes)

    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return jax.tree.map(fit, state, specs, is_leaf=is_var)


def state_shardings(state: Any, mesh: Mesh, rules: Any = LOGICAL_RULES) -> Any:
    """NamedShardings for every leaf of an nnx state (same tree)."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        partition_specs(state, mesh, rules),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def shard_state(state: Any, mesh: Mesh, rules: Any = LOGICAL_RULES) -> Any:
    """`state` placed on `mesh` as the rule table says."""
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    shardings = state_shardings(state, mesh, rules)
    return jax.tree.map(
        lambda v, s: v.replace(jax.device_put(v.get_value(), s)), state, shardings, is_leaf=is_var
    )


def module_tree(decoder: nnx.Module, rules: Any = LOGICAL_RULES) -> list[str]:
    """The module tree, one line per module and parameter: shape, dtype, logical axes and the
    mesh axes they map to. Layers identical in structure to layer 0 are folded into one line."""

    def lines(name: str, node: Any, depth: int) -> list[str]:
        pad = "  " * depth
        if isinstance(node, nnx.Variable):
            logical = node.get_metadata().get("out_sharding")
            with nn.logical_axis_rules(rules):
                mesh_axes = nnx.get_partition_spec(nnx.State({"v": node}))["v"].get_value()
            shape = "x".join(str(d) for d in node.shape)
            return [
                f"{pad}{name}: {type(node).__name__}[{shape}] {node.dtype} "
                f"logical={tuple(logical) if logical else ()} mesh={mesh_axes}"
            ]
        if isinstance(node, nnx.List):
            out = [f"{pad}{name}: List[{len(node)}]"]
            first = lines("0", node[0], depth + 1) if len(node) else []
            same = [i for i in range(1, len(node)) if lines("0", node[i], depth + 1) == first]
            out += first
            if same and len(same) == len(node) - 1:
                out.append(f"{pad}  1..{len(node) - 1}: {len(same)} more like 0")
            else:
                for i in range(1, len(node)):
                    out += lines(str(i), node[i], depth + 1)
            return out
        out = [f"{pad}{name}: {type(node).__name__}"]
        for key, child in vars(node).items():
            if isinstance(child, (nnx.Module, nnx.Variable, nnx.List)):
                out += lines(key, child, depth + 1)
        return out

    return lines("decoder", decoder, 0)
