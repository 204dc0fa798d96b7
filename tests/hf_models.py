"""Tiny random transformers models (no downloads) that serve as parity references.

Every parameter is perturbed with noise, because the default init leaves layer scales, CLS and
position embeddings and norm weights at trivial values that would hide mapping bugs.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

IMAGE_TOKEN = 500
VOCAB = 512


def _perturb(model, seed: int):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def vision_config(style: str) -> transformers.InternVLVisionConfig:
    """'300m': LayerNorm + qkv bias; '6b': RMSNorm + qk-norm, no qkv bias."""
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  image_size=56, patch_size=14)
    if style == "300m":
        return transformers.InternVLVisionConfig(norm_type="layer_norm", use_qk_norm=False, attention_bias=True, **common)
    if style == "6b":
        return transformers.InternVLVisionConfig(norm_type="rms_norm", use_qk_norm=True, attention_bias=False, **common)
    raise ValueError(style)


def text_config(family: str):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False)
    if family == "qwen2":
        return transformers.Qwen2Config(rope_theta=1e6, rms_norm_eps=1e-6, **common)
    if family == "llama":  # how transformers stores InternLM2-based InternVL
        return transformers.LlamaConfig(rope_theta=1e6, rms_norm_eps=1e-5, **common)
    if family == "qwen3":
        return transformers.Qwen3Config(head_dim=32, rope_theta=1e6, rms_norm_eps=1e-6, **common)
    raise ValueError(family)


def internvl(vision_style: str, text_family: str, seed: int = 0):
    cfg = transformers.InternVLConfig(
        vision_config=vision_config(vision_style), text_config=text_config(text_family),
        image_token_id=IMAGE_TOKEN, image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.InternVLForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    return _perturb(model, seed)


def causal_lm(family: str, seed: int = 0, **overrides):
    cfg = text_config(family)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cls = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM,
           "qwen3": transformers.Qwen3ForCausalLM}[family]
    torch.manual_seed(seed)
    return _perturb(cls._from_config(cfg, attn_implementation="eager"), seed)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def multimodal_batch(seed: int = 0):
    """Two images (3 tiles and 1 tile), a text-only row, right padding.

    Returns input_ids int32[3, L], attention_mask int32[3, L], pixel_values float32[4, 3, 56, 56].
    """
    rng = np.random.default_rng(seed)
    tokens_per_tile = 4
    rows = [
        [11, 12] + [IMAGE_TOKEN] * (3 * tokens_per_tile) + [13, 14, 15],
        [21] + [IMAGE_TOKEN] * tokens_per_tile + [22, 23],
        [31, 32, 33, 34, 35, 36],
    ]
    length = max(map(len, rows))
    ids = np.zeros((3, length), np.int32)
    mask = np.zeros((3, length), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    pixels = rng.standard_normal((4, 3, 56, 56)).astype(np.float32)
    return ids, mask, pixels


def torch_logits(model, input_ids, attention_mask, pixel_values=None) -> np.ndarray:
    with torch.no_grad():
        kwargs = dict(input_ids=torch.tensor(input_ids, dtype=torch.long),
                      attention_mask=torch.tensor(attention_mask, dtype=torch.long))
        if pixel_values is not None:
            kwargs["pixel_values"] = torch.tensor(pixel_values)
        return model(**kwargs).logits.float().numpy()
