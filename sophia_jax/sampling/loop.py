"""The jitted halves of sampling: ``prefill`` (prompt -> decode state) and ``decode`` (a
``lax.while_loop`` of one-token steps).

Both are pure top-level functions of ``(graphdef, params, ...)``: the weights are arguments, so
new weights of the same structure reuse the compiled programs. ``decode`` is meant to be jitted
with the state donated, so the KV cache is updated in place across steps and calls.

Cache layout, for a prompt bucket of L slots and ``max_new`` generated tokens (S = L + max_new):

    slot    0 ........ L-1 | L ........ L+max_new-1
            left-padded     generated token t sits in slot L + t
            prompt

Causality is by slot (the model's rule) and ``kv_mask`` hides the prompt's padding slots, so the
mask never changes during decoding; RoPE positions are ``cumsum(prompt_mask) - 1`` for the prompt
and continue from the prompt's real length, as in transformers' ``generate`` with left padding.

Prefix sharing: a prefill batch holds P distinct prompts; their caches and last logits are
repeated ``n`` times to give B = P * n decode rows. K samples of one prompt cost one vision
forward and one prefill.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from sophia_jax import sharding
from sophia_jax.models.decoder import LayerCache, init_cache
from sophia_jax.sampling import strategy

CACHE_AXES = ("batch", "kv_length", "kv_heads", "head_dim")


@struct.dataclass
class PrefillBatch:
    """Host-built inputs of one prefill. P prompts, B = P * n rows, NS stop-token slots."""

    tokens: jax.Array  # int32[P, L], left-padded
    mask: jax.Array  # bool[P, L], True on real tokens
    pixel_values: Any  # float32[Tiles, C, H, W] (tile budget) or None for text-only
    tile_mask: Any  # bool[Tiles] or None
    seed: jax.Array  # uint32[]
    prompt_index: jax.Array  # int32[B], the prompt's position in the caller's list
    sample_index: jax.Array  # int32[B], which of the prompt's samples the row is
    row_params: strategy.RowParams  # [B] each
    stop_ids: jax.Array  # int32[B, NS], -1 = unused slot
    active: jax.Array  # bool[B]; False for padding rows


@struct.dataclass
class DecodeState:
    """Everything the decode loop carries. ``step`` = generated tokens so far (same for all rows)."""

    cache: list  # list[LayerCache], each [B, S, K, H]
    kv_mask: jax.Array  # bool[B, S]
    last_token: jax.Array  # int32[B], the token to feed next
    position: jax.Array  # int32[B], its RoPE position
    step: jax.Array  # int32[]
    tokens: jax.Array  # int32[B, max_new]; pad_id after a row stops
    logprobs: jax.Array  # float32[B, max_new], behaviour distribution
    raw_logprobs: jax.Array  # float32[B, max_new], temperature 1, full vocabulary
    length: jax.Array  # int32[B], generated tokens including the stop token
    done: jax.Array  # bool[B]
    stopped: jax.Array  # bool[B], done because a stop token was generated
    row_keys: jax.Array  # PRNG key array [B]
    row_params: strategy.RowParams
    stop_ids: jax.Array  # int32[B, NS]


def text_config(model):
    """The decoder config of a CausalLM or an InternVL."""
    return model.config.text if hasattr(model.config, "text") else model.config


def embed(model, tokens, pixel_values=None, tile_mask=None):
    """[B, T, D] embeddings; image features are merged when the model and batch have them."""
    if hasattr(model, "image_features"):
        return model.embed(tokens, pixel_values, tile_mask)
    if pixel_values is not None:
        raise ValueError("images were given to a text-only model")
    return model.embed_tokens(tokens)


def _constrain_state(state: DecodeState) -> DecodeState:
    """Batch over data/fsdp, KV heads over tensor (a no-op outside ``sharding.use_mesh``)."""
    batch = lambda x: sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1))  # noqa: E731
    cache = [LayerCache(sharding.constrain(c.k, CACHE_AXES), sharding.constrain(c.v, CACHE_AXES)) for c in state.cache]
    rest = {
        name: batch(getattr(state, name))
        for name in ("kv_mask", "last_token", "position", "tokens", "logprobs", "raw_logprobs", "length", "done",
                     "stopped", "stop_ids")
    }
    return state.replace(cache=cache, **rest)


def _is_stop(tokens: jax.Array, stop_ids: jax.Array) -> jax.Array:
    return jnp.any(tokens[:, None] == stop_ids, axis=-1)


def prefill(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: PrefillBatch,
    *,
    n: int,
    max_new: int,
    mode: strategy.Mode,
    cache_dtype: str,
    pad_id: int,
) -> DecodeState:
    """Encodes images and prompts once, repeats them ``n`` times and samples the first token."""
    model = nnx.merge(graphdef, params)
    p, length = batch.tokens.shape
    rows = p * n
    positions = jnp.maximum(jnp.cumsum(batch.mask, axis=1) - 1, 0).astype(jnp.int32)
    embeds = embed(model, batch.tokens, batch.pixel_values, batch.tile_mask)
    cache = init_cache(text_config(model), p, length, jnp.dtype(cache_dtype))
    hidden, cache = model.hidden_states(embeds, positions, batch.mask, cache, 0)
    logits = model.logits(hidden[:, -1:], padded=True)[:, 0]  # [P, V_padded]

    def widen(x):  # [P, L, K, H] -> [B, S, K, H]: one copy per sample, room for max_new tokens
        x = jnp.repeat(x, n, axis=0)
        return jnp.pad(x, ((0, 0), (0, max_new), (0, 0), (0, 0)))

    cache = [LayerCache(widen(c.k), widen(c.v)) for c in cache]
    kv_mask = jnp.concatenate([jnp.repeat(batch.mask, n, axis=0), jnp.ones((rows, max_new), bool)], axis=1)
    # A row's randomness depends only on (seed, prompt index, sample index, step), never on how
    # prompts were batched, padded or bucketed.
    base = jax.random.key(batch.seed)
    row_keys = jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))(
        batch.prompt_index, batch.sample_index
    )
    out = strategy.sample(
        jnp.repeat(logits, n, axis=0), strategy.step_keys(row_keys, 0), batch.row_params, mode
    )
    first = jnp.where(batch.active, out.tokens, pad_id)
    stopped = batch.active & _is_stop(first, batch.stop_ids)
    column = lambda x, dtype: jnp.zeros((rows, max_new), dtype).at[:, 0].set(x)  # noqa: E731
    state = DecodeState(
        cache=cache,
        kv_mask=kv_mask,
        last_token=first,
        position=jnp.repeat(positions[:, -1] + 1, n, axis=0),
        step=jnp.ones((), jnp.int32),
        tokens=column(first, jnp.int32),
        logprobs=column(jnp.where(batch.active, out.logprobs, 0.0), jnp.float32),
        raw_logprobs=column(jnp.where(batch.active, out.raw_logprobs, 0.0), jnp.float32),
        length=batch.active.astype(jnp.int32),
        done=~batch.active | stopped | (max_new <= 1),
        stopped=stopped,
        row_keys=row_keys,
        row_params=batch.row_params,
        stop_ids=batch.stop_ids,
    )
    return _constrain_state(state)


def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    state: DecodeState,
    stop_at: jax.Array,
    *,
    mode: strategy.Mode,
    pad_id: int,
) -> DecodeState:
    """Generates tokens until ``step == stop_at`` (<= max_new) or every row is done."""
    model = nnx.merge(graphdef, params)
    max_new = state.tokens.shape[1]
    prompt_slots = state.kv_mask.shape[1] - max_new

    def cond(s: DecodeState):
        return (s.step < stop_at) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        x = embed(model, s.last_token[:, None])
        slot = prompt_slots + s.step - 1  # where last_token's keys and values go
        hidden, cache = model.hidden_states(x, s.position[:, None], s.kv_mask, s.cache, slot)
        logits = model.logits(hidden, padded=True)[:, 0]
        out = strategy.sample(logits, strategy.step_keys(s.row_keys, s.step), s.row_params, mode)
        live = ~s.done
        token = jnp.where(live, out.tokens, pad_id)
        stop = live & _is_stop(token, s.stop_ids)
        put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, s.step))  # noqa: E731
        new = s.replace(
            cache=cache,
            last_token=token,
            position=s.position + 1,
            step=s.step + 1,
            tokens=put(s.tokens, token),
            logprobs=put(s.logprobs, jnp.where(live, out.logprobs, 0.0)),
            raw_logprobs=put(s.raw_logprobs, jnp.where(live, out.raw_logprobs, 0.0)),
            length=jnp.where(live, s.step + 1, s.length),
            done=s.done | stop | (s.step + 1 >= max_new),
            stopped=s.stopped | stop,
        )
        return _constrain_state(new)

    return jax.lax.while_loop(cond, body, state)
