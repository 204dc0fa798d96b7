"""Ahead-of-time compilation for a TPU slice you do not have: does a real model size fit?

With ``jax[tpu]`` (libtpu) installed, ``jax.experimental.topologies`` describes the devices of a
named slice (``v5p:2x2x2``) on any host, and ``jit(...).lower(...).compile()`` compiles for them.
We build the model abstractly (no weights), give every parameter its sharding from the logical
rules, and report XLA's per-device memory analysis and FLOP count for the compiled step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from sophia_jax import sharding
from sophia_jax.models import CausalLM, InternVL, RuntimeConfig
from sophia_jax.models.config import InternVLConfig


@dataclasses.dataclass(frozen=True)
class CompileReport:
    topology: str
    devices: int
    mesh: dict
    step: str
    argument_bytes: int  # per device
    output_bytes: int
    temp_bytes: int
    generated_code_bytes: int
    flops: float | None  # per device

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes + self.generated_code_bytes

    def summary(self) -> str:
        gib = 1 << 30
        flops = f"{self.flops / 1e12:.1f} TFLOP" if self.flops else "n/a"
        return (
            f"{self.step} on {self.topology} ({self.devices} devices, mesh {self.mesh}): per device "
            f"{self.total_bytes / gib:.2f} GiB = args {self.argument_bytes / gib:.2f} + out "
            f"{self.output_bytes / gib:.2f} + temp {self.temp_bytes / gib:.2f} + code "
            f"{self.generated_code_bytes / gib:.3f}; {flops} per device per step"
        )


def topology_devices(topology: str) -> list:
    """Devices of a named TPU slice such as ``v5p:2x2x2`` (needs libtpu); ``local`` = this host's."""
    from jax.experimental import topologies

    if topology == "local":
        return jax.devices()
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)


def abstract_state(model_fn, mesh):
    """(graphdef, state of ShapeDtypeStructs carrying their NamedShardings)."""
    graphdef, state = nnx.split(nnx.eval_shape(model_fn))
    shardings = sharding.state_shardings(state, mesh)
    state = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), state, shardings,
    )
    return graphdef, state


def compile_forward(
    config, runtime: RuntimeConfig, topology: str, mesh_config: sharding.MeshConfig, batch: int, length: int,
    tiles_per_row: int = 1,
) -> CompileReport:
    """Compiles one forward pass (logits) of ``batch`` rows of ``length`` tokens."""
    devices = topology_devices(topology)
    mesh = sharding.make_mesh(mesh_config, devices)
    multimodal = isinstance(config, InternVLConfig)
    cls = InternVL if multimodal else CausalLM
    graphdef, state = abstract_state(lambda: cls(config, runtime, rngs=nnx.Rngs(0)), mesh)

    def spec(shape, axes, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, sharding.logical_to_spec(axes, shape, mesh)))

    ids = spec((batch, length), ("batch", "length"), jnp.int32)
    mask = spec((batch, length), ("batch", "length"), jnp.bool_)
    args = [state, ids, mask]
    if multimodal:
        size = config.vision.image_size
        args.append(spec((batch * tiles_per_row, 3, size, size), ("batch", None, None, None), runtime.compute_dtype))

    def forward(state, ids, mask, pixels=None):
        with sharding.use_mesh(mesh):
            model = nnx.merge(graphdef, state)
            if pixels is None:
                return model(ids, mask)
            return model(ids, pixels, mask)

    compiled = jax.jit(forward).lower(*args).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return CompileReport(
        topology=topology,
        devices=len(devices),
        mesh=dict(mesh.shape),
        step=f"forward B={batch} L={length}" + (f" tiles={batch * tiles_per_row}" if multimodal else ""),
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        generated_code_bytes=int(memory.generated_code_size_in_bytes),
        flops=float(cost.get("flops", np.nan)) if cost else None,
    )
