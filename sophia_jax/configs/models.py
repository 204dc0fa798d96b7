"""Model presets: the four SOPHIA base models, the QwQ-32B-size reasoner and tiny variants for tests
and CPU demos.

``get_config("internvl3_8b")`` returns an ml_collections ConfigDict with sections ``model``
(architecture, as in the checkpoint), ``runtime`` (dtypes, attention kernel) and ``mesh``.
``build_model(config, mesh)`` turns it into an NNX module with parameters born sharded.

Numbers come from the released config.json files (see shared/docs/internvl-reference.md).
"""

from __future__ import annotations

import dataclasses

import ml_collections
from flax import nnx

from sophia_jax import sharding
from sophia_jax.configs.loading import ConfigFileError
from sophia_jax.models import config as mc
from sophia_jax.models.config import InternVLConfig, RopeScaling, RuntimeConfig, TextConfig, VisionConfig

VIT_300M = VisionConfig(
    hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
    norm_type="layer_norm", qkv_bias=True, qk_norm=False,
)
# InternVL keeps 45 of InternViT-6B's 48 layers (the output after block 45 is used).
VIT_6B = VisionConfig(
    hidden_size=3200, num_layers=45, num_heads=25, intermediate_size=12800,
    norm_type="rms_norm", qkv_bias=False, qk_norm=True,
)
DYNAMIC_X2 = RopeScaling(kind="dynamic", factor=2.0)
QWEN25_7B = TextConfig(
    vocab_size=151674, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
    intermediate_size=18944, rms_norm_eps=1e-6, rope_theta=1e6, rope_scaling=DYNAMIC_X2, qkv_bias=True,
    architecture="qwen2",
)
QWEN25_32B = dataclasses.replace(
    QWEN25_7B, hidden_size=5120, num_layers=64, num_heads=40, num_kv_heads=8, intermediate_size=27648,
)
# The reasoner's size: QwQ-32B is a Qwen2 decoder of Qwen2.5-32B's shape with a 152,064-entry
# vocabulary and plain RoPE. For sizing (``sophia-jax aot``); a checkpoint brings its own config.json.
QWQ_32B = dataclasses.replace(QWEN25_32B, vocab_size=152064, rope_scaling=RopeScaling())
INTERNLM25_7B = TextConfig(
    vocab_size=92553, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
    intermediate_size=14336, rms_norm_eps=1e-5, rope_theta=1e6, rope_scaling=DYNAMIC_X2, qkv_bias=False,
    architecture="internlm2",
)
QWEN_IMAGE_TOKEN, INTERNLM_IMAGE_TOKEN = 151667, 92546

# Tiny models: 56-pixel tiles (4 tokens per tile), 2 layers, width 64, vocab 512.
_TINY_VIT = VisionConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, image_size=56)
_TINY_TEXT = TextConfig(
    vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
    intermediate_size=128, max_position_embeddings=4096, architecture="qwen2",
)

PRESETS: dict[str, InternVLConfig | TextConfig] = {
    "internvl2_5_8b": InternVLConfig(vision=VIT_300M, text=INTERNLM25_7B, image_token_id=INTERNLM_IMAGE_TOKEN),
    "internvl2_5_38b": InternVLConfig(vision=VIT_6B, text=QWEN25_32B, image_token_id=QWEN_IMAGE_TOKEN),
    "internvl3_8b": InternVLConfig(vision=VIT_300M, text=QWEN25_7B, image_token_id=QWEN_IMAGE_TOKEN),
    "internvl3_38b": InternVLConfig(vision=VIT_6B, text=QWEN25_32B, image_token_id=QWEN_IMAGE_TOKEN),
    "qwq_32b": QWQ_32B,
    "tiny": InternVLConfig(vision=_TINY_VIT, text=_TINY_TEXT, image_token_id=500),
    "tiny_6b": InternVLConfig(
        vision=dataclasses.replace(_TINY_VIT, norm_type="rms_norm", qkv_bias=False, qk_norm=True),
        text=_TINY_TEXT, image_token_id=500,
    ),
    "tiny_internlm2": InternVLConfig(
        vision=_TINY_VIT,
        text=dataclasses.replace(_TINY_TEXT, qkv_bias=False, rms_norm_eps=1e-5, architecture="internlm2"),
        image_token_id=500,
    ),
    "tiny_qwen3": dataclasses.replace(_TINY_TEXT, qkv_bias=False, qk_norm=True, head_dim=32, architecture="qwen3"),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Preset by name; unknown names list the known ones."""
    if arg not in PRESETS:
        raise ConfigFileError(f"unknown model preset {arg!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[arg]
    cfg = ml_collections.ConfigDict()
    cfg.name = arg
    cfg.kind = "internvl" if isinstance(preset, InternVLConfig) else "causal_lm"  # which model class
    cfg.model = mc.to_dict(preset)  # architecture, as in the checkpoint's config.json
    cfg.runtime = mc.to_dict(RuntimeConfig())  # dtypes and attention kernel
    cfg.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # -1: all remaining devices
    return cfg


def model_config(cfg: ml_collections.ConfigDict) -> InternVLConfig | TextConfig:
    data = cfg.model.to_dict() if isinstance(cfg.model, ml_collections.ConfigDict) else dict(cfg.model)
    return mc.internvl_config(data) if cfg.kind == "internvl" else mc.text_config(data)


def build_model(cfg: ml_collections.ConfigDict, mesh=None, seed: int = 0) -> nnx.Module:
    """Randomly initialised model for ``cfg``, parameters born sharded on ``mesh``."""
    from sophia_jax.models import CausalLM, InternVL

    arch = model_config(cfg)
    runtime = mc.runtime_config(cfg.runtime.to_dict())
    cls = InternVL if cfg.kind == "internvl" else CausalLM
    return sharding.create_sharded(lambda: cls(arch, runtime, rngs=nnx.Rngs(seed)), mesh)
