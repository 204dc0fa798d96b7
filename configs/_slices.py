"""Slice and model facts shared by every experiment config in configs/ (stage x model x slice).

An experiment file is ``<stage>_<model>_<slice>.py`` and calls ``experiment(stage, model, slice)``,
which loads the package's built-in stage config and applies the per-slice, per-model settings below.
"""

from __future__ import annotations

import importlib

# chips per host and HBM per chip (GiB); the generate stage samples on each host's own chips.
# topology: the name `sophia-jax aot` compiles the train step for (v5p-64 counts TensorCores: 32
# chips); host_topology: one host's chips, which it compiles the sampler's programs for. Multi-host
# v6e slices are made of 4-chip hosts; v6e-8 is the one 8-chip host.
SLICES = {
    "v5p-64": {"chips_per_host": 4, "hbm_gib": 95, "hosts": 8, "topology": "v5p:2x4x4", "host_topology": "v5p:2x2x1"},
    "v6e-32": {"chips_per_host": 4, "hbm_gib": 32, "hosts": 8, "topology": "v6e:4x8", "host_topology": "v6e:2x2"},
    "v6e-8": {"chips_per_host": 8, "hbm_gib": 32, "hosts": 1, "topology": "v6e:2x4", "host_topology": "v6e:2x4"},
    "v6e-64": {"chips_per_host": 4, "hbm_gib": 32, "hosts": 16, "topology": "v6e:8x8", "host_topology": "v6e:2x2"},
}

# train / warmup: FSDP over every chip, one packed row per chip per micro-batch (micro_rows =
# chips); rows of 32,768 tokens, so the paper's 512 rows are 16 accumulated micro-batches on 32
# chips. Layers under scan, full remat and the splash kernel are the TPU defaults of configs/train.py.
# A 38B step keeps ~43 GiB of temporaries per 32,768-token row (the 64 remat'd layer inputs alone are
# 20 GiB), more than a v6e chip holds at any slice size, so the 38B models train on v6e in rows
# of 8,192 tokens, four times as many per step (the same tokens), on a v6e-64 (23.1 of 32 GiB per
# chip; 32.9 GiB on 32 chips).
TRAIN_SEQ_LEN = {("internvl2_5_38b", "v6e-64"): 8192, ("internvl3_38b", "v6e-64"): 8192}
PAPER_TOKENS_PER_STEP = 512 * 32768

# generate holds the policy and the QwQ-32B-size reasoner at once, each with a KV pool of
# kv_budget tokens, on one host: bf16 weights of ~16 + 65 GB (8B) or ~76 + 65 GB (38B). Every chip
# of the host is a tensor shard (the pool is split by KV heads only, so fsdp would replicate it).
# Per (model, slice): decode rows, image tiles per prefill and kv_budget, which with the weights
# leave the prefill its temporaries (`sophia-jax aot` on the config prints the totals). KV bytes per
# token, bf16: QwQ-32B and the 38B policies 256 KiB (64 layers x 8 KV heads x 128 x 2 x 2 bytes),
# InternVL2.5-8B 128 KiB, InternVL3-8B 56 KiB. The 38B pair does not fit a 4-chip v6e host
# (128 GiB), so its v6e generate runs on a v6e-8.
GENERATE = {
    ("internvl2_5_8b", "v5p-64"): {"batch_size": 128, "tile_budget": 64, "kv_budget": 524288},
    ("internvl2_5_8b", "v6e-32"): {"batch_size": 32, "tile_budget": 16, "kv_budget": 65536},
    ("internvl3_8b", "v5p-64"): {"batch_size": 128, "tile_budget": 64, "kv_budget": 524288},
    ("internvl3_8b", "v6e-32"): {"batch_size": 32, "tile_budget": 32, "kv_budget": 98304},
    ("internvl2_5_38b", "v5p-64"): {"batch_size": 64, "tile_budget": 32, "kv_budget": 262144},
    ("internvl2_5_38b", "v6e-8"): {"batch_size": 32, "tile_budget": 32, "kv_budget": 98304},
    ("internvl3_38b", "v5p-64"): {"batch_size": 64, "tile_budget": 32, "kv_budget": 262144},
    ("internvl3_38b", "v6e-8"): {"batch_size": 32, "tile_budget": 32, "kv_budget": 98304},
}

