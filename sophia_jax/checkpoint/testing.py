"""Checkpoint directories in every layout we read, built from tensors alone (tests, benchmarks).

* ``original_internvl`` turns a transformers-native InternVL state dict and config into the
  OpenGVLab ``InternVLChatModel`` layout: fused ``attn.qkv``, ``ls1``/``norm1`` names, ``mlp1``,
  ``language_model.*``; for InternLM2 the q/k/v rows are packed into ``wqkv`` per KV head and the
  modules renamed, as ``modeling_internlm2.py`` stores them. Its config is the original
  ``internvl_chat`` JSON (``llm_config``, ``vision_config``, ``ps_version``, ...).
* ``write_tokenizer`` writes a small fast tokenizer with ``<IMG_CONTEXT>`` at a chosen id.
* ``write_random_causal_lm`` writes a Qwen2-style checkpoint of random bf16 tensors straight
  to safetensors shards, one tensor at a time (for the conversion memory benchmark).

No torch here: inputs are numpy arrays and plain dicts.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from sophia_jax.checkpoint import safetensors_io
from sophia_jax.checkpoint.keymap import canonical_hf_name, causal_lm_rules

# Canonical transformers vision names -> original, per encoder layer (q/k/v are fused apart).
_VISION_LAYER = {
    "lambda_1": "ls1", "lambda_2": "ls2",
    "attention.projection_layer.weight": "attn.proj.weight", "attention.projection_layer.bias": "attn.proj.bias",
    "attention.q_norm.weight": "attn.q_norm.weight", "attention.k_norm.weight": "attn.k_norm.weight",
    "layernorm_before.weight": "norm1.weight", "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight", "layernorm_after.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_VISION_EMBEDDINGS = {
    "cls_token": "class_embedding", "position_embeddings": "position_embedding",
    "patch_embeddings.projection.weight": "patch_embedding.weight",
    "patch_embeddings.projection.bias": "patch_embedding.bias",
}
_PROJECTOR = {"layer_norm": "mlp1.0", "linear_1": "mlp1.1", "linear_2": "mlp1.3"}
_INTERNLM2 = {
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}


def pack_wqkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_kv_heads: int, head_dim: int) -> np.ndarray:
    """[q_0..q_{G-1}, k, v] row groups per KV head, as InternLM2 stores ``wqkv``."""
    rest = q.shape[1:]
    g = q.shape[0] // (num_kv_heads * head_dim)
    groups = [
        q.reshape(num_kv_heads, g, head_dim, *rest),
        k.reshape(num_kv_heads, 1, head_dim, *rest),
        v.reshape(num_kv_heads, 1, head_dim, *rest),
    ]
    return np.concatenate(groups, axis=1).reshape(-1, *rest)


def _text_original(state: Mapping[str, np.ndarray], text: dict, family: str) -> dict[str, np.ndarray]:
    out = {}
    if family == "qwen2":
        for name, value in state.items():
            out["language_model." + name] = value
        return out
    kv, hd = text["num_key_value_heads"], text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    for name, value in state.items():
        if name == "lm_head.weight":
            out["language_model.output.weight"] = value
            continue
        if name == "model.embed_tokens.weight":
            out["language_model.model.tok_embeddings.weight"] = value
            continue
        parts = name.split(".")
        if parts[:2] != ["model", "layers"]:
            out["language_model." + name] = value
            continue
        prefix, module, suffix = ".".join(parts[:3]), ".".join(parts[3:-1]), parts[-1]
        if module == "self_attn.q_proj":
            get = lambda p: state[f"{prefix}.self_attn.{p}_proj.{suffix}"]  # noqa: E731
            out[f"language_model.{prefix}.attention.wqkv.{suffix}"] = pack_wqkv(get("q"), get("k"), get("v"), kv, hd)
        elif module in ("self_attn.k_proj", "self_attn.v_proj"):
            continue
        else:
            out[f"language_model.{prefix}.{_INTERNLM2[module]}.{suffix}"] = value
    return out


def original_internvl(
    state: Mapping[str, np.ndarray], native_config: dict, family: str, explicit_vision_defaults: bool = True
) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, config.json) of the original layout for a transformers InternVL model.

    ``family`` is 'qwen2' or 'internlm2' (the native model then has a Llama text config).
    ``explicit_vision_defaults=False`` leaves out norm_type / qkv_bias / qk_normalization when they
    equal the original class defaults (as the real 6B configs do).
    """
    state = {canonical_hf_name(k): np.asarray(v) for k, v in state.items()}
    vision_state, text_state, out = {}, {}, {}
    for name, value in state.items():
        if name.startswith("model.vision_tower."):
            vision_state[name[len("model.vision_tower."):]] = value
        elif name.startswith("model.multi_modal_projector."):
            module, suffix = name[len("model.multi_modal_projector."):].rsplit(".", 1)
            out[f"{_PROJECTOR[module]}.{suffix}"] = value
        elif name.startswith("model.language_model."):
            text_state["model." + name[len("model.language_model."):]] = value
        else:
            text_state[name] = value
    for name, value in vision_state.items():
        if name.startswith("embeddings."):
            out["vision_model.embeddings." + _VISION_EMBEDDINGS[name[len("embeddings."):]]] = value
            continue
        _, _, layer, rest = name.split(".", 3)
        prefix = f"vision_model.encoder.layers.{layer}"
        if rest.startswith("attention.q_proj."):
            suffix = rest.rsplit(".", 1)[1]
            fused = [vision_state[f"encoder.layer.{layer}.attention.{p}_proj.{suffix}"] for p in "qkv"]
            out[f"{prefix}.attn.qkv.{suffix}"] = np.concatenate(fused)
        elif not rest.startswith(("attention.k_proj.", "attention.v_proj.")):
            out[f"{prefix}.{_VISION_LAYER[rest]}"] = value
    text = dict(native_config["text_config"])
    out.update(_text_original(text_state, text, family))
    return out, original_config(native_config, family, explicit_vision_defaults)


