"""Flax NNX ports of InternVL (InternViT + mlp1 + decoder LM) and the text decoders."""

from sophia_jax.models.config import (
    InternVLConfig,
    RopeScaling,
    RuntimeConfig,
    TextConfig,
    VisionConfig,
)
from sophia_jax.models.decoder import CausalLM, LayerCache, init_cache
from sophia_jax.models.internvit import InternViT
from sophia_jax.models.internvl import InternVL, pixel_shuffle

__all__ = [
    "CausalLM",
    "InternVL",
    "InternVLConfig",
    "InternViT",
    "LayerCache",
    "RopeScaling",
    "RuntimeConfig",
    "TextConfig",
    "VisionConfig",
    "init_cache",
    "pixel_shuffle",
]
