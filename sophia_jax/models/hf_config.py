"""Model configs from Hugging Face ``config.json`` files.

Reads the original OpenGVLab layout (``model_type: internvl_chat`` with ``vision_config`` and
``llm_config``), the transformers-native layout (``model_type: internvl`` with ``vision_config``
and ``text_config``), and text-only Qwen2 / Qwen3 / Llama / InternLM2 causal LMs.

Keys the JSON omits take the defaults of the class that wrote it: the original
``InternVisionConfig`` defaults to the 6B variant (RMSNorm, qk-norm, no qkv bias), transformers'
``InternVLVisionConfig`` to LayerNorm without qk-norm; ``InternLM2Config`` defaults ``bias`` to
True. Both RoPE spellings are read (``rope_theta``/``rope_scaling`` and 5.x ``rope_parameters``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from sophia_jax.errors import UserError
from sophia_jax.models.config import InternVLConfig, RopeScaling, TextConfig, VisionConfig

# <IMG_CONTEXT> ids of the released tokenizers, by LM family, for original-layout configs
# (which keep the id in the tokenizer, not in config.json).
DEFAULT_IMAGE_TOKEN_ID = {"qwen2": 151667, "internlm2": 92546, "llama": 92546}


class ConfigError(UserError, ValueError):
    """A config.json that cannot be understood; the message names the file and the key."""


def _get(cfg: Mapping[str, Any], key: str, source: str, default: Any = ...) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is ...:
        raise ConfigError(f"{source}: missing required field {key!r}")
    return default


def _int_or_first(value) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def rope_from_hf(cfg: Mapping[str, Any], source: str) -> tuple[float, RopeScaling]:
    params = cfg.get("rope_parameters")
    if isinstance(params, Mapping):
        theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = params
    else:
        theta = float(cfg.get("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if kind == "default":
        return theta, RopeScaling()
    if kind not in ("linear", "dynamic", "llama3"):
        raise ConfigError(f"{source}: rope scaling type {kind!r} is not supported (default, linear, dynamic, llama3)")
    return theta, RopeScaling(
        kind=kind,
        factor=float(scaling.get("factor", 1.0)),
        low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(scaling.get("original_max_position_embeddings", 8192)),
    )


def _text_family(cfg: Mapping[str, Any]) -> str:
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type in ("qwen2", "qwen3", "llama", "internlm2"):
        return model_type
    for arch, family in (("Qwen2", "qwen2"), ("Qwen3", "qwen3"), ("InternLM2", "internlm2"), ("Llama", "llama")):
        if any(a.startswith(arch) for a in archs):
            return family
    return ""


def text_config_from_hf(cfg: Mapping[str, Any], source: str = "config.json") -> TextConfig:
    family = _text_family(cfg)
    if not family:
        raise ConfigError(
            f"{source}: unknown language model (model_type={cfg.get('model_type')!r}, "
            f"architectures={cfg.get('architectures')}); supported: qwen2, qwen3, llama, internlm2"
        )
    if cfg.get("use_sliding_window"):
        raise ConfigError(f"{source}: sliding-window attention is not supported")
    if cfg.get("mlp_bias"):
        raise ConfigError(f"{source}: mlp_bias=True is not supported")
    hidden = int(_get(cfg, "hidden_size", source))
    heads = int(_get(cfg, "num_attention_heads", source))
    theta, scaling = rope_from_hf(cfg, source)
    if family == "qwen2":
        qkv_bias = True
    elif family == "internlm2":
        qkv_bias = bool(cfg.get("bias", True))
    else:
        qkv_bias = bool(cfg.get("attention_bias", False))
    return TextConfig(
        vocab_size=int(_get(cfg, "vocab_size", source)),
        hidden_size=hidden,
        num_layers=int(_get(cfg, "num_hidden_layers", source)),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(_get(cfg, "intermediate_size", source)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        qkv_bias=qkv_bias,
        qk_norm=family == "qwen3",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        architecture=family,
    )


def _vision_from_native(cfg: Mapping[str, Any], source: str) -> VisionConfig:
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{source}: vision hidden_act {cfg['hidden_act']!r} is not supported")
    return VisionConfig(
        hidden_size=int(cfg.get("hidden_size", 1024)),
        num_layers=int(cfg.get("num_hidden_layers", 24)),
        num_heads=int(cfg.get("num_attention_heads", 16)),
        intermediate_size=int(cfg.get("intermediate_size", 4096)),
        image_size=_int_or_first(cfg.get("image_size", 448)),
        patch_size=_int_or_first(cfg.get("patch_size", 14)),
        num_channels=int(cfg.get("num_channels", 3)),
        norm_type=cfg.get("norm_type", "layer_norm"),
        norm_eps=float(cfg.get("layer_norm_eps", 1e-6)),
        qkv_bias=bool(cfg.get("attention_bias", False)),
        qk_norm=bool(cfg.get("use_qk_norm", False)),
    )


def _vision_from_original(cfg: Mapping[str, Any], image_size: int | None, select_layer: int) -> VisionConfig:
    return VisionConfig(
        hidden_size=int(cfg.get("hidden_size", 3200)),
        num_layers=int(cfg.get("num_hidden_layers", 48)),
        num_heads=int(cfg.get("num_attention_heads", 25)),
        intermediate_size=int(cfg.get("intermediate_size", 12800)),
        image_size=int(image_size or cfg.get("image_size", 224)),
        patch_size=int(cfg.get("patch_size", 14)),
        num_channels=int(cfg.get("num_channels", 3)),
        norm_type=cfg.get("norm_type", "rms_norm"),
        norm_eps=float(cfg.get("layer_norm_eps", 1e-6)),
        qkv_bias=bool(cfg.get("qkv_bias", False)),
        qk_norm=bool(cfg.get("qk_normalization", True)),
        select_layer=select_layer,
    )


def internvl_config_from_hf(
    cfg: Mapping[str, Any], source: str = "config.json", image_token_id: int | None = None
) -> InternVLConfig:
    """InternVLConfig from either InternVL config.json layout.

    ``image_token_id`` overrides the config (original-layout configs do not carry it; pass the
    tokenizer's ``<IMG_CONTEXT>`` id, or the released default for the LM family is used).
    """
    model_type = cfg.get("model_type")
    if model_type == "internvl":
        text = text_config_from_hf(_get(cfg, "text_config", source), f"{source}:text_config")
        vision = _vision_from_native(_get(cfg, "vision_config", source), f"{source}:vision_config")
        layer = cfg.get("vision_feature_layer", -1)
        if not isinstance(layer, int):
            raise ConfigError(f"{source}: vision_feature_layer {layer!r} (a list) is not supported")
        if cfg.get("vision_feature_select_strategy", "default") != "default":
            raise ConfigError(f"{source}: only vision_feature_select_strategy='default' is supported")
        if cfg.get("projector_hidden_act", "gelu") != "gelu":
            raise ConfigError(f"{source}: projector_hidden_act must be 'gelu'")
        vision = VisionConfig(**{**vision.__dict__, "select_layer": layer})
        # transformers' InternVLConfig ties embeddings unless told otherwise; real InternVL never
        # ties, so an explicit top-level key wins, then the text config's, then untied.
        tie = cfg.get("tie_word_embeddings", text.tie_word_embeddings)
        text = TextConfig(**{**text.__dict__, "tie_word_embeddings": bool(tie)})
        token = cfg.get("image_token_id", cfg.get("image_token_index"))
        ps_version = "v2"
    elif model_type == "internvl_chat":
        text = text_config_from_hf(_get(cfg, "llm_config", source), f"{source}:llm_config")
        # InternVLChatConfig forces untied embeddings for every size.
        text = TextConfig(**{**text.__dict__, "tie_word_embeddings": False})
        vision = _vision_from_original(
            _get(cfg, "vision_config", source), cfg.get("force_image_size"), int(cfg.get("select_layer", -1))
        )
        token = None
        ps_version = cfg.get("ps_version", "v1")
    else:
        raise ConfigError(
            f"{source}: unknown model_type {model_type!r}; expected 'internvl' (transformers) or "
            "'internvl_chat' (OpenGVLab original)"
        )
    if image_token_id is not None:
        token = image_token_id
    if token is None:
        token = DEFAULT_IMAGE_TOKEN_ID.get(text.architecture)
    if token is None:
        raise ConfigError(f"{source}: cannot tell the image-context token id; pass image_token_id")
    return InternVLConfig(
        vision=vision,
        text=text,
        image_token_id=int(token),
        downsample_ratio=float(cfg.get("downsample_ratio", 0.5)),
        ps_version=ps_version,
    )


def load_hf_config(path: str | os.PathLike) -> dict:
    """Reads ``config.json`` (a file or the directory holding it) with a clear error."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no config.json found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def is_internvl(cfg: Mapping[str, Any]) -> bool:
    return cfg.get("model_type") in ("internvl", "internvl_chat")
