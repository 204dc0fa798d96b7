"""Building blocks shared by the vision encoder and the decoder.

Axis alphabet used in einsum strings and shape notes across ``models/``:
B batch, T query length, S key length, D model width, N query heads, K kv heads, G = N / K,
H head dim, F mlp width, V vocab, P patches per tile, C channels.

Every parameter is an ``nnx.Param`` with ``axes`` metadata naming its logical axes; only
``sophia_jax.sharding`` maps those to mesh axes.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from sophia_jax import sharding
from sophia_jax.models.config import RopeScaling

INIT_STD = 0.02


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], dtype, init="normal"):
    """A parameter with logical axes; ``init`` is normal(0.02), zeros or ones."""
    if init == "normal":
        value = INIT_STD * jax.random.normal(rngs.params(), tuple(shape), dtype)
    elif init == "zeros":
        value = jnp.zeros(tuple(shape), dtype)
    elif init == "ones":
        value = jnp.ones(tuple(shape), dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, axes=tuple(axes))


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32; the weight multiplies after the cast back (as in HF)."""

    def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (dim,), ("norm",), param_dtype, init="ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(dtype) * x32.astype(dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with bias; statistics in float32."""

    def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (dim,), ("norm",), param_dtype, init="ones")
        self.bias = param(rngs, (dim,), ("norm",), param_dtype, init="zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


def make_norm(kind: str, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
    if kind == "rms_norm":
        return RMSNorm(dim, eps, param_dtype=param_dtype, rngs=rngs)
    if kind == "layer_norm":
        return LayerNorm(dim, eps, param_dtype=param_dtype, rngs=rngs)
    raise ValueError(f"unknown norm_type {kind!r}; expected 'rms_norm' or 'layer_norm'")


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU; InternViT and mlp1 use it, and jax's default is the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------------------------


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling) -> jax.Array:
    """Base inverse frequencies, with the static (position-independent) scalings applied."""
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling.kind in ("default", "dynamic"):
        return inv
    if scaling.kind == "linear":
        return inv / scaling.factor
    if scaling.kind == "llama3":
        old = scaling.original_max_position_embeddings
        low_wavelen = old / scaling.low_freq_factor
        high_wavelen = old / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        mid = (1 - smooth) * inv / scaling.factor + smooth * inv
        out = jnp.where(wavelen > low_wavelen, inv / scaling.factor, inv)
        is_mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        return jnp.where(is_mid, mid, out)
    raise NotImplementedError(f"rope scaling {scaling.kind!r} is not supported")


def rope_tables(
    positions: jax.Array, head_dim: int, theta: float, scaling: RopeScaling, max_positions: int
) -> tuple[jax.Array, jax.Array]:
    """cos and sin, float32[B, T, H], for NeoX-style (rotate-half) RoPE."""
    inv = rope_inv_freq(head_dim, theta, scaling)
    if scaling.kind == "dynamic":
        # Dynamic NTK: the base grows once the sequence passes max_positions (a no-op below it).
        seq_len = jnp.maximum(jnp.max(positions) + 1, max_positions).astype(jnp.float32)
        base = theta * ((scaling.factor * seq_len / max_positions) - (scaling.factor - 1)) ** (
            head_dim / (head_dim - 2)
        )
        inv = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, heads, H]; cos/sin: [B, T, H]."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(dtype)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, impl: str = "xla"
) -> jax.Array:
    """Scaled dot-product attention with grouped KV heads.

    q: [B, T, N, H]; k, v: [B, S, K, H]; mask: bool[B, T, S] (True = may attend) or None for
    full bidirectional attention. Returns [B, T, N, H]. Softmax runs in float32.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    if impl == "fused":
        return jax.nn.dot_product_attention(
            q, k, v, mask=None if mask is None else mask[:, None, :, :], scale=h**-0.5
        )
    if impl != "xla":
        raise ValueError(f"unknown attention implementation {impl!r}; expected 'xla', 'fused' or 'splash' "
                         f"('splash' is causal within segments, for full-sequence decoder passes)")
    # Head-major operands ([B, K, G, T, H], [B, K, S, H]) make every product below a plain batched
    # matmul over (B, K): only the small q/k/v/out tensors are transposed, never the [T, S] scores.
    qh = q.reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4)
    out = _attention_core(qh, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _attention_scores(qh, kh, mask):
    """float32[B, K, G, T, S], scaled, masked slots at the float32 minimum."""
    scores = jnp.einsum("bkgth,bksh->bkgts", qh, kh, preferred_element_type=jnp.float32) * qh.shape[-1] ** -0.5
    if mask is None:
        return scores
    return jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)


@jax.custom_vjp
def _attention_core(qh, kh, vh, mask):
    return _attention_forward(qh, kh, vh, mask)[0]


def _attention_forward(qh, kh, vh, mask):
    """Saves the row logsumexp instead of the probabilities (as FlashAttention's backward does),
    so no [T, S] tensor outlives the layer's forward; softmax is normalised on the small output."""
    scores = _attention_scores(qh, kh, mask)
    peak = jnp.max(scores, axis=-1, keepdims=True)
    unnormalised = jnp.exp(scores - peak)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bksh->bkgth", unnormalised.astype(vh.dtype), vh, preferred_element_type=jnp.float32)
    out = (out / total).astype(vh.dtype)
    return out, (qh, kh, vh, mask, out, (peak + jnp.log(total))[..., 0])


def _attention_backward(residuals, d_out):
    qh, kh, vh, mask, out, lse = residuals
    f32 = jnp.float32
    probs = jnp.exp(_attention_scores(qh, kh, mask) - lse[..., None])  # recomputed, float32
    d_v = jnp.einsum("bkgts,bkgth->bksh", probs.astype(vh.dtype), d_out, preferred_element_type=f32)
    d_probs = jnp.einsum("bkgth,bksh->bkgts", d_out, vh, preferred_element_type=f32)
    row = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)  # sum_s p * dp
    d_scores = (probs * (d_probs - row) * qh.shape[-1] ** -0.5).astype(qh.dtype)
    d_q = jnp.einsum("bkgts,bksh->bkgth", d_scores, kh, preferred_element_type=f32)
    d_k = jnp.einsum("bkgts,bkgth->bksh", d_scores, qh, preferred_element_type=f32)
    return d_q.astype(qh.dtype), d_k.astype(kh.dtype), d_v.astype(vh.dtype), None


