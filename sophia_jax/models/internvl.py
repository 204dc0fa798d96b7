"""InternVL: InternViT -> pixel shuffle -> mlp1 projector -> decoder LM.

Image features replace the embeddings of the image-context tokens in flat order (batch-major,
then sequence position; tiles in ``pixel_values`` order), the same semantics as transformers'
``InternVLForConditionalGeneration`` and the original ``InternVLChatModel``.

Shapes stay static: ``pixel_values`` may hold a fixed tile budget with padding tiles at the end,
marked by ``tile_mask``; padding tiles are encoded but never placed, so one compiled graph
serves any mix of images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sophia_jax import sharding
from sophia_jax.models import layers
from sophia_jax.models.config import InternVLConfig, RuntimeConfig
from sophia_jax.models.decoder import CausalLM, LayerCache
from sophia_jax.models.internvit import InternViT


def pixel_shuffle(x: jax.Array, version: str = "v2") -> jax.Array:
    """Merges each 2x2 block of patches into one token with 4x the channels.

    x: [T, R, C, D] -> [T, R/2 * C/2, 4D]. Channel order is (row offset, column offset, D).
    v2 orders output tokens row-major; v1 (old checkpoints) column-major.
    """
    t, rows, cols, d = x.shape
    if rows % 2 or cols % 2:
        raise ValueError(f"pixel shuffle needs an even patch grid, got {rows}x{cols}")
    x = x.reshape(t, rows // 2, 2, cols // 2, 2, d)
    if version == "v2":
        x = x.transpose(0, 1, 3, 2, 4, 5)
    elif version == "v1":
        x = x.transpose(0, 3, 1, 2, 4, 5)
    else:
        raise ValueError(f"unknown pixel shuffle version {version!r}")
    return x.reshape(t, (rows // 2) * (cols // 2), 4 * d)


class Projector(nnx.Module):
    """mlp1: LayerNorm(4D, eps 1e-5) -> Linear -> exact GELU -> Linear."""

    def __init__(self, config: InternVLConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        scale = int(round(1 / config.downsample_ratio))
        d_in = config.vision.hidden_size * scale * scale
        d_out = config.text.hidden_size
        pdt = runtime.weight_dtype
        self.norm = layers.LayerNorm(d_in, config.projector_norm_eps, param_dtype=pdt, rngs=rngs)
        self.fc1 = layers.param(rngs, (d_in, d_out), ("mlp", "embed"), pdt)
        self.fc1_bias = layers.param(rngs, (d_out,), ("norm",), pdt, init="zeros")
        self.fc2 = layers.param(rngs, (d_out, d_out), ("mlp", "embed"), pdt)
        self.fc2_bias = layers.param(rngs, (d_out,), ("norm",), pdt, init="zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        x = self.norm(x) @ self.fc1[...].astype(dt) + self.fc1_bias[...].astype(dt)
        x = layers.gelu(x)
        return x @ self.fc2[...].astype(dt) + self.fc2_bias[...].astype(dt)


def merge_image_features(
    embeds: jax.Array, input_ids: jax.Array, features: jax.Array, image_token_id: int
) -> jax.Array:
    """Writes features [F, D] into the image-token positions of embeds [B, L, D], in flat order."""
    b, length, d = embeds.shape
    is_image = (input_ids == image_token_id).reshape(-1)
    index = jnp.clip(jnp.cumsum(is_image) - 1, 0, features.shape[0] - 1)
    placed = jnp.take(features, index, axis=0).astype(embeds.dtype)
    merged = jnp.where(is_image[:, None], placed, embeds.reshape(b * length, d))
    return merged.reshape(b, length, d)


class InternVL(nnx.Module):
    """The InternVL vision-language model.

    ``model(input_ids, pixel_values=None, attention_mask=None) -> float32[B, L, V]``

    input_ids: int32[B, L] holding ``config.image_token_id`` wherever an image feature goes.
    pixel_values: float32[T, 3, H, W], all tiles of the batch in flat order (transformers
    convention), optionally padded to a tile budget with ``tile_mask`` bool[T] marking real tiles.
    attention_mask: [B, L], 1 for real tokens, 0 for padding.
    """

    def __init__(self, config: InternVLConfig, runtime: RuntimeConfig = RuntimeConfig(), *, rngs: nnx.Rngs):
        self.config = config
        self.runtime = runtime
        self.vision = InternViT(config.vision, runtime, rngs=rngs)
        self.projector = Projector(config, runtime, rngs=rngs)
        self.language_model = CausalLM(config.text, runtime, rngs=rngs)

    def image_features(self, pixel_values: jax.Array, tile_mask: jax.Array | None = None) -> jax.Array:
        """float[T, C, H, W] -> [T, tokens_per_tile, D_text]; padding tiles give zeros."""
        patch = self.config.vision.patch_size
        rows, cols = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
        hidden = self.vision(pixel_values)[:, 1:]  # drop CLS
        hidden = hidden.reshape(hidden.shape[0], rows, cols, hidden.shape[-1])
        features = self.projector(pixel_shuffle(hidden, self.config.ps_version))
        if tile_mask is not None:
            features = jnp.where(tile_mask[:, None, None], features, 0)
        return sharding.constrain(features, ("batch", "length", "embed"))

    def embed(
        self, input_ids: jax.Array, pixel_values: jax.Array | None = None, tile_mask: jax.Array | None = None
    ) -> jax.Array:
        """Token embeddings with image features merged in: [B, L, D]."""
        embeds = self.language_model.embed_tokens(input_ids)
        if pixel_values is None:
            return embeds
        features = self.image_features(pixel_values, tile_mask)
        _check_image_token_count(input_ids, features, tile_mask, self.config.image_token_id)
        features = features.reshape(-1, features.shape[-1])
        return merge_image_features(embeds, input_ids, features, self.config.image_token_id)

    @property
    def text_model(self) -> CausalLM:
        return self.language_model

    def embed_rows(self, input_ids: jax.Array, pixel_values: jax.Array | None = None,
                   tile_mask: jax.Array | None = None) -> jax.Array:
        """Embeddings with image features merged row by row: [B, L, D].

        For packed training rows, where each row owns a tile budget: pixel_values
        float[B, R, C, H, W], tile_mask bool[B, R] (a row's real tiles first). The i-th image
        token of row b takes the i-th feature of row b's tiles, so rows shard independently
        over the batch axis and padding tiles never shift another row's features.
        """
        embeds = self.language_model.embed_tokens(input_ids)
        if pixel_values is None:
            return embeds
        b, r = tile_mask.shape
        features = self.image_features(pixel_values.reshape(b * r, *pixel_values.shape[2:]), tile_mask.reshape(-1))
        features = features.reshape(b, r * features.shape[1], features.shape[-1]).astype(embeds.dtype)
        is_image = input_ids == self.config.image_token_id
        index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
        placed = jnp.take_along_axis(features, index[:, :, None], axis=1)
        return sharding.constrain(jnp.where(is_image[:, :, None], placed, embeds), ("batch", "length", "embed"))

    def hidden_states(
        self,
        embeds: jax.Array,
        positions: jax.Array,
        kv_mask: jax.Array,
        cache: list[LayerCache] | None = None,
        cache_index: jax.Array | int = 0,
        segment_ids: jax.Array | None = None,
    ):
        """See ``CausalLM.hidden_states``."""
        return self.language_model.hidden_states(embeds, positions, kv_mask, cache, cache_index, segment_ids)

    def logits(self, hidden: jax.Array, padded: bool = False) -> jax.Array:
        return self.language_model.logits(hidden, padded)

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        *,
        tile_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        embeds = self.embed(input_ids, pixel_values, tile_mask)
        hidden, _ = self.hidden_states(embeds, positions, attention_mask)
        return self.logits(hidden)


def _check_image_token_count(input_ids, features, tile_mask, image_token_id) -> None:
    """Fails loudly when the image tokens and the real tiles disagree (only outside jit)."""
    if isinstance(input_ids, jax.core.Tracer) or isinstance(tile_mask, jax.core.Tracer):
        return
    n_tokens = int(np.sum(np.asarray(input_ids) == image_token_id))
    n_tiles = features.shape[0] if tile_mask is None else int(np.sum(np.asarray(tile_mask)))
    n_features = n_tiles * features.shape[1]
    if n_tokens != n_features:
        raise ValueError(
            f"image tokens and image features do not match: {n_tokens} tokens with id "
            f"{image_token_id}, {n_features} features ({n_tiles} tiles x {features.shape[1]})"
        )
