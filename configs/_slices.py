"""Slice and model facts shared by every experiment config in configs/ (stage x model x slice).

An experiment file is ``<stage>_<model>_<slice>.py`` and calls ``experiment(stage, model, slice)``,
which loads the package's built-in stage config and applies the per-slice, per-model settings below.
"""

from __future__ import annotations

import importlib

# chips per host and HBM per chip (GiB); the generate stage samples on each host's own chips.
# topology: the name `sophia-jax aot` compiles the train step for (v5p-64 counts TensorCores: 32
# chips); host_topology: one host's chips, which it compiles the sampler's programs for.
SLICES = {
    "v5p-64": {"chips_per_host": 4, "hbm_gib": 95, "hosts": 8, "topology": "v5p:2x4x4", "host_topology": "v5p:2x2x1"},
    "v6e-32": {"chips_per_host": 4, "hbm_gib": 32, "hosts": 8, "topology": "v6e:4x8", "host_topology": "v6e:2x2"},
}

# train / warmup: FSDP over every chip, one 32,768-token packed row per chip per micro-batch
# (micro_rows = chips), so the paper's 512 rows are 16 accumulated micro-batches on 32 chips.
# Layers under scan, full remat and the splash kernel are the TPU defaults of configs/train.py.

# Per (model, slice) for generate: the tensor-parallel width a model copy needs on one host,
# decode rows per batch and image tiles per prefill batch. 38B in bf16 is ~76 GB of weights.
GENERATE = {
    ("internvl2_5_8b", "v5p-64"): {"tensor": 1, "batch_size": 128, "tile_budget": 64},
    ("internvl2_5_8b", "v6e-32"): {"tensor": 2, "batch_size": 64, "tile_budget": 32},
    ("internvl3_8b", "v5p-64"): {"tensor": 1, "batch_size": 128, "tile_budget": 64},
    ("internvl3_8b", "v6e-32"): {"tensor": 2, "batch_size": 64, "tile_budget": 32},
    ("internvl2_5_38b", "v5p-64"): {"tensor": 4, "batch_size": 64, "tile_budget": 32},
    ("internvl2_5_38b", "v6e-32"): {"tensor": 4, "batch_size": 16, "tile_budget": 16},
    ("internvl3_38b", "v5p-64"): {"tensor": 4, "batch_size": 64, "tile_budget": 32},
    ("internvl3_38b", "v6e-32"): {"tensor": 4, "batch_size": 16, "tile_budget": 16},
}


def experiment(stage: str, model: str, slice_name: str):
    cfg = importlib.import_module(f"sophia_jax.configs.{stage}").get_config()
    facts = SLICES[slice_name]
    if stage == "generate":
        g = GENERATE[(model, slice_name)]
        cfg.mesh.tensor = g["tensor"]
        cfg.mesh.fsdp = facts["chips_per_host"] // g["tensor"]
        cfg.sampler.batch_size = g["batch_size"]
        cfg.sampler.tile_budget = g["tile_budget"]
        cfg.sampler.cache_dtype = "bfloat16"
        cfg.attention = "fused"  # the TPU paged-attention kernel in decode
        cfg.policy.name = model
        cfg.aot.topology, cfg.aot.policy = facts["host_topology"], model  # what `sophia-jax aot` compiles for
    elif stage in ("train", "warmup"):
        chips = facts["chips_per_host"] * facts["hosts"]
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, chips, 1
        cfg.train.micro_rows = chips
        cfg.aot.topology, cfg.aot.model = facts["topology"], model  # what `sophia-jax aot` compiles for
    else:
        raise ValueError(f"no slice settings for stage {stage!r}")
    return cfg
