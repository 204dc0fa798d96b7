"""The policy loss of Eq. 7: minus the reward-weighted log-likelihood of the response tokens.

Two parts, both pure and jit-friendly:

* ``token_log_probs`` -- log p(target) per token from the final hidden states and the LM head,
  computed over chunks of tokens so the float32 logits of the whole batch never exist. A
  151,674-token vocabulary at 32,768 tokens is 18.5 GiB of float32 logits per copy, and a plain
  ``log_softmax`` with its gradient holds about three copies. Here a ``lax.scan`` walks chunks of
  ``chunk_size`` tokens under a ``custom_vjp`` whose backward recomputes each chunk's logits,
  so at most a few [chunk, V] arrays are alive at once, in the forward and in the backward.
  Unlike a loss-only fused kernel it returns per-token log-probs, which importance ratios (and
  GRPO later) need.
* ``policy_loss`` -- weights, normalisation and optional truncated importance sampling, returned
  as a numerator and a parameter-independent denominator, so the train step can add both over
  gradient-accumulation micro-batches and divide once (an exact mean over the global batch).

Which tokens count: a token is a *loss token* when its weight (``loss_weights``, the record's
reward on response positions) is non-zero, and a segment (one packed example: a row and a
``segment_id > 0``) counts when it has a loss token. An example whose reward is 0 therefore
neither adds to the loss nor dilutes it; SOPHIA trains on selected (reward 1) trajectories only.

Normalisation (``LossConfig.normalization``), with ``t`` over loss tokens, ``s`` over segments and
``a_t = -w_t * rho_t * log p_t`` (``w`` the reward, ``rho`` the importance weight, 1 when off):

* ``token_mean`` (default; sophia-method.md section 7.1): ``sum_t a_t / #tokens``;
* ``sequence_mean``: ``sum_s (sum_{t in s} a_t / #tokens in s) / #segments``;
* ``sequence_sum`` (Eq. 7 read literally): ``sum_t a_t / #segments``.

Importance sampling (``LossConfig.importance_sampling``, off by default as in the paper, whose
Lemma A.3 sets the ratio to 1). The behaviour policy is the text reasoner, which read a caption
and wrote the trajectory with *its* tokenizer; the policy re-tokenizes the same text with its
own tokenizer, so the two token sequences generally differ in length and boundaries and a
per-token ratio pi_theta(y_l) / mu(y_l) compares probabilities of different events. What both
sides do assign a probability to is the whole text, so the default ratio is per sequence:
``rho_s = exp(clamp(log pi_theta(y_s) - log mu(y_s)))`` with ``log pi_theta(y_s)`` the sum of the
policy's log-probs over the segment's loss tokens and ``log mu(y_s)`` the stored sum of the
reasoner's raw log-probs (``behaviour_seq_logprob``), truncated at ``min(rho, is_clip)`` and
applied to every token of the segment. ``"token"`` is valid only when the two token sequences are
identical (same tokenizer and the same token count); the data pipeline then fills
``behaviour_token_logprob`` and leaves it NaN otherwise. Either way the weights are detached
(``stop_gradient``): truncated IS reweights the gradient, it is not differentiated. A NaN
behaviour value (text and VQA sources, unknown records) means weight 1 and is left out of the
IS metrics. Note the per-sequence log-ratio sums over thousands of tokens, so it is far from 0
unless the policy is close to the reasoner; the clamp keeps ``exp`` finite and the cap ``c``
bounds the variance (truncated IS).

Metrics are sums and counts (and ``*_max`` maxima), so they combine exactly across micro-batches
with ``merge_metrics``; ``finalize_metrics`` turns the combined values into floats.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sophia_jax import sharding
from sophia_jax.errors import UserError

NORMALIZATIONS = ("token_mean", "sequence_mean", "sequence_sum")
IMPORTANCE_SAMPLING = ("off", "sequence", "token")


class LossConfigError(UserError):
    """A loss setting outside its allowed values."""


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Settings of ``policy_loss`` (see the module docstring for the formulas).

    ``chunk_size``: tokens per chunk of ``token_log_probs`` (<= 0: one chunk). Keep it fixed
    between training and any scoring whose log-probs are compared, since bf16 results may move
    with the chunking.
    """

    normalization: str = "token_mean"
    importance_sampling: str = "off"
    is_clip: float = 2.0
    log_ratio_clamp: float = 20.0
    chunk_size: int = 1024

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise LossConfigError(f"loss.normalization={self.normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if self.importance_sampling not in IMPORTANCE_SAMPLING:
            raise LossConfigError(
                f"loss.importance_sampling={self.importance_sampling!r}; choose one of {', '.join(IMPORTANCE_SAMPLING)}"
            )
        if not self.is_clip > 0:
            raise LossConfigError(f"loss.is_clip={self.is_clip!r}; the truncation cap must be > 0")
        if not self.log_ratio_clamp > 0:
            raise LossConfigError(f"loss.log_ratio_clamp={self.log_ratio_clamp!r}; must be > 0")
        if not isinstance(self.chunk_size, (int, np.integer)) or isinstance(self.chunk_size, bool):
            raise LossConfigError(f"loss.chunk_size={self.chunk_size!r}; must be an integer (<= 0 for one chunk)")


# ---------------------------------------------------------------------------------------------
# Per-token log-probs, chunked over tokens


def token_log_probs(
    hidden: jax.Array, head: jax.Array, targets: jax.Array, *, vocab_size: int, chunk_size: int,
    unroll: bool = False,
) -> jax.Array:
    """log p(target) under the real vocabulary: [B, L, D], [D, Vp], int[B, L] -> float32[B, L].

    ``hidden`` is in the compute dtype (bf16 or f32); ``head`` (``lm_head`` or the tied
    ``embed.T``) is cast to it, as ``CausalLM.logits`` does. Rows ``>= vocab_size`` of a padded
    head carry no probability. Targets must be ``< vocab_size``. The B*L tokens are padded up to a
    multiple of ``chunk_size`` and scanned; ``chunk_size <= 0`` or ``>= B*L`` is one chunk, the
    unchunked reference through the same code. Chunk ``k`` takes every ``n_chunks``-th token
    starting at ``k``, so each chunk draws tokens from every data-parallel shard of the batch and
    all devices work on every chunk. ``unroll`` writes the chunks out instead of looping (the
    same arithmetic): XLA's cost analysis counts a loop body once, so ``sophia-jax aot`` prices
    an unrolled copy of the step.
    """
    b, l, d = hidden.shape
    n = b * l
    c = n if chunk_size <= 0 or chunk_size >= n else chunk_size
    n_chunks = -(-n // c)
    pad = n_chunks * c - n
    h = jnp.pad(hidden.reshape(n, d), ((0, pad), (0, 0)))
    t = jnp.pad(targets.reshape(n).astype(jnp.int32), (0, pad))
    # [c, n_chunks, D] -> [n_chunks, c, D]: the strided chunking described above.
    h = h.reshape(c, n_chunks, d).swapaxes(0, 1)
    t = t.reshape(c, n_chunks).swapaxes(0, 1)
    h = sharding.constrain(h, (None, "batch", "embed"))
    logp = _chunked_log_probs(vocab_size, unroll, h, head, t)  # [n_chunks, c]
    return logp.swapaxes(0, 1).reshape(-1)[:n].reshape(b, l)


def _chunk_logits(h: jax.Array, head: jax.Array) -> jax.Array:
    """[c, D] x [D, Vp] -> float32[c, Vp], the vocabulary tensor-sharded; padding rows not masked."""
    logits = jnp.dot(h, head.astype(h.dtype), preferred_element_type=jnp.float32)
    return sharding.constrain(logits, ("batch", "vocab"))


def _without_padding(x: jax.Array, vocab_size: int, fill: float) -> jax.Array:
    """``x`` with the padded head rows (columns ``>= vocab_size``) set to ``fill``.

    Applied inside each consumer (the logsumexp, the softmax of the backward) rather than once
    to the logits, so XLA fuses it into them instead of writing a masked [c, Vp] copy.
    """
    if x.shape[-1] == vocab_size:
        return x
    return jnp.where(jnp.arange(x.shape[-1]) < vocab_size, x, fill)


def _chunk_forward(h, head, t, vocab_size):
    """One chunk: (log p(target) float32[c], logsumexp float32[c])."""
    logits = _chunk_logits(h, head)
    lse = jax.nn.logsumexp(_without_padding(logits, vocab_size, -jnp.inf), axis=-1)
    label = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]  # a gather, no one-hot; t < vocab_size
    return label - lse, lse


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunked_log_probs(vocab_size, unroll, h, head, t):
    """[n_chunks, c, D], [D, Vp], int[n_chunks, c] -> float32[n_chunks, c]."""
    return _forward(vocab_size, unroll, h, head, t)[0]


def _forward(vocab_size, unroll, h, head, t):
    def body(_, xs):
        return None, _chunk_forward(xs[0], head, xs[1], vocab_size)

    _, (logp, lse) = jax.lax.scan(body, None, (h, t), unroll=unroll)
    return logp, (h, head, t, lse)


def _backward(vocab_size, unroll, residuals, g):
    """Recomputes each chunk's logits; d logp/d logits = onehot(target) - softmax."""
    h, head, t, lse = residuals
    head_c = head.astype(h.dtype)

    def body(d_head, xs):
        h_c, t_c, lse_c, g_c = xs
        probs = _without_padding(jnp.exp(_chunk_logits(h_c, head_c) - lse_c[:, None]), vocab_size, 0.0)
        d_logits = -g_c[:, None] * probs
        d_logits = d_logits.at[jnp.arange(t_c.shape[0]), t_c].add(g_c)
        d_logits = sharding.constrain(d_logits, ("batch", "vocab")).astype(h.dtype)
        # Matmuls in the input dtype with float32 accumulation (float32 operands are far slower).
        d_h = jnp.dot(d_logits, head_c.T, preferred_element_type=jnp.float32).astype(h.dtype)
        d_head = d_head + jnp.dot(h_c.T, d_logits, preferred_element_type=jnp.float32)
        return d_head, d_h

    d_head0 = jnp.zeros(head.shape, jnp.float32)
    d_head, d_h = jax.lax.scan(body, d_head0, (h, t, lse, g), unroll=unroll)
    return d_h, d_head.astype(head.dtype), None


_chunked_log_probs.defvjp(_forward, _backward)


# ---------------------------------------------------------------------------------------------
# The loss


def policy_loss(
    logp: jax.Array, batch: Mapping[str, jax.Array], config: LossConfig, *, num_sources: int = 1
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(numerator, denominator, metrics); the loss is ``numerator / denominator``.

    logp: float32[B, L] from ``token_log_probs``. batch: ``loss_weights`` float32[B, L],
    ``segment_ids`` int32[B, L], and as needed ``source`` int32[B, L] (per-source metrics for
    sources ``0 .. num_sources-1``), ``behaviour_seq_logprob`` / ``behaviour_token_logprob``
    float32[B, L] (importance sampling). The denominator and all metrics are free of gradients.
    """
    b, l = logp.shape
    w = batch["loss_weights"].astype(jnp.float32)
    seg = batch["segment_ids"]
    mask = (w != 0) & (seg > 0)
    logp = jnp.where(mask, logp, 0.0)  # a padding token's -inf never reaches a sum
    fmask = mask.astype(jnp.float32)

    # One slot per (row, segment id); segment ids run 1..L, slot B*L collects the rest.
    num_seg = b * l + 1
    slot = jnp.where(mask, jnp.arange(b)[:, None] * l + seg - 1, b * l).reshape(-1)

    def seg_sum(x):
        return jax.ops.segment_sum(x.reshape(-1), slot, num_segments=num_seg)

    seg_tokens = seg_sum(fmask)
    seg_present = (seg_tokens > 0).at[-1].set(False)
    n_tokens = jnp.sum(fmask)
    n_segments = jnp.sum(seg_present.astype(jnp.float32))

    rho, is_metrics = _importance_weights(logp, mask, batch, config, seg_sum, slot, seg_present)
    per_token = -w * jax.lax.stop_gradient(rho) * logp  # 0 off the loss tokens

    if config.normalization == "token_mean":
        numerator, denominator = jnp.sum(per_token), n_tokens
    elif config.normalization == "sequence_mean":
        per_seg = seg_sum(per_token) / jnp.maximum(seg_tokens, 1.0)
        numerator, denominator = jnp.sum(jnp.where(seg_present, per_seg, 0.0)), n_segments
    else:  # sequence_sum
        numerator, denominator = jnp.sum(per_token), n_segments

    metrics = {
        "loss_numerator": numerator,
        "loss_denominator": denominator,
        "nll_sum": -jnp.sum(logp),
        "tokens": n_tokens,
        "segments": n_segments,
        **is_metrics,
    }
    if "source" in batch:
        src = jnp.where(mask, batch["source"], num_sources).reshape(-1)  # off-range ids are dropped
        metrics["source_loss_sum"] = jax.ops.segment_sum(per_token.reshape(-1), src, num_segments=num_sources)
        metrics["source_tokens"] = jax.ops.segment_sum(fmask.reshape(-1), src, num_segments=num_sources)
    metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
    return numerator, jax.lax.stop_gradient(denominator), metrics


def _importance_weights(logp, mask, batch, config, seg_sum, slot, seg_present):
    """Truncated IS weights float32[B, L] (1 where off or unknown) and their metrics."""
    if config.importance_sampling == "off":
        return jnp.ones_like(logp), {}
    logp = jax.lax.stop_gradient(logp)
    if config.importance_sampling == "sequence":
        beh = batch["behaviour_seq_logprob"].astype(jnp.float32)
        known_tok = mask & ~jnp.isnan(beh)
        known_cnt = seg_sum(known_tok.astype(jnp.float32))
        # The stored value repeats on every loss position of a segment; the mean recovers it.
        beh_seg = seg_sum(jnp.where(known_tok, beh, 0.0)) / jnp.maximum(known_cnt, 1.0)
        known = seg_present & (known_cnt > 0)
        log_ratio = seg_sum(logp) - beh_seg
    else:  # token
        beh = batch["behaviour_token_logprob"].astype(jnp.float32)
        known = (mask & ~jnp.isnan(beh)).reshape(-1)
        log_ratio = (logp - jnp.where(jnp.isnan(beh), 0.0, beh)).reshape(-1)
    clamp = config.log_ratio_clamp
    ratio = jnp.where(known, jnp.exp(jnp.clip(log_ratio, -clamp, clamp)), 1.0)
    weight = jnp.minimum(ratio, config.is_clip)
    fknown = known.astype(jnp.float32)
    metrics = {
        "is_ratio_sum": jnp.sum(fknown * ratio),
        "is_ratio_max": jnp.max(jnp.where(known, ratio, 0.0)),
        "is_clipped": jnp.sum(fknown * (ratio > config.is_clip)),
        "is_count": jnp.sum(fknown),
        "is_ess_num": jnp.sum(fknown * weight),
        "is_ess_den": jnp.sum(fknown * weight**2),
    }
    if config.importance_sampling == "sequence":
        weight = weight[slot]  # each token takes its segment's weight; padding takes slot B*L's 1
    return weight.reshape(logp.shape), metrics


# ---------------------------------------------------------------------------------------------
# Metrics across micro-batches


def merge_metrics(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Combines two micro-batches' metrics: ``*_max`` by maximum, everything else by sum."""
    return {k: jnp.maximum(a[k], b[k]) if k.endswith("_max") else a[k] + b[k] for k in a}


def finalize_metrics(summed: Mapping[str, jax.Array], source_names: list[str] | None = None) -> dict[str, float]:
    """Combined sums -> floats: ``loss``, ``nll_per_token``, ``tokens``, ``segments``, the IS
    metrics (``is_ratio_mean``, ``is_ratio_max``, ``is_clipped_fraction``, ``is_ess``,
    ``is_ess_fraction``) when IS was on and saw known values, and ``loss/<source>`` (token
    mean of that source's weighted loss) for sources that had tokens."""
    s = {k: np.asarray(jax.device_get(v), dtype=np.float64) for k, v in summed.items()}

    def ratio(num, den):
        return float(num / den) if den > 0 else float("nan")

    out = {
        "loss": ratio(s["loss_numerator"], s["loss_denominator"]),
        "nll_per_token": ratio(s["nll_sum"], s["tokens"]),
        "tokens": float(s["tokens"]),
        "segments": float(s["segments"]),
    }
    if "is_count" in s and s["is_count"] > 0:
        out["is_ratio_mean"] = ratio(s["is_ratio_sum"], s["is_count"])
        out["is_ratio_max"] = float(s["is_ratio_max"])
        out["is_clipped_fraction"] = ratio(s["is_clipped"], s["is_count"])
        out["is_ess"] = ratio(s["is_ess_num"] ** 2, s["is_ess_den"])
        out["is_ess_fraction"] = out["is_ess"] / float(s["is_count"])
    if "source_loss_sum" in s:
        names = source_names or [str(i) for i in range(len(s["source_tokens"]))]
        for name, loss_sum, count in zip(names, s["source_loss_sum"], s["source_tokens"]):
            if count > 0:
                out[f"loss/{name}"] = float(loss_sum / count)
    return out
