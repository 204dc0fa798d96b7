"""Typed model configs: what a checkpoint's architecture is, kept apart from how we run it.

``VisionConfig``, ``TextConfig`` and ``InternVLConfig`` describe architectures (the numbers in a
checkpoint's config.json). ``RuntimeConfig`` says how to run them (dtypes, attention kernel,
rematerialisation). All are frozen dataclasses that round-trip through plain dicts, so they can
live inside ml_collections experiment configs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

import jax.numpy as jnp

VOCAB_MULTIPLE = 128  # vocabularies are padded to this for even sharding of embed / lm_head


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind`` is one of default, linear, dynamic, llama3."""

    kind: Literal["default", "linear", "dynamic", "llama3"] = "default"
    factor: float = 1.0
    # llama3 only
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """InternViT. The 300M variant uses LayerNorm + qkv bias; the 6B variant RMSNorm + qk-norm."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    norm_type: Literal["layer_norm", "rms_norm"] = "layer_norm"
    norm_eps: float = 1e-6
    qkv_bias: bool = True
    qk_norm: bool = False  # RMSNorm over all heads together, before the head split
    select_layer: int = -1  # index into [embeddings, layer_1, ..., layer_L]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """A Llama-style decoder; Qwen2, InternLM2 (as llama), Llama and Qwen3 are flag settings."""

    vocab_size: int = 151674
    hidden_size: int = 3584
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int = 128
    intermediate_size: int = 18944
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 32768
    qkv_bias: bool = True  # Qwen2: q/k/v bias, no o bias
    qk_norm: bool = False  # Qwen3: per-head RMSNorm on q and k before RoPE
    tie_word_embeddings: bool = False
    architecture: str = "qwen2"  # informational: qwen2, llama, internlm2, qwen3

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


@dataclasses.dataclass(frozen=True)
class InternVLConfig:
    """InternViT -> pixel shuffle -> mlp1 projector -> decoder LM."""

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    image_token_id: int = 151667
    downsample_ratio: float = 0.5
    ps_version: Literal["v1", "v2"] = "v2"
    projector_norm_eps: float = 1e-5  # PyTorch LayerNorm default, not the ViT's 1e-6

    @property
    def tokens_per_tile(self) -> int:
        return int(self.vision.grid * self.downsample_ratio) ** 2


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How to run a model; independent of the checkpoint."""

    dtype: str = "float32"  # activations / compute
    param_dtype: str = "float32"  # stored weights
    # fused = jax.nn.dot_product_attention; splash = JAX's Pallas TPU kernel (decoder, full-sequence
    # passes: training and scoring; the vision encoder and the sampler keep 'xla').
    attention: Literal["xla", "fused", "splash"] = "xla"
    # Rematerialise each decoder layer in the backward pass: False / "none", True / "full" (keep
    # only layer inputs), or "dots" (also keep matmul outputs without batch dims: less recompute,
    # more memory).
    remat: bool | str = False
    # Decoder layers as one module with stacked [num_layers, ...] parameters run by ``lax.scan``:
    # one compiled layer instead of num_layers copies (64-layer models compile in a fraction of
    # the time). Full-sequence passes only (training, scoring); the sampler runs unrolled models.
    # Checkpoints always store per-layer parameters (``checkpoint.load`` / ``save`` convert).
    scan_layers: bool = False

    @property
    def remat_policy(self) -> str:
        policy = {False: "none", True: "full"}.get(self.remat, self.remat)
        if policy not in ("none", "full", "dots"):
            raise ValueError(f"unknown remat policy {self.remat!r}; expected 'none', 'full' or 'dots'")
        return policy

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)


def to_dict(config: Any) -> dict:
    """A plain nested dict of any config dataclass."""
    return dataclasses.asdict(config)


def _build(cls, data: Mapping[str, Any]):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        default = names[key].default
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = _build(type(default), value)
        kwargs[key] = value
    return cls(**kwargs)


def vision_config(data: Mapping[str, Any]) -> VisionConfig:
    return _build(VisionConfig, data)


def text_config(data: Mapping[str, Any]) -> TextConfig:
    return _build(TextConfig, data)


def internvl_config(data: Mapping[str, Any]) -> InternVLConfig:
    return _build(InternVLConfig, data)


def runtime_config(data: Mapping[str, Any]) -> RuntimeConfig:
    return _build(RuntimeConfig, data)
