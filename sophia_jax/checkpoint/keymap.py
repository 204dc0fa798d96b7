"""One table between our parameter paths and transformers' tensor names, usable both ways.

Canonical Hugging Face names are those of the in-memory transformers modules:
``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``model.language_model.*`` and
``lm_head.weight`` for InternVL; ``model.*`` and ``lm_head.weight`` for a text-only causal LM.
``canonical_hf_name`` maps the legacy on-disk prefixes that ``save_pretrained`` writes onto them.

Each ``Rule`` carries a pair of array transforms (HF -> ours, ours -> HF): PyTorch linears are
``[out, in]`` and we store ``[in, heads, head_dim]`` style kernels; the vocabulary is padded.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Mapping

import numpy as np

from sophia_jax.models.config import InternVLConfig, TextConfig, VisionConfig

Transform = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One tensor. ``ours=None`` marks an HF tensor that may be present and is dropped (the
    lm_head copy that transformers keeps in the state dict of a tied model)."""

    ours: str | None  # dotted path in the NNX state, e.g. "language_model.layers.0.attn.q"
    hf: str  # canonical transformers name
    to_ours: Transform
    to_hf: Transform


def _same(x):
    return x


def _linear_in_heads(heads: int, head_dim: int) -> tuple[Transform, Transform]:
    """torch [heads*head_dim, D] <-> ours [D, heads, head_dim]."""
    return (
        lambda w: w.T.reshape(w.shape[1], heads, head_dim),
        lambda w: w.reshape(w.shape[0], heads * head_dim).T,
    )


def _linear_out_heads(heads: int, head_dim: int) -> tuple[Transform, Transform]:
    """torch [D, heads*head_dim] <-> ours [heads, head_dim, D]."""
    return (
        lambda w: w.T.reshape(heads, head_dim, w.shape[0]),
        lambda w: w.reshape(heads * head_dim, w.shape[-1]).T,
    )


def _bias_heads(heads: int, head_dim: int) -> tuple[Transform, Transform]:
    return (lambda b: b.reshape(heads, head_dim), lambda b: b.reshape(heads * head_dim))


_TRANSPOSE = (lambda w: w.T, lambda w: w.T)
_SAME = (_same, _same)


def _rule(ours: str, hf: str, pair: tuple[Transform, Transform] = _SAME) -> Rule:
    return Rule(ours, hf, pair[0], pair[1])


def _pad_rows(rows: int) -> Transform:
    def pad(w):
        if w.shape[0] > rows:
            raise ValueError(f"vocabulary of {w.shape[0]} rows exceeds the padded size {rows}")
        return np.pad(w, [(0, rows - w.shape[0])] + [(0, 0)] * (w.ndim - 1))

    return pad


def vision_rules(config: VisionConfig, ours: str = "vision", hf: str = "model.vision_tower") -> Iterator[Rule]:
    n, h, c, p = config.num_heads, config.head_dim, config.num_channels, config.patch_size
    e = f"{hf}.embeddings"
    yield _rule(
        f"{ours}.embeddings.patch_kernel",
        f"{e}.patch_embeddings.projection.weight",
        (lambda w: w.reshape(w.shape[0], -1).T, lambda w: w.T.reshape(-1, c, p, p)),
    )
    yield _rule(f"{ours}.embeddings.patch_bias", f"{e}.patch_embeddings.projection.bias")
    yield _rule(f"{ours}.embeddings.cls_token", f"{e}.cls_token", (lambda w: w.reshape(-1), lambda w: w.reshape(1, 1, -1)))
    yield _rule(
        f"{ours}.embeddings.position_embedding",
        f"{e}.position_embeddings",
        (lambda w: w.reshape(w.shape[-2], w.shape[-1]), lambda w: w[None]),
    )
    norm_params = [("scale", "weight")] + ([("bias", "bias")] if config.norm_type == "layer_norm" else [])
    for i in range(config.num_layers):
        o, t = f"{ours}.layers.{i}", f"{hf}.encoder.layer.{i}"
        for mine, theirs in norm_params:
            yield _rule(f"{o}.norm1.{mine}", f"{t}.layernorm_before.{theirs}")
            yield _rule(f"{o}.norm2.{mine}", f"{t}.layernorm_after.{theirs}")
        for name in ("q", "k", "v"):
            yield _rule(f"{o}.attn.{name}", f"{t}.attention.{name}_proj.weight", _linear_in_heads(n, h))
            if config.qkv_bias:
                yield _rule(f"{o}.attn.{name}_bias", f"{t}.attention.{name}_proj.bias", _bias_heads(n, h))
        if config.qk_norm:
            yield _rule(f"{o}.attn.q_norm.scale", f"{t}.attention.q_norm.weight")
            yield _rule(f"{o}.attn.k_norm.scale", f"{t}.attention.k_norm.weight")
        yield _rule(f"{o}.attn.o", f"{t}.attention.projection_layer.weight", _linear_out_heads(n, h))
        yield _rule(f"{o}.attn.o_bias", f"{t}.attention.projection_layer.bias")
        yield _rule(f"{o}.ls1", f"{t}.lambda_1")
        yield _rule(f"{o}.ls2", f"{t}.lambda_2")
        yield _rule(f"{o}.fc1", f"{t}.mlp.fc1.weight", _TRANSPOSE)
        yield _rule(f"{o}.fc1_bias", f"{t}.mlp.fc1.bias")
        yield _rule(f"{o}.fc2", f"{t}.mlp.fc2.weight", _TRANSPOSE)
        yield _rule(f"{o}.fc2_bias", f"{t}.mlp.fc2.bias")


