"""The jitted parts of sampling over a paged KV cache (``paged``): ``prefill`` (prompts -> their
blocks in the pool), ``admit`` (start samples in free decode rows) and ``decode`` (a
``lax.while_loop`` of one-token steps over all rows).

All are pure top-level functions; the weights are arguments, so new weights of the same
structure reuse the compiled programs. ``admit`` and ``decode`` are meant to be jitted with the
state donated and ``prefill`` with the pool donated, so the pool is updated in place.

A prompt of L tokens is prefilled without its last token: the pool gets the keys and values of
tokens 0 .. L-2 (compacted, slot = position). Each of its samples starts as a decode row with
``length = L - 1`` and ``last_token = prompt[-1]``; the row's first decode step writes that
token's keys and values and gives the logits of generated token 0. So one program (the step)
produces every generated token, a row can start at any step, and the prompt's prefill and
vision forward are shared by all its samples, whenever they start.

Rows are independent: each has its own length (= RoPE position of ``last_token``), its own
count of generated tokens and its own PRNG key ``fold_in(fold_in(key(seed), prompt), sample)``;
generated token t uses ``fold_in(row_key, t)``. A sample's tokens therefore depend on
(seed, prompt, sample) and the weights only, not on its row or on what else is decoding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from sophia_jax import sharding
from sophia_jax.models.decoder import init_cache
from sophia_jax.sampling import paged, strategy


@struct.dataclass
class PrefillBatch:
    """Host-built inputs of one prefill. P prompts, bucket L slots, bs block size."""

    tokens: jax.Array  # int32[P, L], left-padded prompts without their last token
    mask: jax.Array  # bool[P, L], True on real tokens
    pixel_values: Any  # float32[Tiles, C, H, W] (tile budget) or None for text-only
    tile_mask: Any  # bool[Tiles] or None
    blocks: jax.Array  # int32[P, ceil(L / bs)], pool blocks receiving each prompt (scratch = 0)


@struct.dataclass
class Admission:
    """Samples to start: rows where ``mask`` is True get fresh state. All [B] unless noted."""

    mask: jax.Array  # bool
    length: jax.Array  # int32, prompt tokens already in the pool (prompt length - 1)
    last_token: jax.Array  # int32, the prompt's last token
    prompt_index: jax.Array  # int32
    sample_index: jax.Array  # int32
    stop_ids: jax.Array  # int32[B, NS], -1 = unused slot
    copy_src: jax.Array  # int32, a prompt's partial last block, copied to copy_dst (0 -> 0 = none)
    copy_dst: jax.Array  # int32


@struct.dataclass
class DecodeState:
    """Everything the decode loop carries. B rows, C = decode chunk."""

    pool: list  # per layer [NB, bs, 2K, H] (paged: keys and values interleaved by KV head)
    length: jax.Array  # int32[B], slots filled = RoPE position of last_token
    last_token: jax.Array  # int32[B], the token to feed next
    generated: jax.Array  # int32[B], tokens generated so far
    max_new: jax.Array  # int32[], tokens a sample may generate
    done: jax.Array  # bool[B]; True for free rows
    stopped: jax.Array  # bool[B], done because a stop token was generated
    row_keys: jax.Array  # uint32[B, key words], raw PRNG key data
    row_params: strategy.RowParams  # [B] each
    stop_ids: jax.Array  # int32[B, NS]
    seed: jax.Array  # uint32[]
    out_tokens: jax.Array  # int32[B, C], tokens of the last decode call, from column 0 per row
    out_logprobs: jax.Array  # float32[B, C], behaviour distribution
    out_raw: jax.Array  # float32[B, C], temperature 1, full vocabulary


def text_config(model):
    """The decoder config of a CausalLM or an InternVL."""
    return model.config.text if hasattr(model.config, "text") else model.config


def language_model(model):
    """The CausalLM of a CausalLM or an InternVL."""
    return getattr(model, "language_model", model)


def embed(model, tokens, pixel_values=None, tile_mask=None):
    """[B, T, D] embeddings; image features are merged when the model and batch have them."""
    if hasattr(model, "image_features"):
        return model.embed(tokens, pixel_values, tile_mask)
    if pixel_values is not None:
        raise ValueError("images were given to a text-only model")
    return model.embed_tokens(tokens)


def init_state(config, seed, max_new, *, rows: int, chunk: int, num_blocks: int, block_size: int, dtype,
               stop_slots: int) -> DecodeState:
    """All rows free, the pool zeroed."""
    zeros = lambda shape, dt: jnp.zeros(shape, dt)  # noqa: E731
    key_words = jax.random.key_data(jax.random.key(0)).shape
    return DecodeState(
        pool=paged.init_pool(config, num_blocks, block_size, jnp.dtype(dtype)),
        length=zeros((rows,), jnp.int32), last_token=zeros((rows,), jnp.int32),
        generated=zeros((rows,), jnp.int32), max_new=jnp.asarray(max_new, jnp.int32),
        done=jnp.ones((rows,), bool), stopped=zeros((rows,), bool),
        row_keys=zeros((rows, *key_words), jnp.uint32),
        row_params=strategy.row_params(rows, 1.0),
        stop_ids=jnp.full((rows, stop_slots), -1, jnp.int32), seed=jnp.asarray(seed, jnp.uint32),
        out_tokens=zeros((rows, chunk), jnp.int32), out_logprobs=zeros((rows, chunk), jnp.float32),
        out_raw=zeros((rows, chunk), jnp.float32),
    )


def map_axes(fn, state: DecodeState) -> DecodeState:
    """``fn(leaf, logical axes)`` over every leaf: rows over the batch axes, the pool's KV heads
    over tensor (``paged.POOL_AXES``), scalars replicated. The one layout of the state: the programs
    constrain to it and the sampler puts a fresh state in it, so every call sees the same shardings."""
    rows = lambda x: fn(x, ("batch",) + (None,) * (x.ndim - 1) if x.ndim else ())  # noqa: E731
    return jax.tree.map(rows, state.replace(pool=None)).replace(pool=[fn(x, paged.POOL_AXES) for x in state.pool])


def _constrain_rows(state: DecodeState) -> DecodeState:
    """``map_axes``'s layout as sharding constraints (a no-op outside ``sharding.use_mesh``)."""
    return map_axes(sharding.constrain, state)


