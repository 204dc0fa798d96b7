"""Config for ``sophia-jax export``: our checkpoint -> a transformers directory.

    sophia-jax export --config.checkpoint=/ckpt/run7/final --config.out=/ckpt/run7/final-hf
"""

from __future__ import annotations

import ml_collections

from sophia_jax.configs.loading import unknown_variant


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.checkpoint = ""  # our checkpoint directory, from convert or training (required)
    cfg.out = ""  # output transformers directory; must not exist unless overwrite (required)
    cfg.dtype = ""  # bfloat16 or float32 ('' = the stored dtype)
    cfg.max_shard_gb = 5.0  # largest safetensors file, GiB
    cfg.overwrite = False  # replace an existing output directory
    cfg.progress = True  # progress lines on stderr
    if arg:
        raise unknown_variant("export", arg, ("",))
    return cfg
