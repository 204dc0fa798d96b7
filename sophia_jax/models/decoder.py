"""One Llama-style decoder LM for Qwen2, InternLM2 (stored as Llama), Llama and Qwen3.

The layouts differ only in flags: q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3), tied
embeddings, RoPE settings. Checkpoint naming differences live in the converter.

The decoder runs in two modes with one code path:

* full sequence (training, scoring): keys are the sequence itself;
* with a KV cache (sampling): ``cache`` holds per-layer keys/values ``[B, S, K, H]``; the new
  tokens are written at slot ``cache_index`` and attend to every filled slot before them.

Causality is by slot index (as in transformers), positions only feed RoPE, so left padding with
``positions = cumsum(mask) - 1`` and right padding with ``positions = arange`` both work.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sophia_jax import sharding
from sophia_jax.models import layers
from sophia_jax.models.config import RuntimeConfig, TextConfig


_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _remat_layer(layer, policy: str, *args):
    """Runs ``layer(*args)`` under ``jax.checkpoint`` on its split state.

    A pure function of (state, inputs) rather than ``nnx.remat``: the train step merges the model
    inside ``value_and_grad`` and ``scan``, where NNX's lifted transform refuses to touch
    parameters created at another trace level.
    """
    graphdef, state = nnx.split(layer)

    def run(state, *args):
        return nnx.merge(graphdef, state)(*args)

    return jax.checkpoint(run, policy=_REMAT_POLICIES[policy])(state, *args)


def _scan_layers(stacked, policy: str, x, cos, sin, mask):
    """``x`` through every layer of a stacked layer module (see ``stack_layers``) with ``lax.scan``."""
    graphdef, state = nnx.split(stacked)

    def body(x, layer_state):
        return nnx.merge(graphdef, layer_state)(x, cos, sin, mask, None, 0)[0], None

    if policy != "none":
        body = jax.checkpoint(body, policy=_REMAT_POLICIES[policy], prevent_cse=False)
    return jax.lax.scan(body, x, state)[0]


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _axes(variable) -> tuple:
    axes = variable.get_metadata().get("axes")
    return tuple(axes) if axes is not None else (None,) * variable.get_value().ndim


def stack_layers(blocks: Sequence[nnx.Module], mesh=None) -> nnx.Module:
    """One module of the blocks' type whose every parameter is the blocks' stacked along a new
    leading axis (logical axis ``layers``, replicated); sharded by the logical rules on ``mesh``."""
    graphdef, _ = nnx.split(blocks[0])

    def stack(*variables):
        axes = ("layers",) + _axes(variables[0])
        value = jnp.stack([v.get_value() for v in variables])
        if mesh is not None:
            value = jax.device_put(value, jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(axes, value.shape, mesh)))
        return variables[0].replace(value, axes=axes)

    return nnx.merge(graphdef, jax.tree.map(stack, *[nnx.state(block) for block in blocks], is_leaf=_is_variable))


def unstack_layers(stacked: nnx.Module) -> list[nnx.Module]:
    """The per-layer modules of a ``stack_layers`` module (each parameter a slice of the stack)."""
    graphdef, state = nnx.split(stacked)
    count = jax.tree.leaves(state)[0].shape[0]

    def layer(i):
        return nnx.merge(graphdef, jax.tree.map(lambda v: v.replace(v.get_value()[i], axes=_axes(v)[1:]), state,
                                                is_leaf=_is_variable))

    return [layer(i) for i in range(count)]


def set_scan_layers(model: nnx.Module, scan: bool, mesh=None) -> None:
    """Switches the decoder of ``model`` (a ``CausalLM`` or ``InternVL``) between per-layer and
    stacked (``RuntimeConfig.scan_layers``) parameters, in place."""
    lm = model.text_model
    if lm.runtime.scan_layers == scan:
        return
    lm.layers = stack_layers(list(lm.layers), mesh) if scan else nnx.List(unstack_layers(lm.layers))
    lm.runtime = dataclasses.replace(lm.runtime, scan_layers=scan)


def for_sampling(model: nnx.Module) -> nnx.Module:
    """A view of a training model (same arrays where it can) that the sampler runs: per-layer
    parameters, no remat, and the XLA attention where training used the splash kernel (which has
    no KV-cache mode)."""
    model = nnx.merge(*nnx.split(model))  # a new module graph: the caller's model is untouched
    set_scan_layers(model, False)
    for _, module in nnx.iter_graph(model):
        runtime = getattr(module, "runtime", None)
        if isinstance(runtime, RuntimeConfig):
            attention = "xla" if runtime.attention == "splash" else runtime.attention
            module.runtime = dataclasses.replace(runtime, attention=attention, remat=False)
    return model


class LayerCache(NamedTuple):
    k: jax.Array  # [B, S, K, H]
    v: jax.Array  # [B, S, K, H]


def init_cache(config: TextConfig, batch: int, length: int, dtype=jnp.bfloat16) -> list[LayerCache]:
    """An empty KV cache with ``length`` slots per sequence."""
    shape = (batch, length, config.num_kv_heads, config.head_dim)
    return [LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.num_layers)]


class Attention(nnx.Module):
    def __init__(self, config: TextConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        if n % k:
            raise ValueError(f"num_heads {n} is not a multiple of num_kv_heads {k}")
        pdt = runtime.weight_dtype
        self.config = config
        self.runtime = runtime
        self.q = layers.param(rngs, (d, n, h), ("embed", "heads", "head_dim"), pdt)
        self.k = layers.param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pdt)
        self.v = layers.param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pdt)
        if config.qkv_bias:
            self.q_bias = layers.param(rngs, (n, h), ("heads", "head_dim"), pdt, init="zeros")
            self.k_bias = layers.param(rngs, (k, h), ("kv_heads", "head_dim"), pdt, init="zeros")
            self.v_bias = layers.param(rngs, (k, h), ("kv_heads", "head_dim"), pdt, init="zeros")
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        if config.qk_norm:
            self.q_norm = layers.RMSNorm(h, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
            self.k_norm = layers.RMSNorm(h, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        else:
            self.q_norm = self.k_norm = None
        self.o = layers.param(rngs, (n, h, d), ("heads", "head_dim", "embed"), pdt)

    def _project(self, x, kernel, bias, norm, axes):
        y = jnp.einsum("btd,dnh->btnh", x, kernel[...].astype(x.dtype))
        if bias is not None:
            y = y + bias[...].astype(x.dtype)
        if norm is not None:
            y = norm(y)
        return sharding.constrain(y, axes)

    def __call__(self, x, cos, sin, mask, cache: LayerCache | None, cache_index):
        q = self._project(x, self.q, self.q_bias, self.q_norm, ("batch", "length", "heads", "head_dim"))
        k = self._project(x, self.k, self.k_bias, self.k_norm, ("batch", "length", "kv_heads", "head_dim"))
        v = self._project(x, self.v, self.v_bias, None, ("batch", "length", "kv_heads", "head_dim"))
        q = layers.apply_rope(q, cos, sin)
        k = layers.apply_rope(k, cos, sin)
        if cache is not None:
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start)
            cache = LayerCache(k, v)
            k, v = k.astype(x.dtype), v.astype(x.dtype)
        if self.runtime.attention == "splash":  # full-sequence only (hidden_states checks); mask = segment ids
            out = layers.splash_attention(q, k, v, mask)
        else:
            out = layers.attention(q, k, v, mask, self.runtime.attention)
        out = jnp.einsum("btnh,nhd->btd", out, self.o[...].astype(x.dtype))
        return out, cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config: TextConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        pdt = runtime.weight_dtype
        self.gate = layers.param(rngs, (d, f), ("embed", "mlp"), pdt)
        self.up = layers.param(rngs, (d, f), ("embed", "mlp"), pdt)
        self.down = layers.param(rngs, (f, d), ("mlp", "embed"), pdt)

    def __call__(self, x):
        dt = x.dtype
        h = jax.nn.silu(x @ self.gate[...].astype(dt)) * (x @ self.up[...].astype(dt))
        h = sharding.constrain(h, ("batch", "length", "mlp"))
        return h @ self.down[...].astype(dt)


class DecoderLayer(nnx.Module):
    def __init__(self, config: TextConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        pdt = runtime.weight_dtype
        self.input_norm = layers.RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        self.attn = Attention(config, runtime, rngs=rngs)
        self.post_attention_norm = layers.RMSNorm(
            config.hidden_size, config.rms_norm_eps, param_dtype=pdt, rngs=rngs
        )
        self.mlp = MLP(config, runtime, rngs=rngs)

    def __call__(self, x, cos, sin, mask, cache, cache_index):
        h, cache = self.attn(self.input_norm(x), cos, sin, mask, cache, cache_index)
        x = x + h
        x = x + self.mlp(self.post_attention_norm(x))
        return sharding.constrain(x, ("batch", "length", "embed")), cache


class CausalLM(nnx.Module):
    """Token embedding, decoder stack, final norm and LM head.

    ``__call__(input_ids int[B, L], attention_mask=None) -> float32[B, L, V]``. The embedding
    and head are padded to a multiple of 128 rows for sharding; ``logits(..., padded=True)``
    returns all padded rows with the padding set to -inf.
    """

    def __init__(self, config: TextConfig, runtime: RuntimeConfig = RuntimeConfig(), *, rngs: nnx.Rngs):
        self.config = config
        self.runtime = runtime
        pdt = runtime.weight_dtype
        vp, d = config.padded_vocab_size, config.hidden_size
        self.embed = layers.param(rngs, (vp, d), ("vocab", "embed"), pdt)
        blocks = [DecoderLayer(config, runtime, rngs=rngs) for _ in range(config.num_layers)]
        self.layers = stack_layers(blocks) if runtime.scan_layers else nnx.List(blocks)
        self.norm = layers.RMSNorm(d, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        self.lm_head = None if config.tie_word_embeddings else layers.param(rngs, (d, vp), ("embed", "vocab"), pdt)

    @property
    def text_model(self) -> "CausalLM":
        """The decoder LM (itself); InternVL answers the same question with its language model."""
        return self

    def embed_rows(self, input_ids: jax.Array, pixel_values=None, tile_mask=None) -> jax.Array:
        """Token embeddings [B, L, D]; a text model takes no images (the InternVL signature)."""
        if pixel_values is not None:
            raise ValueError("a text-only model takes no pixel_values")
        return self.embed_tokens(input_ids)

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        """int[B, L] -> [B, L, D] in the compute dtype."""
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(self.runtime.compute_dtype)
        return sharding.constrain(x, ("batch", "length", "embed"))

    def hidden_states(
        self,
        embeds: jax.Array,
        positions: jax.Array,
        kv_mask: jax.Array,
        cache: list[LayerCache] | None = None,
        cache_index: jax.Array | int = 0,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, list[LayerCache] | None]:
        """Runs the decoder stack; returns final-normed hidden states [B, T, D] and the cache.

        embeds: [B, T, D]; positions: int[B, T] (RoPE positions); kv_mask: bool[B, S] marks
        real (non-padding) key slots, with S = T without a cache or the cache length with one.
        segment_ids: optional int[B, T] (no cache) for packed rows: a token attends only to
        earlier tokens of its own segment, so packed examples never see each other.
        """
        c = self.config
        t = embeds.shape[1]
        s = kv_mask.shape[1]
        q_slots = cache_index + jnp.arange(t) if cache is not None else jnp.arange(t)
        if self.runtime.attention == "splash":
            # The kernel masks by slot and segment itself: the "mask" layers get is int[B, T]
            # segment ids (padding is segment 0, attending only to padding).
            if cache is not None:
                raise ValueError("attention='splash' is for full-sequence passes; sample with 'xla' or 'fused'")
            mask = segment_ids if segment_ids is not None else kv_mask.astype(jnp.int32)
        else:
            causal = jnp.arange(s)[None, :] <= q_slots[:, None]  # [T, S]
            mask = causal[None, :, :] & kv_mask[:, None, :].astype(bool)
            if segment_ids is not None:
                if cache is not None:
                    raise ValueError("segment_ids are for full-sequence passes, not cached decoding")
                mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        cos, sin = layers.rope_tables(positions, c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings)
        x = embeds
        policy = self.runtime.remat_policy
        if self.runtime.scan_layers:
            if cache is not None:
                raise ValueError("a scan_layers model runs full sequences only; sample with per-layer parameters")
            return self.norm(_scan_layers(self.layers, policy, x, cos, sin, mask)), None
        new_cache = [] if cache is not None else None
        for i, layer in enumerate(self.layers):
            layer_cache = cache[i] if cache is not None else None
            if policy != "none":
                x, layer_cache = _remat_layer(layer, policy, x, cos, sin, mask, layer_cache, cache_index)
            else:
                x, layer_cache = layer(x, cos, sin, mask, layer_cache, cache_index)
            if new_cache is not None:
                new_cache.append(layer_cache)
        return self.norm(x), new_cache

    def head(self) -> jax.Array:
        """The output projection [D, V_padded]: the LM head, or the embedding when tied."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, hidden: jax.Array, padded: bool = False) -> jax.Array:
        """[B, T, D] -> float32[B, T, V] (or [B, T, V_padded] with -inf padding rows)."""
        logits = (hidden @ self.head().astype(hidden.dtype)).astype(jnp.float32)
        logits = sharding.constrain(logits, ("batch", "length", "vocab"))
        vocab = self.config.vocab_size
        if padded:
            valid = jnp.arange(logits.shape[-1]) < vocab
            return jnp.where(valid, logits, -jnp.inf)
        return logits[..., :vocab]

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        hidden, _ = self.hidden_states(self.embed_tokens(input_ids), positions, attention_mask)
        return self.logits(hidden)