_attention_core.defvjp(_attention_forward, _attention_backward)



# ---------------------------------------------------------------------------------------------
# Splash attention (TPU)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
                     block: int = 512, interpret: bool = False) -> jax.Array:
    """Causal attention within segments by JAX's Pallas TPU splash-attention kernel.

    q: [B, T, N, H]; k, v: [B, T, K, H]; segment_ids: int[B, T] (a token attends to earlier
    tokens with its own id: packed examples, and padding as one more segment). Returns
    [B, T, N, H]. The kernel tiles the [T, T] scores in VMEM, so long rows (32,768 tokens) never
    materialise them, and skips tiles above the diagonal. One MQA kernel runs per KV head (vmap),
    so grouped heads share their K/V tiles. Under ``sharding.use_mesh`` it runs in a
    ``shard_map`` over the batch and KV-head axes (a Pallas call is not partitioned by XLA).
    ``interpret=True`` runs the kernel's Python semantics on any backend (tests on CPU).
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    g = n // kv_heads
    blk = min(block, t)
    if t % blk:
        raise ValueError(f"splash attention needs the row length {t} to be a multiple of its block {blk}")
    sizes = splash.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk, block_kv_dkv=blk,
                              block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    kernel = splash.make_splash_mqa_single_device(
        mask=splash.MultiHeadMask([splash.CausalMask((t, t))] * g), block_sizes=sizes, interpret=interpret)

    def run(qh, kh, vh, seg):  # [b, K, G, T, H], [b, K, T, H], [b, K, T, H], [b, T]
        one_row = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over KV heads
        return jax.vmap(lambda q_, k_, v_, s_: one_row(q_, k_, v_, splash.SegmentIds(s_, s_)))(qh, kh, vh, seg)

    qh = (q * jnp.asarray(h**-0.5, q.dtype)).reshape(b, t, kv_heads, g, h).transpose(0, 2, 3, 1, 4)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    active = sharding.active_mesh()
    if active is not None:
        mesh, rules = active
        rows, heads = sharding.logical_to_spec(("batch", "kv_heads"), (b, kv_heads), mesh, rules)
        run = jax.shard_map(run, mesh=mesh, in_specs=(P(rows, heads), P(rows, heads), P(rows, heads), P(rows)),
                            out_specs=P(rows, heads), check_vma=False)
    out = run(qh, kh, vh, segment_ids.astype(jnp.int32))
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