# eval holds the policy alone on one host, every chip a tensor shard: decode rows and kv_budget per
# (model, slice) as for generate (KV bytes per token above), image tiles per prefill = the tiles a
# question's images share (images.total_tiles). On a v6e host the 38B policy's ~19 GiB of weights
# per chip leave room for 32 tiles of InternViT-6B prefill, not the default 64.
EVAL = {
    ("internvl2_5_8b", "v5p-64"): {"batch_size": 128, "tile_budget": 64, "kv_budget": 1048576},
    ("internvl2_5_8b", "v6e-32"): {"batch_size": 64, "tile_budget": 64, "kv_budget": 393216},
    ("internvl3_8b", "v5p-64"): {"batch_size": 128, "tile_budget": 64, "kv_budget": 1048576},
    ("internvl3_8b", "v6e-32"): {"batch_size": 64, "tile_budget": 64, "kv_budget": 786432},
    ("internvl2_5_38b", "v5p-64"): {"batch_size": 64, "tile_budget": 64, "kv_budget": 524288},
    ("internvl2_5_38b", "v6e-32"): {"batch_size": 32, "tile_budget": 32, "kv_budget": 65536},
    ("internvl3_38b", "v5p-64"): {"batch_size": 64, "tile_budget": 64, "kv_budget": 524288},
    ("internvl3_38b", "v6e-32"): {"batch_size": 32, "tile_budget": 32, "kv_budget": 65536},
}


def _one_host_sampler(cfg, facts: dict, settings: dict) -> None:
    """generate's and eval's sampler on one host: every chip a tensor shard, bf16 KV, the fused
    decode kernel, and the (model, slice) table's rows, tiles and KV budget."""
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 1, facts["chips_per_host"]
    for key in ("batch_size", "tile_budget", "kv_budget"):
        cfg.sampler[key] = settings[key]
    cfg.sampler.cache_dtype = "bfloat16"
    cfg.attention = "fused"  # the TPU paged-attention kernel in decode


def experiment(stage: str, model: str, slice_name: str):
    cfg = importlib.import_module(f"sophia_jax.configs.{stage}").get_config()
    facts = SLICES[slice_name]
    if stage == "generate":
        _one_host_sampler(cfg, facts, GENERATE[(model, slice_name)])
        cfg.policy.name = model
        cfg.aot.topology, cfg.aot.policy = facts["host_topology"], model  # what `sophia-jax aot` compiles for
    elif stage == "eval":
        _one_host_sampler(cfg, facts, EVAL[(model, slice_name)])
        cfg.images.total_tiles = cfg.sampler.tile_budget  # a question's tiles are prefilled together
    elif stage in ("train", "warmup"):
        chips = facts["chips_per_host"] * facts["hosts"]
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, chips, 1
        cfg.train.micro_rows = chips
        cfg.data.seq_len = TRAIN_SEQ_LEN.get((model, slice_name), 32768)
        cfg.train.global_rows = PAPER_TOKENS_PER_STEP // cfg.data.seq_len
        # The loss's vocabulary chunks are global (strided over every chip): 1,024 tokens per chip
        # keeps each chip's [tokens, vocab] logits matmul compute-bound (at the default 2,048 a
        # chip gets 64 tokens and rereads the head for each) in ~620 MB of f32 logits.
        cfg.loss.chunk_tokens = chips * 1024
        cfg.aot.topology, cfg.aot.model = facts["topology"], model  # what `sophia-jax aot` compiles for
    else:
        raise ValueError(f"no slice settings for stage {stage!r}")
    return cfg