def prefill(graphdef: nnx.GraphDef, params: nnx.State, pool: list, batch: PrefillBatch, *, cache_dtype: str) -> list:
    """Encodes images and prompts once and stores their keys and values, compacted, in the pool."""
    model = nnx.merge(graphdef, params)
    p, length = batch.tokens.shape
    bs = pool[0].shape[1]
    slots = batch.blocks.shape[1] * bs
    positions = jnp.maximum(jnp.cumsum(batch.mask, axis=1) - 1, 0).astype(jnp.int32)
    embeds = embed(model, batch.tokens, batch.pixel_values, batch.tile_mask)
    cache = init_cache(text_config(model), p, length, jnp.dtype(cache_dtype))
    _, cache = model.hidden_states(embeds, positions, batch.mask, cache, 0)
    # Left padding -> slot i holds position i: row p's real tokens start at L - len(p).
    pad = length - jnp.sum(batch.mask, axis=1)
    source = jnp.clip(pad[:, None] + jnp.arange(slots)[None, :], 0, length - 1)  # [P, slots]

    def store(layer_pool, k, v):  # k, v: [P, L, K, H] -> the prompts' blocks of the layer's pool
        x = jnp.take_along_axis(paged.combine(k, v), source[:, :, None, None], axis=1).astype(layer_pool.dtype)
        return layer_pool.at[batch.blocks].set(x.reshape(p, -1, bs, *x.shape[2:]))

    new = [store(layer_pool, c.k, c.v) for layer_pool, c in zip(pool, cache)]
    return paged.constrain_pool(new)


