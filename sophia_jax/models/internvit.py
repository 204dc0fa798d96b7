"""InternViT (300M and 6B variants) in Flax NNX.

A plain pre-norm ViT with a CLS token, learned position embeddings, layer scale on both
branches, exact GELU and no final norm. The 6B variant swaps LayerNorm for RMSNorm, drops the
qkv bias and normalises q and k with an RMSNorm over all heads at once (before the head split).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sophia_jax import sharding
from sophia_jax.models import layers
from sophia_jax.models.config import RuntimeConfig, VisionConfig


@functools.lru_cache(maxsize=None)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """float32[out, in] that resamples one axis like torch bicubic (A=-0.75, align_corners=False).

    Position tables are interpolated this way by both InternVL and transformers; jax.image.resize
    uses a different cubic kernel, so we build the torch weights explicitly.
    """
    a = -0.75

    def cubic(x):
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0

    matrix = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for dst in range(out_size):
        src = scale * (dst + 0.5) - 0.5
        base = int(np.floor(src))
        frac = src - base
        for offset in range(-1, 3):
            index = min(max(base + offset, 0), in_size - 1)
            matrix[dst, index] += cubic(offset - frac)
    return matrix.astype(np.float32)


class VisionEmbeddings(nnx.Module):
    def __init__(self, config: VisionConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        c, p, d = config.num_channels, config.patch_size, config.hidden_size
        pdt = runtime.weight_dtype
        self.config = config
        # Conv weight [D, C, p, p] flattened to [(C p p), D]: the conv is a matmul over patches.
        self.patch_kernel = layers.param(rngs, (c * p * p, d), ("patch", "embed"), pdt)
        self.patch_bias = layers.param(rngs, (d,), ("norm",), pdt, init="zeros")
        self.cls_token = layers.param(rngs, (d,), ("norm",), pdt)
        self.position_embedding = layers.param(
            rngs, (1 + config.grid * config.grid, d), ("positions", "embed"), pdt
        )

    def positions_for(self, rows: int, cols: int) -> jax.Array:
        """The position table for a rows x cols patch grid: [1 + rows*cols, D]."""
        table = self.position_embedding[...]
        grid = self.config.grid
        if (rows, cols) == (grid, grid):
            return table
        patches = table[1:].reshape(grid, grid, -1).astype(jnp.float32)
        patches = jnp.einsum(
            "rg,gwd,cw->rcd", bicubic_matrix(grid, rows), patches, bicubic_matrix(grid, cols)
        )
        return jnp.concatenate([table[:1], patches.reshape(rows * cols, -1).astype(table.dtype)])

    def __call__(self, pixel_values: jax.Array, dtype) -> jax.Array:
        """float[T, C, H_img, W_img] -> [T, 1 + P, D]."""
        t, c, height, width = pixel_values.shape
        p = self.config.patch_size
        rows, cols = height // p, width // p
        patches = pixel_values.reshape(t, c, rows, p, cols, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(t, rows * cols, c * p * p).astype(dtype)
        x = patches @ self.patch_kernel[...].astype(dtype) + self.patch_bias[...].astype(dtype)
        cls = jnp.broadcast_to(self.cls_token[...].astype(dtype), (t, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        return x + self.positions_for(rows, cols).astype(dtype)[None]


class VisionAttention(nnx.Module):
    def __init__(self, config: VisionConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        d, n, h = config.hidden_size, config.num_heads, config.head_dim
        pdt = runtime.weight_dtype
        self.runtime = runtime
        self.q = layers.param(rngs, (d, n, h), ("embed", "heads", "head_dim"), pdt)
        self.k = layers.param(rngs, (d, n, h), ("embed", "heads", "head_dim"), pdt)
        self.v = layers.param(rngs, (d, n, h), ("embed", "heads", "head_dim"), pdt)
        if config.qkv_bias:
            self.q_bias = layers.param(rngs, (n, h), ("heads", "head_dim"), pdt, init="zeros")
            self.k_bias = layers.param(rngs, (n, h), ("heads", "head_dim"), pdt, init="zeros")
            self.v_bias = layers.param(rngs, (n, h), ("heads", "head_dim"), pdt, init="zeros")
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        if config.qk_norm:
            self.q_norm = layers.RMSNorm(d, config.norm_eps, param_dtype=pdt, rngs=rngs)
            self.k_norm = layers.RMSNorm(d, config.norm_eps, param_dtype=pdt, rngs=rngs)
        else:
            self.q_norm = self.k_norm = None
        self.o = layers.param(rngs, (n, h, d), ("heads", "head_dim", "embed"), pdt)
        self.o_bias = layers.param(rngs, (d,), ("norm",), pdt, init="zeros")

    def _project(self, x, kernel, bias, norm):
        y = jnp.einsum("btd,dnh->btnh", x, kernel[...].astype(x.dtype))
        if bias is not None:
            y = y + bias[...].astype(x.dtype)
        if norm is not None:
            b, t, n, h = y.shape
            y = norm(y.reshape(b, t, n * h)).reshape(b, t, n, h)
        return sharding.constrain(y, ("batch", "length", "heads", "head_dim"))

    def __call__(self, x: jax.Array) -> jax.Array:
        q = self._project(x, self.q, self.q_bias, self.q_norm)
        k = self._project(x, self.k, self.k_bias, self.k_norm)
        v = self._project(x, self.v, self.v_bias, None)
        impl = "xla" if self.runtime.attention == "splash" else self.runtime.attention  # splash: decoder only
        out = layers.attention(q, k, v, None, impl)
        out = jnp.einsum("btnh,nhd->btd", out, self.o[...].astype(x.dtype))
        return out + self.o_bias[...].astype(x.dtype)


class VisionLayer(nnx.Module):
    def __init__(self, config: VisionConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        pdt = runtime.weight_dtype
        norm = lambda: layers.make_norm(config.norm_type, d, config.norm_eps, param_dtype=pdt, rngs=rngs)
        self.norm1 = norm()
        self.attn = VisionAttention(config, runtime, rngs=rngs)
        self.ls1 = layers.param(rngs, (d,), ("norm",), pdt)
        self.norm2 = norm()
        self.fc1 = layers.param(rngs, (d, f), ("embed", "mlp"), pdt)
        self.fc1_bias = layers.param(rngs, (f,), ("mlp",), pdt, init="zeros")
        self.fc2 = layers.param(rngs, (f, d), ("mlp", "embed"), pdt)
        self.fc2_bias = layers.param(rngs, (d,), ("norm",), pdt, init="zeros")
        self.ls2 = layers.param(rngs, (d,), ("norm",), pdt)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        x = x + self.ls1[...].astype(dt) * self.attn(self.norm1(x))
        h = self.norm2(x) @ self.fc1[...].astype(dt) + self.fc1_bias[...].astype(dt)
        h = sharding.constrain(layers.gelu(h), ("batch", "length", "mlp"))
        h = h @ self.fc2[...].astype(dt) + self.fc2_bias[...].astype(dt)
        x = x + self.ls2[...].astype(dt) * h
        return sharding.constrain(x, ("batch", "length", "embed"))


class InternViT(nnx.Module):
    """pixel_values float[T, C, H, W] -> hidden states float[T, 1 + P, D] at ``select_layer``."""

    def __init__(self, config: VisionConfig, runtime: RuntimeConfig = RuntimeConfig(), *, rngs: nnx.Rngs):
        self.config = config
        self.runtime = runtime
        self.embeddings = VisionEmbeddings(config, runtime, rngs=rngs)
        self.layers = nnx.List([VisionLayer(config, runtime, rngs=rngs) for _ in range(config.num_layers)])

    def num_layers_to_run(self) -> int:
        """hidden_states has L + 1 entries (embeddings first); select_layer indexes it."""
        total = self.config.num_layers + 1
        index = self.config.select_layer
        if not -total <= index < total:
            raise ValueError(f"select_layer {index} out of range for {self.config.num_layers} layers")
        return index % total

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        dtype = self.runtime.compute_dtype
        x = self.embeddings(pixel_values, dtype)
        x = sharding.constrain(x, ("batch", "length", "embed"))
        for layer in self.layers[: self.num_layers_to_run()]:
            x = layer(x)
        return x
