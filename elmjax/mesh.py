"""The one device mesh of a process: a `data` axis over its devices (and a `model` axis for LMs).

Everything batched in a generation is split over `data`: the simulator's packed bodies (one
lane per walker, `elmjax.sodarace.env`), the sampler's rows, the candidate batch. The archive is
small and stays replicated. A `model` axis of size > 1 shards an LM's parameters (heads and MLP)
for models too large for one device; the data axis then has `devices / model` entries.

Axis types are deliberate: `Auto`. elmjax places shardings itself (a `NamedSharding` on the
inputs, `shard_map` for the simulator) and lets XLA propagate them inside `jit`; `Explicit`
axes (the default of recent `jax.make_mesh`) would make every operation of the sampler and the
simulator type-check its sharding, which that code is not written for.

The mesh spans this process's devices (`jax.local_devices()`): in a multi-process run each
process simulates and samples its own shard of the batch on its own devices, and the processes
exchange results on the host (`elmjax.distributed`), so no program spans hosts.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"
MODEL = "model"


def make_mesh(model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (`data`, `model`) mesh over `devices` (default: this process's devices).

    `model` must divide the device count; `model=1` gives a pure data-parallel mesh whose
    `model` axis has size 1 (so code can always name both axes)."""
    devices = list(devices if devices is not None else jax.local_devices())
    if model < 1 or len(devices) % model:
        raise ValueError(f"the model axis ({model}) must divide the {len(devices)} device(s)")
    return jax.make_mesh(
        (len(devices) // model, model),
        (DATA, MODEL),
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices,
    )


def data_axis_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D `data` mesh over `devices` (default: this process's), even for one device."""
    devices = list(devices if devices is not None else jax.local_devices())
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """`data_axis_mesh`, or None for one device: a single device runs the plain `jit`
    program, with nothing to split."""
    devices = list(devices if devices is not None else jax.local_devices())
    return data_axis_mesh(devices) if len(devices) >= 2 else None


def rows_sharding(mesh: Mesh | None, ndim: int = 1) -> NamedSharding | None:
    """The sharding of an array whose leading axis is split over `data` (rows of a batch)."""
    if mesh is None:
        return None
    return NamedSharding(mesh, PartitionSpec(DATA, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (LM parameters without a model axis, the archive)."""
    return NamedSharding(mesh, PartitionSpec())