def admit(state: DecodeState, new: Admission, row_params: strategy.RowParams) -> DecodeState:
    """Starts the samples of ``new`` in their rows (and copies their partial prompt blocks)."""
    base = jax.random.key(state.seed)
    keys = jax.vmap(lambda i, j: jax.random.key_data(jax.random.fold_in(jax.random.fold_in(base, i), j)))(
        new.prompt_index, new.sample_index)
    pick = lambda fresh, old: jnp.where(new.mask.reshape(-1, *(1,) * (old.ndim - 1)), fresh, old)  # noqa: E731
    pool = [x.at[new.copy_dst].set(x[new.copy_src]) for x in state.pool]
    state = state.replace(
        pool=pool,
        length=pick(new.length, state.length),
        last_token=pick(new.last_token, state.last_token),
        generated=pick(jnp.zeros_like(state.generated), state.generated),
        done=pick(jnp.zeros_like(state.done), state.done),
        stopped=pick(jnp.zeros_like(state.stopped), state.stopped),
        row_keys=pick(keys, state.row_keys),
        row_params=strategy.RowParams(*(pick(a, b) for a, b in zip(row_params, state.row_params))),
        stop_ids=pick(new.stop_ids, state.stop_ids),
    )
    return _constrain_rows(state)


ROW_FIELDS = ("length", "last_token", "generated", "done", "stopped", "row_keys", "stop_ids", "out_tokens",
              "out_logprobs", "out_raw")


def select_rows(pool: list, state: DecodeState, rows: jax.Array) -> DecodeState:
    """A state of ``len(rows)`` decode rows: row i is the old row ``rows[i]``, or a free row where
    ``rows[i]`` is past the old width; ``pool`` becomes its pool unchanged (apart from the
    state, so that it alone is donated: the row arrays change shape). Lets the tail of a run,
    when nothing waits, decode on fewer rows (and a later call widen again)."""
    width = state.done.shape[0]
    index = jnp.minimum(rows, width - 1)
    picked = {name: getattr(state, name)[index] for name in ROW_FIELDS}
    picked["done"] = jnp.where(rows < width, picked["done"], True)
    row_params = strategy.RowParams(*(x[index] for x in state.row_params))
    return _constrain_rows(state.replace(pool=pool, row_params=row_params, **picked))


def reset(state: DecodeState, seed: jax.Array, max_new: jax.Array) -> DecodeState:
    """All rows free, for a new ``generate`` call (the pool's contents are dead)."""
    return state.replace(done=jnp.ones_like(state.done), seed=seed.astype(jnp.uint32),
                         max_new=max_new.astype(jnp.int32))


def release(state: DecodeState, rows: jax.Array) -> DecodeState:
    """Marks rows (bool[B]) free: the host took their blocks back (preemption)."""
    return state.replace(done=state.done | rows)


def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    state: DecodeState,
    table: jax.Array,
    steps: jax.Array,
    refill_at: jax.Array,
    *,
    mode: strategy.Mode,
    pad_id: int,
) -> DecodeState:
    """Up to ``steps`` (<= C) one-token steps of every live row over the block ``table``
    (int32[B, MB]); stops early when every row is done or ``refill_at`` rows are done.

    Row r's tokens of this call are ``out_*[r, :generated_after - generated_before]``.
    """
    model = nnx.merge(graphdef, params)
    lm = language_model(model)

    def cond(carry):
        t, s = carry
        n_done = jnp.sum(s.done)
        return (t < steps) & (n_done < s.done.shape[0]) & (n_done < refill_at)

    def body(carry):
        t, s = carry
        live = ~s.done
        x = embed(model, s.last_token[:, None])
        hidden, pool = paged.decoder_step(lm, x, s.pool, table, s.length, live)
        logits = model.logits(hidden, padded=True)[:, 0]
        keys = jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(s.row_keys), s.generated)
        out = strategy.sample(logits, keys, s.row_params, mode)
        token = jnp.where(live, out.tokens, pad_id)
        stop = live & jnp.any(token[:, None] == s.stop_ids, axis=-1)
        generated = s.generated + live
        put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, t))  # noqa: E731
        new = s.replace(
            pool=pool,
            length=s.length + live,
            last_token=jnp.where(live, token, s.last_token),
            generated=generated,
            done=s.done | stop | (generated >= s.max_new),
            stopped=s.stopped | stop,
            out_tokens=put(s.out_tokens, token),
            out_logprobs=put(s.out_logprobs, jnp.where(live, out.logprobs, 0.0)),
            out_raw=put(s.out_raw, jnp.where(live, out.raw_logprobs, 0.0)),
        )
        return t + 1, _constrain_rows(new)

    _, state = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))
    return state
