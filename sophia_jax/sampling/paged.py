"""Paged KV cache: a pool of fixed-size blocks shared by all decode rows, and the one-token
decoder step that reads it.

Pool layout, per layer: one array ``[NB, bs, 2K, H]`` (NB blocks of ``bs`` slots), keys and
values of KV head ``k`` at combined heads ``2k`` and ``2k + 1``: the layout of the TPU ragged
paged attention kernel, so both attention paths read the same pool. Block 0 is a scratch block
that is never handed out: finished rows and padding entries of a block table point at it, so
their writes land somewhere harmless. A row's block table ``int32[MB]`` lists its blocks in
order; slot ``i`` of the row's sequence is slot ``i % bs`` of block ``table[i // bs]``, and slot
``i`` holds the token at RoPE position ``i`` (prompts are stored compacted, without padding).
Full blocks of a prompt are shared by its samples (the host reference-counts them); a row only
writes at or after its own prompt length, so shared blocks are never written.

Decode attention visits each row's own filled blocks with an online softmax, so a step costs
what the rows hold, not what the pool or the table could hold, nor B times the longest row.
With ``runtime.attention = "fused"`` a TPU compile uses JAX's Pallas ragged paged attention
kernel instead (``kernel_attention``); other platforms keep the plain path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sophia_jax import sharding
from sophia_jax.models import layers

POOL_AXES = (None, None, "kv_heads", "head_dim")
SCRATCH_BLOCK = 0


def init_pool(text_config, num_blocks: int, block_size: int, dtype) -> list[jax.Array]:
    """Zeroed pool: per layer ``[num_blocks, block_size, 2K, H]``."""
    shape = (num_blocks, block_size, 2 * text_config.num_kv_heads, text_config.head_dim)
    return [jnp.zeros(shape, dtype) for _ in range(text_config.num_layers)]


def constrain_pool(pool: list[jax.Array]) -> list[jax.Array]:
    return [sharding.constrain(x, POOL_AXES) for x in pool]


def combine(k: jax.Array, v: jax.Array) -> jax.Array:
    """[..., K, H] keys and values -> [..., 2K, H], interleaved as the pool stores them."""
    return jnp.stack([k, v], axis=-2).reshape(*k.shape[:-2], 2 * k.shape[-2], k.shape[-1])


def paged_attention(q: jax.Array, pool: jax.Array, table: jax.Array, visible: jax.Array) -> jax.Array:
    """One query per row against its paged keys, visiting each row's own blocks only.

    q: [B, N, H]; pool: [NB, bs, 2K, H]; table: int32[B, MB]; visible: int32[B], how many
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
    bs, kv = pool.shape[1], pool.shape[2] // 2
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
        blocks = pool[ids].astype(jnp.float32).reshape(b, bs, kv, 2, h)  # [W, bs, K, k|v, H]
        kb, vb = blocks[..., 0, :], blocks[..., 1, :]
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


def kernel_attention(q: jax.Array, pool: jax.Array, table: jax.Array, visible: jax.Array) -> jax.Array:
    """``paged_attention`` through ``jax.experimental.pallas.ops.tpu`` ragged paged attention
    (TPU only): each row is a sequence of one query token. Free rows (``visible`` 0) attend to
    slot 0 of their table's first block (scratch); their output is discarded.

    Under ``sharding.use_mesh`` the kernel runs per device (``shard_map``): rows over the
    batch axes, heads over ``tensor`` when it divides both the query and the KV heads.
    """
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

    def local(q, pool, table, visible):
        rows, (bs, pages) = q.shape[0], (pool.shape[1], table.shape[1])
        # Block sizes as JAX's tuned tables choose them for decode (1,024 KV tokens, 32 queries
        # per kernel block); given here because the kernel would look them up from the devices
        # of the host, which an AOT compile does not run on.
        return ragged_paged_attention(
            q, pool, jnp.maximum(visible, 1), table, jnp.arange(rows + 1, dtype=jnp.int32),
            jnp.full((1,), rows, jnp.int32), sm_scale=q.shape[-1] ** -0.5,
            num_kv_pages_per_block=max(1, min(pages, 1024 // bs)), num_queries_per_block=min(32, rows))

    active = sharding.active_mesh()
    if active is None:
        return local(q, pool, table, visible)
    mesh, rules = active
    batch = sharding.logical_to_spec(("batch",), q.shape[:1], mesh, rules)[0]
    heads = sharding.logical_to_spec(("heads",), q.shape[1:2], mesh, rules)[0]
    if heads != sharding.logical_to_spec(("kv_heads",), (pool.shape[2] // 2,), mesh, rules)[0]:
        heads = None  # grouped heads must split alike; otherwise every device takes all heads
    P = jax.sharding.PartitionSpec
    return jax.shard_map(local, mesh=mesh, in_specs=(P(batch, heads, None), P(None, None, heads, None),
                                                     P(batch, None), P(batch)),
                         out_specs=P(batch, heads, None), check_vma=False)(q, pool, table, visible)


def attention(q: jax.Array, pool: jax.Array, table: jax.Array, visible: jax.Array, impl: str) -> jax.Array:
    """Decode attention by ``runtime.attention``: "fused" picks the TPU kernel when the program
    is compiled for TPU (``lax.platform_dependent``: chosen at lowering, so an AOT compile for a
    TPU slice on a CPU host gets it too) and the plain path elsewhere; "xla" is always plain.
    The kernel needs a head dim that is a multiple of 128 (the SOPHIA models' is 128); smaller
    heads (the tiny test models) keep the plain path."""
    if impl == "fused" and q.shape[-1] % 128 == 0:
        return jax.lax.platform_dependent(q, pool, table, visible, tpu=kernel_attention, default=paged_attention)
    if impl not in ("xla", "fused"):
        raise ValueError(f"unknown attention implementation {impl!r}; expected 'xla' or 'fused'")
    return paged_attention(q, pool, table, visible)


def decoder_step(lm, x: jax.Array, pool: list[jax.Array], table: jax.Array, length: jax.Array,
                 live: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """One token per row through a ``CausalLM``'s decoder stack over the paged cache.

    x: [B, 1, D] embeddings of the token at position ``length`` (int32[B], the row's filled
    slots); its keys and values are written to slot ``length`` first, then it attends to slots
    ``0 .. length``. Rows with ``live`` False write to the scratch block. Returns the final-normed
    hidden states [B, 1, D] and the pool. Mirrors ``decoder.Attention`` / ``DecoderLayer``
    (same projections, RoPE, residuals), with the paged read in place of the dense one.
    """
    c = lm.config
    bs = pool[0].shape[1]
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
        cache = cache.at[block, offset].set(combine(k[:, 0], v[:, 0]).astype(cache.dtype))
        new_pool.append(cache)
        out = attention(q[:, 0], cache, table, visible, lm.runtime.attention).astype(x.dtype)
        x = x + jnp.einsum("bnh,nhd->bd", out, attn.o[...].astype(x.dtype))[:, None]
        x = x + layer.mlp(layer.post_attention_norm(x))
        x = sharding.constrain(x, ("batch", "length", "embed"))
    return lm.norm(x), constrain_pool(new_pool)
