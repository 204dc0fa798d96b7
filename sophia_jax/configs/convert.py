"""Config for ``sophia-jax convert``: a Hugging Face checkpoint directory -> our checkpoint.

    sophia-jax convert --config.hf_dir=/ckpt/InternVL3-8B --config.out=/ckpt/internvl3-8b-orbax
"""

from __future__ import annotations

import ml_collections

from sophia_jax.configs.loading import unknown_variant


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.hf_dir = ""  # Hugging Face checkpoint directory: config.json + safetensors (required)
    cfg.out = ""  # output checkpoint directory; must not exist unless overwrite (required)
    cfg.dtype = "bfloat16"  # stored parameter dtype: bfloat16 or float32
    cfg.overwrite = False  # replace an existing output directory
    cfg.progress = True  # progress lines on stderr
    if arg:
        raise unknown_variant("convert", arg, ("",))
    return cfg
