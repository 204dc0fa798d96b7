"""OpenGVLab tensor names mapped onto canonical transformers names, one tensor at a time.

The original ``InternVLChatModel`` stores ``vision_model.*`` (fused ``attn.qkv``, ``ls1``/``ls2``,
``norm1``/``norm2``), ``mlp1.{0,1,3}`` and ``language_model.*``; an InternLM2 language model
packs q/k/v into ``wqkv`` grouped per KV head and uses its own module names. Each function here
takes one on-disk name and shape and returns the canonical tensors it holds as
``(canonical name, shape, piece)``, where ``piece`` cuts the canonical tensor out of the source
tensor (``None``: the tensor is used as is). Names that are not recognised come back unchanged,
so the rule table reports them as unexpected with their on-disk name.

Raises ``ValueError`` when a fused tensor cannot be split with the config's sizes.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

import numpy as np

from sophia_jax.models.config import InternVLConfig, TextConfig

Piece = Optional[Callable[[np.ndarray], np.ndarray]]
Mapped = list[tuple[str, tuple[int, ...], Piece]]

_VISION_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)$")
_VISION_EMBEDDINGS = {
    "vision_model.embeddings.class_embedding": "embeddings.cls_token",
    "vision_model.embeddings.position_embedding": "embeddings.position_embeddings",
    "vision_model.embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "vision_model.embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
}
# Per-layer suffixes, original -> transformers (the fused attn.qkv is handled separately).
_VISION_LAYER_NAMES = {
    "ls1": "lambda_1",
    "ls2": "lambda_2",
    "attn.proj.weight": "attention.projection_layer.weight",
    "attn.proj.bias": "attention.projection_layer.bias",
    "attn.q_norm.weight": "attention.q_norm.weight",
    "attn.k_norm.weight": "attention.k_norm.weight",
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_PROJECTOR = {"mlp1.0": "layer_norm", "mlp1.1": "linear_1", "mlp1.3": "linear_2"}
# InternLM2 module names -> Llama names (within one decoder layer, and at the model level).
_INTERNLM2_LAYER = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LM_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def _rows(start: int, stop: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda w: w[start:stop]


def split_vision_qkv(prefix: str, suffix: str, shape: tuple[int, ...], hidden: int) -> Mapped:
    """attn.qkv rows are [q; k; v], each ``hidden`` rows (heads concatenated)."""
    if shape[0] != 3 * hidden:
        raise ValueError(f"fused qkv has {shape[0]} rows, expected 3 x hidden_size = {3 * hidden}")
    rest = tuple(shape[1:])
    return [
        (f"{prefix}.attention.{name}_proj.{suffix}", (hidden, *rest), _rows(i * hidden, (i + 1) * hidden))
        for i, name in enumerate("qkv")
    ]


def split_wqkv(prefix: str, suffix: str, shape: tuple[int, ...], text: TextConfig) -> Mapped:
    """InternLM2 ``wqkv``: rows grouped per KV head as [q_0 .. q_{G-1}, k, v], each head_dim rows."""
    n, k, h = text.num_heads, text.num_kv_heads, text.head_dim
    g = n // k
    if shape[0] != (n + 2 * k) * h:
        raise ValueError(
            f"packed wqkv has {shape[0]} rows, expected (heads + 2 x kv_heads) x head_dim = {(n + 2 * k) * h}"
        )
    rest = tuple(shape[1:])

    def part(select, rows):
        return lambda w: w.reshape(k, g + 2, h, *rest)[:, select].reshape(rows, *rest)

    return [
        (f"{prefix}.self_attn.q_proj.{suffix}", (n * h, *rest), part(slice(0, g), n * h)),
        (f"{prefix}.self_attn.k_proj.{suffix}", (k * h, *rest), part(g, k * h)),
        (f"{prefix}.self_attn.v_proj.{suffix}", (k * h, *rest), part(g + 1, k * h)),
    ]


def causal_lm_tensor(name: str, shape: tuple[int, ...], text: TextConfig) -> Mapped:
    """A causal LM's tensor (``model.*``, ``lm_head``/``output``) under transformers Llama names."""
    if text.architecture != "internlm2":
        return [(name, shape, None)]
    if name == "output.weight":
        return [("lm_head.weight", shape, None)]
    if name == "model.tok_embeddings.weight":
        return [("model.embed_tokens.weight", shape, None)]
    match = _LM_LAYER.match(name)
    if not match:
        return [(name, shape, None)]
    layer, module, suffix = match.groups()
    prefix = f"model.layers.{layer}"
    if module == "attention.wqkv":
        return split_wqkv(prefix, suffix, shape, text)
    if module in _INTERNLM2_LAYER:
        return [(f"{prefix}.{_INTERNLM2_LAYER[module]}.{suffix}", shape, None)]
    return [(name, shape, None)]


def internvl_tensor(name: str, shape: tuple[int, ...], config: InternVLConfig) -> Mapped:
    """One tensor of an original ``InternVLChatModel`` under canonical transformers names."""
    vision = "model.vision_tower"
    if name in _VISION_EMBEDDINGS:
        return [(f"{vision}.{_VISION_EMBEDDINGS[name]}", shape, None)]
    match = _VISION_LAYER.match(name)
    if match:
        layer, rest = match.groups()
        prefix = f"{vision}.encoder.layer.{layer}"
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            return split_vision_qkv(prefix, rest.rsplit(".", 1)[1], shape, config.vision.hidden_size)
        if rest in _VISION_LAYER_NAMES:
            return [(f"{prefix}.{_VISION_LAYER_NAMES[rest]}", shape, None)]
        return [(name, shape, None)]
    module, _, suffix = name.rpartition(".")
    if module in _PROJECTOR:
        return [(f"model.multi_modal_projector.{_PROJECTOR[module]}.{suffix}", shape, None)]
    if name.startswith("language_model."):
        mapped = []
        for lm_name, lm_shape, piece in causal_lm_tensor(name[len("language_model."):], shape, config.text):
            if lm_name.startswith("model."):
                lm_name = "model.language_model." + lm_name[len("model."):]
            mapped.append((lm_name, lm_shape, piece))
        return mapped
    return [(name, shape, None)]
