"""Sampling strategy: next-token logits -> a token and the two log-probs that RL needs.

Pure, jit-friendly functions over a batch of rows. Settings arrive as per-row arrays
(``RowParams``), so changing temperature, top-p or top-k values never recompiles; only the static
``Mode`` (is top-k on, and its largest k; is top-p on) changes the graph.

The distribution a row samples from, its *behaviour distribution*:

1. ``logits / temperature``; temperature 0 means greedy (argmax of the raw logits);
2. top-k (``top_k > 0``): keep the k largest; tokens tied with the k-th value are all kept;
3. top-p (``top_p < 1``) over what is left, renormalised: keep the most probable tokens until
   their mass reaches ``top_p``, including the token that crosses it; tokens tied at that
   threshold are all kept;
4. renormalise over the kept support. This is the order transformers applies its warpers in.

Each chosen token gets two log-probs:

* ``logprobs`` -- log-probability under the behaviour distribution (after temperature,
  renormalised over the top-k/top-p support; 0 for greedy rows, whose distribution is a point
  mass). It is what vLLM calls the sampled log-prob, and the behaviour policy of truncated
  importance sampling: use it whenever a ratio must compare against what was *really* sampled.
* ``raw_logprobs`` -- log-softmax of the untouched logits at temperature 1 over the real
  vocabulary (padding rows of a padded vocabulary are -inf and carry no mass). It equals what a
  trainer recomputes with a teacher-forced forward pass, so pi_new / pi_old ratios of the model
  itself use it. The two differ by temperature and by log(kept mass); mixing them biases ratios.

Top-p needs no sort. The kept set is ``{i: mass of tokens strictly more probable than i <
top_p}``, an upper set in probability, so it is ``probs >= tau`` for one threshold ``tau``. Positive
float32 values order like their int32 bit patterns, so ``tau`` is found exactly by a bisection over
bit patterns (31 passes of compare-and-sum). On CPU that costs ~0.6 ms per step for 8 rows of a
32K vocabulary where a sort costs ~40 ms, and on TPU it avoids a full-vocabulary sort every step. The token is then drawn by
inverse CDF with one uniform per row (a Gumbel trick would need a random number per vocab entry).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RowParams(NamedTuple):
    """Per-row sampling settings, all shape [B]."""

    temperature: jax.Array  # float32; 0 = greedy
    top_p: jax.Array  # float32 in (0, 1]; 1 = off
    top_k: jax.Array  # int32; 0 = off


class Mode(NamedTuple):
    """Static switches of the sampling graph.

    greedy: every row is greedy (skips all sampling work); k_cap: 0 (top-k off) or an upper
    bound on every row's top_k; top_p: some row has top_p < 1.
    """

    k_cap: int = 0
    top_p: bool = False
    greedy: bool = False


class SampleOutput(NamedTuple):
    tokens: jax.Array  # int32[B]
    logprobs: jax.Array  # float32[B], behaviour distribution
    raw_logprobs: jax.Array  # float32[B], temperature 1, full vocabulary


def row_params(batch: int, temperature: float, top_p: float = 1.0, top_k: int = 0) -> RowParams:
    """The same settings for every row."""
    return RowParams(
        jnp.full((batch,), temperature, jnp.float32),
        jnp.full((batch,), top_p, jnp.float32),
        jnp.full((batch,), top_k, jnp.int32),
    )


def _argmax(x: jax.Array) -> jax.Array:
    """int32[B]: first index of the row maximum. XLA's CPU argmax (a variadic reduce) is ~7x
    slower than this max-then-min pair over a 32K vocabulary."""
    peak = jnp.max(x, axis=-1, keepdims=True)
    index = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x == peak, index, x.shape[-1] - 1), axis=-1)


def _top_p_threshold(weights: jax.Array, top_p: jax.Array) -> jax.Array:
    """int32[B] bit-pattern threshold: keep ``bits(weights) >= threshold``.

    weights: float32[B, V] in [0, 1], unnormalised. Finds the smallest x with
    mass(bits > x) < top_p * total by bisection on [smallest positive key, largest key]: the mass
    above the largest key is 0, below the smallest it is the total. Keys of floats in (0, 1] are
    below 2**30, so 31 halvings always close the bracket. A fixed trip count measured faster on
    CPU than an early exit, whose extra reduction per step costs more than the steps it saves.
    """
    keys = jax.lax.bitcast_convert_type(weights, jnp.int32)  # monotone for weights >= 0
    budget = top_p * jnp.sum(weights, axis=-1)
    hi = jnp.max(keys, axis=-1)
    lo = jnp.min(jnp.where(weights > 0, keys, hi[:, None]), axis=-1)

    def body(_, carry):
        lo, hi = carry
        mid = lo + (hi - lo) // 2
        small = jnp.sum(jnp.where(keys > mid[:, None], weights, 0.0), axis=-1) < budget
        return jnp.where(small, lo, mid + 1), jnp.where(small, mid, hi)

    lo, _ = jax.lax.fori_loop(0, 31, body, (lo, hi))
    return lo


def _behaviour_weights(logits: jax.Array, params: RowParams, mode: Mode):
    """Unnormalised behaviour weights and the shifted, scaled logits they are exp of.

    Returns (weights float32[B, V], zero outside the support, with the row max at 1;
    shifted float32[B, V] = (logits - max) / T; untruncated float32[B] = sum(exp(shifted))).
    """
    temperature = jnp.where(params.temperature > 0, params.temperature, 1.0)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    shifted = (logits - peak) / temperature[:, None]  # max(logits / T) = max(logits) / T for T > 0
    weights = jnp.exp(shifted)
    untruncated = jnp.sum(weights, axis=-1)
    if mode.k_cap:
        kept = jax.lax.top_k(weights, mode.k_cap)[0]  # [B, k_cap], descending
        index = jnp.clip(params.top_k - 1, 0, mode.k_cap - 1)
        kth = jnp.take_along_axis(kept, index[:, None], axis=-1)
        kth = jnp.where(params.top_k[:, None] > 0, kth, 0.0)
        weights = jnp.where(weights >= kth, weights, 0.0)
    if mode.top_p:
        threshold = _top_p_threshold(weights, params.top_p)
        keep = (jax.lax.bitcast_convert_type(weights, jnp.int32) >= threshold[:, None]) | (
            params.top_p[:, None] >= 1.0
        )
        weights = jnp.where(keep, weights, 0.0)
    return weights, shifted, untruncated


def sampling_log_probs(logits: jax.Array, params: RowParams, mode: Mode) -> jax.Array:
    """float32[B, V]: log-probabilities of the behaviour distribution (-inf outside the support).

    Greedy rows get 0 at the argmax and -inf elsewhere.
    """
    logits = logits.astype(jnp.float32)
    weights, shifted, _ = _behaviour_weights(logits, params, mode)
    logp = jnp.where(weights > 0, shifted - jnp.log(jnp.sum(weights, axis=-1, keepdims=True)), -jnp.inf)
    greedy = jax.nn.one_hot(_argmax(logits), logits.shape[-1], dtype=bool)
    greedy_logp = jnp.where(greedy, 0.0, -jnp.inf)
    return jnp.where((params.temperature > 0)[:, None], logp, greedy_logp)


def _inverse_cdf(weights: jax.Array, target: jax.Array, chunk: int = 128) -> jax.Array:
    """int32[B]: the first index whose running sum of ``weights`` [B, V] passes ``target`` [B].

    Two levels (chunk sums, then one chunk) instead of a cumulative sum over the whole
    vocabulary, which XLA on CPU computes slowly.
    """
    b, v = weights.shape
    pad = -v % chunk
    chunks = jnp.pad(weights, ((0, 0), (0, pad))).reshape(b, -1, chunk)
    sums = jnp.sum(chunks, axis=-1)  # [B, C]
    ends = jnp.cumsum(sums, axis=-1)
    c = jnp.minimum(jnp.sum(ends <= target[:, None], axis=-1), sums.shape[1] - 1)
    before = jnp.take_along_axis(ends - sums, c[:, None], axis=-1)
    inner = jnp.take_along_axis(chunks, c[:, None, None], axis=1)[:, 0]  # [B, chunk]
    j = jnp.minimum(jnp.sum(before + jnp.cumsum(inner, axis=-1) <= target[:, None], axis=-1), chunk - 1)
    index = jnp.minimum(c * chunk + j, v - 1)
    # Rounding can land the target on a zero-weight token at a plateau; take the heaviest then.
    picked = jnp.take_along_axis(weights, index[:, None], axis=-1)[:, 0]
    return jnp.where(picked > 0, index, _argmax(weights)).astype(jnp.int32)


def sample(logits: jax.Array, keys: jax.Array, params: RowParams, mode: Mode) -> SampleOutput:
    """Draws one token per row.

    logits: float32[B, V] (a padded vocabulary must carry -inf in its padding rows);
    keys: PRNG key array [B], one key per row for this step.
    """
    logits = logits.astype(jnp.float32)
    greedy_tokens = _argmax(logits)
    if mode.greedy:
        raw_norm = jax.nn.logsumexp(logits, axis=-1)
        raw = jnp.take_along_axis(logits, greedy_tokens[:, None], axis=-1)[:, 0] - raw_norm
        return SampleOutput(greedy_tokens, jnp.zeros_like(raw), raw)

    weights, shifted, untruncated = _behaviour_weights(logits, params, mode)
    total = jnp.sum(weights, axis=-1)
    uniform = jax.vmap(jax.random.uniform)(keys)
    sampled_tokens = _inverse_cdf(weights, uniform * total)
    greedy = params.temperature <= 0
    tokens = jnp.where(greedy, greedy_tokens, sampled_tokens)
    chosen = tokens[:, None]
    behaviour = jnp.take_along_axis(shifted, chosen, axis=-1)[:, 0] - jnp.log(total)
    # Temperature-1 normaliser: at T = 1, exp(shifted) before truncation is exp(logits - max),
    # so its sum is reused; other temperatures need one more exp pass.
    peak = jnp.max(logits, axis=-1)
    raw_norm = peak + jnp.log(jax.lax.cond(
        jnp.all(params.temperature == 1.0),
        lambda: untruncated,
        lambda: jnp.sum(jnp.exp(logits - peak[:, None]), axis=-1),
    ))
    raw = jnp.take_along_axis(logits, chosen, axis=-1)[:, 0] - raw_norm
    return SampleOutput(tokens=tokens, logprobs=jnp.where(greedy, 0.0, behaviour), raw_logprobs=raw)


def step_keys(row_keys: jax.Array, step: jax.Array | int) -> jax.Array:
    """Per-row keys for one decode step: fold the step into each row's key."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
