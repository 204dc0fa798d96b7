"""Paged KV cache: a pool of fixed-size blocks shared by all decode rows, and the one-token
decoder step that reads it.

Pool layout, per layer: ``k, v: [NB, bs, K, H]`` (NB blocks of ``bs`` slots). Block 0 is a
scratch block that is never handed out: finished rows and padding entries of a block table
point at it, so their writes land somewhere harmless. A row's block table ``int32[MB]`` lists
its blocks in order; slot ``i`` of the row's sequence is slot ``i % bs`` of block
``table[i // bs]``, and slot ``i`` holds the token at RoPE position ``i`` (prompts are stored
compacted, without padding). Full blocks of a prompt are shared by its samples (the host
reference-counts them); a row only writes at or after its own prompt length, so shared blocks
are never written.

Decode attention visits each row's own filled blocks with an online softmax, so a step costs
what the rows hold, not what the pool or the table could hold, nor B times the longest row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sophia_jax import sharding
from sophia_jax.models import layers
from sophia_jax.models.decoder import LayerCache

POOL_AXES = (None, None, "kv_heads", "head_dim")
SCRATCH_BLOCK = 0


def init_pool(text_config, num_blocks: int, block_size: int, dtype) -> list[LayerCache]:
    """Zeroed pool: per layer ``k, v: [num_blocks, block_size, K, H]``."""
    shape = (num_blocks, block_size, text_config.num_kv_heads, text_config.head_dim)
    return [LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(text_config.num_layers)]


def constrain_pool(pool: list[LayerCache]) -> list[LayerCache]:
    return [LayerCache(sharding.constrain(c.k, POOL_AXES), sharding.constrain(c.v, POOL_AXES)) for c in pool]


def paged_attention(q: jax.Array, k_pool: jax.Array, v_pool: jax.Array, table: jax.Array,
                    visible: jax.Array) -> jax.Array:
    """One query per row against its paged keys, visiting each row's own blocks only.

    q: [B, N, H]; k_pool, v_pool: [NB, bs, K, H]; table: int32[B, MB]; visible: int32[B], how many
    leading slots each row may attend to (0 for a free row, whose output is 0). Returns [B, N, H].
    Scores and the running softmax are float32.

    The (row, block) pairs the rows need, ``sum(ceil(visible / bs))`` of them, form a work list
    in row order, taken B at a time: each pass gathers B blocks, scores them against their rows'
    queries and folds them into per-row online-softmax accumulators (scatter max / add by row).
    A pass costs the same as one block of every row, but the passes cover the rows' own fill,
    not B times the longest row's, so rows of very different lengths decode at the cost of what
    they hold.
    """
    b, n, h = q.shape
    bs, kv = k_pool.shape[1], k_pool.shape[2]
    g = n // kv
    qg = q.reshape(b, kv, g, h).astype(jnp.float32) * h**-0.5
    lowest = jnp.finfo(jnp.float32).min
    counts = (visible + bs - 1) // bs  # blocks per row
    ends = jnp.cumsum(counts)
    starts = ends - counts
    total = ends[-1]

    def body(step, carry):
        peak, mass, acc = carry
        item = step * b + jnp.arange(b)  # this pass's positions in the work list
        real = item < total
        rows = jnp.minimum(jnp.sum(ends[None, :] <= item[:, None], axis=1), b - 1)
        j = item - starts[rows]  # the row's block index
        ids = jnp.where(real, table[rows, jnp.clip(j, 0, table.shape[1] - 1)], SCRATCH_BLOCK)
        kb = k_pool[ids].astype(jnp.float32)  # [W, bs, K, H]
        vb = v_pool[ids].astype(jnp.float32)
        scores = jnp.einsum("wkgh,wskh->wkgs", qg[rows], kb)
        valid = real[:, None] & ((j * bs)[:, None] + jnp.arange(bs)[None, :] < visible[rows][:, None])
        valid = valid[:, None, None, :]
        scores = jnp.where(valid, scores, lowest)
        target = jnp.where(real, rows, b)  # padding items land out of range and are dropped
        new_peak = peak.at[target].max(jnp.max(scores, axis=-1), mode="drop")
        p = jnp.where(valid, jnp.exp(scores - new_peak[rows][..., None]), 0.0)
        scale = jnp.exp(peak - new_peak)
        mass = (mass * scale).at[target].add(jnp.sum(p, axis=-1), mode="drop")
        acc = (acc * scale[..., None]).at[target].add(jnp.einsum("wkgs,wskh->wkgh", p, vb), mode="drop")
        return new_peak, mass, acc

    init = (jnp.full((b, kv, g), lowest), jnp.zeros((b, kv, g)), jnp.zeros((b, kv, g, h)))
    _, mass, acc = jax.lax.fori_loop(0, (total + b - 1) // b, body, init)
    out = acc / jnp.maximum(mass, jnp.finfo(jnp.float32).tiny)[..., None]
    return out.reshape(b, n, h).astype(q.dtype)


def decoder_step(lm, x: jax.Array, pool: list[LayerCache], table: jax.Array, length: jax.Array,
                 live: jax.Array) -> tuple[jax.Array, list[LayerCache]]:
    """One token per row through a ``CausalLM``'s decoder stack over the paged cache.

    x: [B, 1, D] embeddings of the token at position ``length`` (int32[B], the row's filled
    slots); its keys and values are written to slot ``length`` first, then it attends to slots
    ``0 .. length``. Rows with ``live`` False write to the scratch block. Returns the final-normed
    hidden states [B, 1, D] and the pool. Mirrors ``decoder.Attention`` / ``DecoderLayer``
    (same projections, RoPE, residuals), with the paged read in place of the dense one.
    """
    c = lm.config
    bs = pool[0].k.shape[1]
    rows = jnp.arange(x.shape[0])
    block = jnp.where(live, table[rows, length // bs], SCRATCH_BLOCK)
    offset = length % bs
    visible = jnp.where(live, length + 1, 0)
    cos, sin = layers.rope_tables(length[:, None], c.head_dim, c.rope_theta, c.rope_scaling,
                                  c.max_position_embeddings)
    new_pool = []
    for layer, cache in zip(lm.layers, pool):
        attn = layer.attn
        h = layer.input_norm(x)
        q = attn._project(h, attn.q, attn.q_bias, attn.q_norm, ("batch", "length", "heads", "head_dim"))
        k = attn._project(h, attn.k, attn.k_bias, attn.k_norm, ("batch", "length", "kv_heads", "head_dim"))
        v = attn._project(h, attn.v, attn.v_bias, None, ("batch", "length", "kv_heads", "head_dim"))
        q = layers.apply_rope(q, cos, sin)
        k = layers.apply_rope(k, cos, sin)
        k_pool = cache.k.at[block, offset].set(k[:, 0].astype(cache.k.dtype))
        v_pool = cache.v.at[block, offset].set(v[:, 0].astype(cache.v.dtype))
        new_pool.append(LayerCache(k_pool, v_pool))
        out = paged_attention(q[:, 0], k_pool, v_pool, table, visible).astype(x.dtype)
        x = x + jnp.einsum("bnh,nhd->bd", out, attn.o[...].astype(x.dtype))[:, None]
        x = x + layer.mlp(layer.post_attention_norm(x))
        x = sharding.constrain(x, ("batch", "length", "embed"))
    return lm.norm(x), constrain_pool(new_pool)
