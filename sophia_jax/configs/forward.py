"""Config for ``sophia-jax forward``: one jitted forward pass of a model preset.

    sophia-jax forward --config.preset=tiny --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2
"""

from __future__ import annotations

import ml_collections

from sophia_jax.configs.generate import mesh
from sophia_jax.configs.loading import unknown_variant


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.preset = "tiny"  # an InternVL model preset of sophia_jax.configs.models (random weights)
    cfg.seq = 64  # tokens per row of the 3-row batch
    cfg.dtype = "float32"  # compute dtype: float32 or bfloat16
    cfg.attention = "xla"  # attention kernel: xla or fused
    cfg.steps = 3  # timed forward passes after compilation
    cfg.mesh = mesh()  # data, fsdp, tensor sizes; -1 = all remaining devices
    if arg:
        raise unknown_variant("forward", arg, ("",))
    return cfg
