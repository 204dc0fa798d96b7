"""``sophia-jax export``: our checkpoint (or a live model) -> a transformers directory.

InternVL models become a transformers-native ``InternVLForConditionalGeneration`` directory
(``model.*`` / ``lm_head`` tensor names); text-only models their causal LM class (InternLM2
becomes Llama, as in the official ``-hf`` conversions). Tensors stream one at a time from Orbax
into safetensors files of at most ``--max_shard_gb``; the config is generated from our model
config (with the source's special-token ids), and tokenizer, chat template and generation config
are copied from the checkpoint directory.

    sophia-jax export --config.checkpoint=/ckpt/run7/final --config.out=/ckpt/run7/final-hf

Settings: the ``export`` config (``sophia-jax export --show-config``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import jax
import numpy as np
import transformers
from flax import nnx
from jax.experimental import multihost_utils

from sophia_jax.checkpoint.errors import CheckpointError
from sophia_jax.checkpoint.hf_source import expected_hf_shapes, read_json, rules_for
from sophia_jax.checkpoint.params import flat_params
from sophia_jax.checkpoint.progress import Progress
from sophia_jax.checkpoint.safetensors_io import TensorSpec, plan_shards, write_shards
from sophia_jax.checkpoint.store import META_FILE, ParamReader, kind_of
from sophia_jax.checkpoint.tokenizer_assets import plan_assets
from sophia_jax.configs.loading import command_config, require
from sophia_jax.models.config import InternVLConfig, TextConfig

DEFAULT_SHARD_BYTES = 5 << 30
_TEXT_CLASSES = {  # our decoder family -> (transformers config class, model class)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "internlm2": ("LlamaConfig", "LlamaForCausalLM"),
}
_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _rope_parameters(text: TextConfig) -> dict:
    scaling = text.rope_scaling
    params = {"rope_type": scaling.kind, "rope_theta": text.rope_theta}
    if scaling.kind != "default":
        params["factor"] = scaling.factor
    if scaling.kind == "llama3":
        params.update(low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor,
                      original_max_position_embeddings=scaling.original_max_position_embeddings)
    return params


def text_hf_config(text: TextConfig, token_ids: dict, dtype: np.dtype) -> transformers.PretrainedConfig:
    """The transformers config of our decoder (InternLM2 is written as Llama)."""
    cls_name, arch = _TEXT_CLASSES[text.architecture]
    cls = getattr(transformers, cls_name)
    if text.architecture == "qwen2" and not text.qkv_bias:
        raise CheckpointError("a Qwen2 decoder without q/k/v bias has no transformers equivalent")
    if text.architecture != "qwen2" and text.qkv_bias:
        raise CheckpointError(f"transformers' {arch} cannot hold q/k/v biases without an o_proj bias")
    if text.qk_norm != (text.architecture == "qwen3"):
        raise CheckpointError(f"qk_norm={text.qk_norm} does not match a {text.architecture} decoder")
    return cls(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_layers, num_attention_heads=text.num_heads, num_key_value_heads=text.num_kv_heads,
        head_dim=text.head_dim, max_position_embeddings=text.max_position_embeddings, rms_norm_eps=text.rms_norm_eps,
        rope_parameters=_rope_parameters(text), tie_word_embeddings=text.tie_word_embeddings, hidden_act="silu",
        architectures=[arch], dtype=dtype.name, **token_ids,
    )


def hf_config(config: InternVLConfig | TextConfig, original: dict | None, dtype) -> transformers.PretrainedConfig:
    """transformers config for our model; special-token ids come from the source config."""
    dtype = np.dtype(dtype)
    original = original or {}
    if isinstance(config, TextConfig):
        source = original
    else:
        source = original.get("text_config") or original.get("llm_config") or {}
    token_ids = {k: source[k] for k in _TOKEN_KEYS if source.get(k) is not None}
    text = text_hf_config(config.text if isinstance(config, InternVLConfig) else config, token_ids, dtype)
    if isinstance(config, TextConfig):
        return text
    if config.ps_version != "v2":
        raise CheckpointError(f"pixel shuffle {config.ps_version!r}: transformers' InternVL implements only 'v2'")
    v = config.vision
    vision = transformers.InternVLVisionConfig(
        hidden_size=v.hidden_size, num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
        intermediate_size=v.intermediate_size, image_size=v.image_size, patch_size=v.patch_size,
        num_channels=v.num_channels, norm_type=v.norm_type, layer_norm_eps=v.norm_eps, attention_bias=v.qkv_bias,
        use_qk_norm=v.qk_norm, hidden_act="gelu",
    )
    return transformers.InternVLConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=config.image_token_id,
        image_seq_length=config.tokens_per_tile, downsample_ratio=config.downsample_ratio,
        projector_hidden_act="gelu", vision_feature_layer=v.select_layer, vision_feature_select_strategy="default",
        tie_word_embeddings=config.text.tie_word_embeddings, architectures=["InternVLForConditionalGeneration"],
        dtype=dtype.name,
    )


def _host(value: jax.Array) -> np.ndarray:
    if jax.process_count() > 1:  # every host takes part; each gets the full tensor once
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(jax.device_get(value))



def export_hf(
    source: str | os.PathLike | nnx.Module,
    out: str | os.PathLike,
    *,
    dtype=None,
    assets: str | os.PathLike | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Writes a transformers directory for ``source`` (our checkpoint directory or a model).

    ``dtype`` defaults to the stored dtype; ``assets`` (default: the checkpoint directory) is
    where config.json, tokenizer and template files come from. With several processes, call it
    on all of them: each tensor is gathered in turn and process 0 writes.
    """
    if isinstance(source, nnx.Module):
        kind, config = kind_of(source), source.config
        variables = flat_params(source)
        shapes = {name: tuple(var.get_value().shape) for name, var in variables.items()}
        stored = {np.dtype(var.get_value().dtype) for var in variables.values()}
        stored = stored.pop() if len(stored) == 1 else np.dtype(np.float32)
        read = lambda name: _host(variables[name].get_value())  # noqa: E731
    else:
        reader = ParamReader(source)
        kind, config, shapes, stored, read = reader.kind, reader.config, reader.shapes, reader.dtype, reader.read
        assets = assets if assets is not None else reader.path
    if dtype is not None and str(dtype) not in ("bfloat16", "float32"):
        raise CheckpointError(f"dtype {str(dtype)!r}: choose bfloat16 or float32")
    out_dtype = np.dtype(dtype) if dtype is not None else stored
    assets = os.fspath(assets) if assets is not None else None
    original = read_json(os.path.join(assets, "config.json")) if assets else None
    planned = plan_assets(assets, exclude=("config.json", META_FILE)) if assets else None
    cfg = hf_config(config, original, out_dtype)
    rules = [rule for rule in rules_for(config) if rule.ours is not None]
    hf_shapes = expected_hf_shapes(rules, shapes)
    specs = [TensorSpec(rule.hf, out_dtype, hf_shapes[rule.hf]) for rule in rules]
    by_name = {rule.hf: rule for rule in rules}

    def get(spec: TensorSpec) -> np.ndarray:
        rule = by_name[spec.name]
        return np.asarray(rule.to_hf(read(rule.ours))).astype(out_dtype, copy=False)

    if jax.process_index() != 0:
        for spec in specs:
            get(spec)
        return os.path.abspath(os.fspath(out))
    final = os.path.abspath(os.fspath(out))
    if os.path.exists(final) and not overwrite:
        raise CheckpointError(f"{final}: already exists (pass overwrite to replace it)")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=os.path.dirname(final))
    try:
        report = Progress(f"export ({kind})", len(specs), sum(s.nbytes for s in specs), enabled=progress)
        write_shards(tmp, plan_shards(specs, max_shard_bytes), get, on_tensor=lambda s: report.update(s.nbytes))
        report.done()
        if planned is not None:
            planned.write(tmp)
        cfg.save_pretrained(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def main(argv: list[str] | None = None) -> int:
    from sophia_jax.checkpoint.convert import use_host_cpu

    cfg = command_config("export", __doc__, "export", argv)
    require(cfg, "checkpoint", "out")
    if cfg.max_shard_gb <= 0:
        raise CheckpointError(f"config field 'max_shard_gb' must be > 0, got {cfg.max_shard_gb}")
    use_host_cpu()
    print(export_hf(cfg.checkpoint, cfg.out, dtype=cfg.dtype or None, overwrite=cfg.overwrite,
                    max_shard_bytes=int(cfg.max_shard_gb * 2**30), progress=cfg.progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