def projector_rules(ours: str = "projector", hf: str = "model.multi_modal_projector") -> Iterator[Rule]:
    yield _rule(f"{ours}.norm.scale", f"{hf}.layer_norm.weight")
    yield _rule(f"{ours}.norm.bias", f"{hf}.layer_norm.bias")
    yield _rule(f"{ours}.fc1", f"{hf}.linear_1.weight", _TRANSPOSE)
    yield _rule(f"{ours}.fc1_bias", f"{hf}.linear_1.bias")
    yield _rule(f"{ours}.fc2", f"{hf}.linear_2.weight", _TRANSPOSE)
    yield _rule(f"{ours}.fc2_bias", f"{hf}.linear_2.bias")


def text_rules(
    config: TextConfig, ours: str = "", hf: str = "model", lm_head: str = "lm_head.weight"
) -> Iterator[Rule]:
    """Rules for a decoder; ``ours`` is the module path prefix ('' for a bare CausalLM)."""
    pre = f"{ours}." if ours else ""
    n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
    vp, vocab = config.padded_vocab_size, config.vocab_size
    yield Rule(f"{pre}embed", f"{hf}.embed_tokens.weight", _pad_rows(vp), lambda w: w[:vocab])
    for i in range(config.num_layers):
        o, t = f"{pre}layers.{i}", f"{hf}.layers.{i}"
        yield _rule(f"{o}.input_norm.scale", f"{t}.input_layernorm.weight")
        yield _rule(f"{o}.post_attention_norm.scale", f"{t}.post_attention_layernorm.weight")
        for name, heads in (("q", n), ("k", k), ("v", k)):
            yield _rule(f"{o}.attn.{name}", f"{t}.self_attn.{name}_proj.weight", _linear_in_heads(heads, h))
            if config.qkv_bias:
                yield _rule(f"{o}.attn.{name}_bias", f"{t}.self_attn.{name}_proj.bias", _bias_heads(heads, h))
        if config.qk_norm:
            yield _rule(f"{o}.attn.q_norm.scale", f"{t}.self_attn.q_norm.weight")
            yield _rule(f"{o}.attn.k_norm.scale", f"{t}.self_attn.k_norm.weight")
        yield _rule(f"{o}.attn.o", f"{t}.self_attn.o_proj.weight", _linear_out_heads(n, h))
        yield _rule(f"{o}.mlp.gate", f"{t}.mlp.gate_proj.weight", _TRANSPOSE)
        yield _rule(f"{o}.mlp.up", f"{t}.mlp.up_proj.weight", _TRANSPOSE)
        yield _rule(f"{o}.mlp.down", f"{t}.mlp.down_proj.weight", _TRANSPOSE)
    yield _rule(f"{pre}norm.scale", f"{hf}.norm.weight")
    if config.tie_word_embeddings:
        yield Rule(None, lm_head, _same, _same)
    else:
        yield Rule(f"{pre}lm_head", lm_head, lambda w: _pad_rows(vp)(w).T, lambda w: w.T[:vocab])


def internvl_rules(config: InternVLConfig) -> list[Rule]:
    return [
        *vision_rules(config.vision),
        *projector_rules(),
        *text_rules(config.text, "language_model", "model.language_model", "lm_head.weight"),
    ]


def causal_lm_rules(config: TextConfig) -> list[Rule]:
    return list(text_rules(config))


# Legacy on-disk prefixes (what transformers' save_pretrained writes for InternVL) -> canonical.
_LEGACY_PREFIXES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def canonical_hf_name(name: str) -> str:
    for legacy, canonical in _LEGACY_PREFIXES:
        if name.startswith(legacy):
            return canonical + name[len(legacy):]
    return name


def to_ours(rules: list[Rule], tensors: Mapping[str, np.ndarray], source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Maps canonical-named HF tensors to {our path: array}; every rule must find its tensor
    and every tensor must be used."""
    missing = [r.hf for r in rules if r.ours is not None and r.hf not in tensors]
    if missing:
        raise KeyError(f"{source}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    used = {r.hf for r in rules}
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise KeyError(f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return {r.ours: r.to_ours(np.asarray(tensors[r.hf])) for r in rules if r.ours is not None}


def to_hf(rules: list[Rule], params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps {our path: array} to canonical HF names (the inverse of ``to_ours``)."""
    return {r.hf: r.to_hf(np.asarray(params[r.ours])) for r in rules if r.ours is not None}
