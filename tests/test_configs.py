"""Model presets and config.json parsing for both InternVL layouts and text-only LMs."""

import json

import numpy as np
import pytest
from flax import nnx

import hf_models
from sophia_jax.configs import models
from sophia_jax.models import InternVL, RopeScaling
from sophia_jax.models import config as mc
from sophia_jax.models.hf_config import ConfigError, internvl_config_from_hf, load_hf_config, text_config_from_hf


def param_count(module) -> int:
    return sum(int(np.prod(v.get_value().shape)) for _, v in nnx.iter_graph(module) if isinstance(v, nnx.Param))


# Published sizes: InternVL3-8B 7.9B (ViT 0.3B + mlp1 28M + Qwen2.5-7B), 38B 38.4B (ViT-6B 5.5B).
@pytest.mark.parametrize("name,billions,vit", [
    ("internvl3_8b", 7.94, 0.304), ("internvl2_5_8b", 8.08, 0.304),
    ("internvl3_38b", 38.39, 5.54), ("internvl2_5_38b", 38.39, 5.54),
])
def test_presets_have_published_sizes(name, billions, vit):
    cfg = models.model_config(models.get_config(name))
    model = nnx.eval_shape(lambda: InternVL(cfg, rngs=nnx.Rngs(0)))
    padding = (cfg.text.padded_vocab_size - cfg.text.vocab_size) * cfg.text.hidden_size * 2
    assert abs((param_count(model) - padding) / 1e9 - billions) < 0.01
    assert abs(param_count(model.vision) / 1e9 - vit) < 0.01
    assert cfg.text.padded_vocab_size % 128 == 0


def test_config_round_trip_and_errors():
    cfg = models.get_config("internvl3_38b")
    assert models.model_config(cfg) == models.PRESETS["internvl3_38b"]
    cfg.model.text.num_layers = 3  # overrides act on plain fields
    assert models.model_config(cfg).text.num_layers == 3
    with pytest.raises(ValueError, match="known:"):
        models.get_config("internvl9_1b")
    with pytest.raises(ValueError, match="unknown TextConfig fields"):
        mc.text_config({"hidden_sise": 3})


def test_native_layout_from_transformers_config():
    torch_model = hf_models.internvl("6b", "llama")
    cfg = internvl_config_from_hf(torch_model.config.to_dict())
    assert cfg.vision.norm_type == "rms_norm" and cfg.vision.qk_norm and not cfg.vision.qkv_bias
    assert cfg.text.architecture == "llama" and not cfg.text.qkv_bias and not cfg.text.tie_word_embeddings
    assert cfg.image_token_id == hf_models.IMAGE_TOKEN and cfg.tokens_per_tile == 4
    assert cfg.text.rope_theta == 1e6 and cfg.text.rms_norm_eps == 1e-5


ORIGINAL_38B_STYLE = {
    # an InternVL2.5-38B style config.json: the vision config omits norm_type / qk_normalization
    "model_type": "internvl_chat", "select_layer": -1, "downsample_ratio": 0.5, "ps_version": "v2",
    "force_image_size": 448, "template": "internvl2_5",
    "vision_config": {"hidden_size": 3200, "num_attention_heads": 25, "intermediate_size": 12800,
                      "num_hidden_layers": 45, "image_size": 448, "patch_size": 14},
    "llm_config": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151674,
                   "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
                   "num_attention_heads": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-6,
                   "rope_theta": 1000000.0, "rope_scaling": {"factor": 2.0, "rope_type": "dynamic"},
                   "max_position_embeddings": 32768, "tie_word_embeddings": False},
}


def test_original_layout_applies_original_defaults():
    cfg = internvl_config_from_hf(ORIGINAL_38B_STYLE)
    assert cfg == models.PRESETS["internvl2_5_38b"]


def test_original_internlm2_layout():
    raw = json.loads(json.dumps(ORIGINAL_38B_STYLE))
    raw["vision_config"] = {"hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096,
                            "num_hidden_layers": 24, "norm_type": "layer_norm", "qkv_bias": True,
                            "qk_normalization": False, "image_size": 448, "patch_size": 14}
    raw["llm_config"] = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "vocab_size": 92553,
                         "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                         "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
                         "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0},
                         "bias": False, "max_position_embeddings": 32768}
    assert internvl_config_from_hf(raw) == models.PRESETS["internvl2_5_8b"]
    del raw["llm_config"]["bias"]  # InternLM2Config defaults bias to True
    assert internvl_config_from_hf(raw).text.qkv_bias


def test_bad_configs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown model_type 'llava'"):
        internvl_config_from_hf({"model_type": "llava"})
    with pytest.raises(ConfigError, match="missing required field 'hidden_size'"):
        text_config_from_hf({"model_type": "qwen2", "vocab_size": 10}, "x/config.json")
    with pytest.raises(ConfigError, match="rope scaling type 'yarn'"):
        text_config_from_hf({"model_type": "qwen2", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "intermediate_size": 8,
                             "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ConfigError, match="no config.json"):
        load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_hf_config(tmp_path)


def test_rope_parameters_spelling():
    text = text_config_from_hf({
        "model_type": "llama", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 8, "rope_parameters": {"rope_type": "dynamic", "rope_theta": 5e5, "factor": 2.0},
    })
    assert text.rope_theta == 5e5 and text.rope_scaling == RopeScaling("dynamic", 2.0)
    assert models.PRESETS["internvl3_8b"].text.rope_scaling == RopeScaling("dynamic", 2.0)