def original_config(native: dict, family: str, explicit_vision_defaults: bool = True) -> dict:
    """The ``internvl_chat`` config.json for a transformers InternVL config dict."""
    v, t = native["vision_config"], native["text_config"]
    image_size = v["image_size"][0] if isinstance(v["image_size"], (list, tuple)) else v["image_size"]
    patch_size = v["patch_size"][0] if isinstance(v["patch_size"], (list, tuple)) else v["patch_size"]
    vision = {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": v["hidden_size"],
        "num_hidden_layers": v["num_hidden_layers"], "num_attention_heads": v["num_attention_heads"],
        "intermediate_size": v["intermediate_size"], "image_size": image_size, "patch_size": patch_size,
        "num_channels": 3, "layer_norm_eps": v["layer_norm_eps"], "hidden_act": "gelu", "drop_path_rate": 0.1,
    }
    flags = {"norm_type": v["norm_type"], "qkv_bias": v["attention_bias"], "qk_normalization": v["use_qk_norm"]}
    defaults = {"norm_type": "rms_norm", "qkv_bias": False, "qk_normalization": True}
    for key, value in flags.items():
        if explicit_vision_defaults or value != defaults[key]:
            vision[key] = value
    theta = (t.get("rope_parameters") or {}).get("rope_theta", t.get("rope_theta", 10000.0))
    llm = {
        "vocab_size": t["vocab_size"], "hidden_size": t["hidden_size"], "intermediate_size": t["intermediate_size"],
        "num_hidden_layers": t["num_hidden_layers"], "num_attention_heads": t["num_attention_heads"],
        "num_key_value_heads": t["num_key_value_heads"], "rms_norm_eps": t["rms_norm_eps"], "rope_theta": theta,
        "max_position_embeddings": t["max_position_embeddings"], "tie_word_embeddings": False,
        "bos_token_id": t.get("bos_token_id"), "eos_token_id": t.get("eos_token_id"),
    }
    if family == "qwen2":
        llm.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False)
    else:
        llm.update(architectures=["InternLM2ForCausalLM"], model_type="internlm2", bias=False,
                   rope_scaling={"type": "dynamic", "factor": 2.0})
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "internvl2_5",
        "downsample_ratio": native.get("downsample_ratio", 0.5), "force_image_size": image_size,
        "ps_version": "v2", "select_layer": -1, "dynamic_image_size": True, "max_dynamic_patch": 12,
        "vision_config": vision, "llm_config": llm,
    }


def write_checkpoint(directory: str, tensors: Mapping[str, np.ndarray], config: dict, max_shard_bytes: int = 5 << 30):
    os.makedirs(directory, exist_ok=True)
    safetensors_io.write_tensors(directory, tensors, max_shard_bytes)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def write_tokenizer(directory: str, image_token_id: int, chat_template: str | None = None) -> None:
    """The word-level test tokenizer with ``<IMG_CONTEXT>`` at ``image_token_id``."""
    from sophia_jax.sampling.testing import tiny_tokenizer

    tiny_tokenizer(image_token_id, chat_template=chat_template).save_pretrained(directory)


def write_random_causal_lm(directory: str, hf_config: dict, max_shard_bytes: int = 1 << 30, seed: int = 0) -> int:
    """A text-only checkpoint of random bf16 weights, written tensor by tensor; returns bytes.

    Values are small normal-ish bf16 numbers built from random bits (no float32 temporaries),
    so writing needs little more memory than one tensor.
    """
    from sophia_jax.models.hf_config import text_config_from_hf

    text = text_config_from_hf(hf_config)
    os.makedirs(directory, exist_ok=True)
    rules = [r for r in causal_lm_rules(text) if r.ours is not None]
    d, f, v = text.hidden_size, text.intermediate_size, text.vocab_size
    n, k, h = text.num_heads, text.num_kv_heads, text.head_dim
    shapes = {  # canonical transformers shapes
        "embed_tokens.weight": (v, d), "lm_head.weight": (v, d), "norm.weight": (d,),
        "q_proj.weight": (n * h, d), "k_proj.weight": (k * h, d), "v_proj.weight": (k * h, d),
        "q_proj.bias": (n * h,), "k_proj.bias": (k * h,), "v_proj.bias": (k * h,), "o_proj.weight": (d, n * h),
        "gate_proj.weight": (f, d), "up_proj.weight": (f, d), "down_proj.weight": (d, f),
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
        "q_norm.weight": (h,), "k_norm.weight": (h,),
    }
    bf16 = safetensors_io.DTYPES["BF16"]
    specs = [safetensors_io.TensorSpec(r.hf, bf16, shapes[".".join(r.hf.split(".")[-2:])]) for r in rules]
    rng = np.random.default_rng(seed)

    def random_bf16(spec):
        size = int(np.prod(spec.shape))
        bits = rng.integers(0, 1 << 16, size=size, dtype=np.uint16)
        # sign | exponent 118..125 (|x| in [2^-9, 2^-1)) | mantissa
        bits = (bits & 0x807F) | ((118 + (bits >> 7) % 8) << 7)
        return bits.view(bf16).reshape(spec.shape)

    safetensors_io.write_shards(directory, safetensors_io.plan_shards(specs, max_shard_bytes), random_bf16)
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump(hf_config, fh, indent=2)
    return sum(s.nbytes for s in specs)
