"""Mesh construction and the one table that maps logical axis names to mesh axes.

Model code names only logical axes (``embed``, ``heads``, ``mlp``, ``batch`` ...). This module is
the only place that knows the mesh axes ``data``, ``fsdp`` and ``tensor``. A logical axis maps to
one mesh axis, several mesh axes, or ``None`` (replicated).

Two rules keep any model shardable on any mesh:

* a mesh axis is used at most once per array (the first logical axis that asks for it wins), so
  activations ``(batch, length, embed)`` put ``fsdp`` on the batch and leave ``embed`` whole;
* a mesh axis whose size does not divide the dimension is dropped for that array (InternViT-6B
  has 25 heads, Qwen2.5-7B 28), so the array is replicated along it instead of failing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Weights and activations share the table.
RULES: Mapping[str, tuple[str, ...]] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": (),
    "kv_length": (),
    # weights and the matching activation dims
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "norm": (),
    "patch": (),
    "positions": (),
    "layers": (),
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Shape of the device mesh; -1 on one axis means "all remaining devices"."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got {self}")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"{num_devices} devices cannot fill mesh {self}")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(f"mesh {self} needs {math.prod(sizes)} devices, have {num_devices}")
        return tuple(sizes)


def make_mesh(config: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices)."""
    config = config or MeshConfig()
    devices = list(devices) if devices is not None else jax.devices()
    shape = config.shape(len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Mapping[str, tuple[str, ...]] = RULES,
) -> PartitionSpec:
    """PartitionSpec for an array whose dims carry the logical names ``axes``.

    With ``shape`` and ``mesh`` given, mesh axes that do not divide a dim are dropped.
    """
    used: set[str] = set()
    spec: list[Any] = []
    for dim, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        chosen = []
        size = shape[dim] if shape is not None else None
        for mesh_axis in rules[name]:
            if mesh_axis in used:
                continue
            if mesh is not None:
                n = mesh.shape[mesh_axis]
                if n == 1:
                    continue
                denom = n * math.prod(mesh.shape[a] for a in chosen)
                if size is not None and size % denom:
                    continue
            chosen.append(mesh_axis)
        used.update(chosen)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Mapping[str, tuple[str, ...]] = RULES):
    """NamedSharding for every variable of an (abstract) NNX state, from its ``axes`` metadata."""

    def one(var):
        axes = var.get_metadata().get("axes")
        value = var.get_value()
        if axes is None:
            axes = (None,) * len(value.shape)
        if len(axes) != len(value.shape):
            raise ValueError(f"axes {axes} do not match shape {value.shape}")
        return var.replace(NamedSharding(mesh, logical_to_spec(axes, value.shape, mesh, rules)))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


# The mesh that activation constraints refer to. Set by ``use_mesh``; absent means no constraint,
# so the same model code runs unsharded in tests and eager debugging.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Mapping] | None] = contextvars.ContextVar(
    "sophia_jax_mesh", default=None
)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, rules: Mapping[str, tuple[str, ...]] = RULES) -> Iterator[None]:
    """Makes ``constrain`` shard activations over ``mesh`` inside the block."""
    token = _ACTIVE.set(None if mesh is None else (mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> tuple[Mesh, Mapping[str, tuple[str, ...]]] | None:
    """The (mesh, rules) of the enclosing ``use_mesh``, or None outside one."""
    return _ACTIVE.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical axes; a no-op outside ``use_mesh``."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(axes, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def create_sharded(constructor, mesh: Mesh | None, rules: Mapping[str, tuple[str, ...]] = RULES):
    """Builds the NNX module returned by ``constructor()`` with every parameter born sharded.

    The module is first traced abstractly to learn shapes and logical axes; the real
    initialiser then runs under ``jit`` with those output shardings, so no device ever holds a
    full replica of a sharded parameter. Without a mesh the module is built eagerly.
    """
    if mesh is None:
        return constructor()
    abstract = nnx.eval_shape(constructor)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    init = jax.jit(lambda: nnx.state(constructor()), out_shardings=shardings)
    with use_mesh(mesh, rules):
        state = init()
    return nnx.merge(graphdef, state)


def shard_module(module, mesh: Mesh, rules: Mapping[str, tuple[str, ...]] = RULES):
    """Moves the parameters of an existing module onto ``mesh`` by their logical axes."""
    graphdef, state = nnx.split(module)
    shardings = state_shardings(state, mesh, rules)
    state = jax.device_put(state, shardings)
    return nnx.merge(graphdef, state)
