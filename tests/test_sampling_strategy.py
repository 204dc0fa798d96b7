"""Sampling strategy on tiny vocabularies: exact top-k/top-p supports, temperature, log-probs,
and empirical frequencies (chi-square with a fixed seed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sophia_jax.sampling import strategy
from sophia_jax.sampling.strategy import Mode, RowParams


def reference_support(logits, temperature, top_k, top_p):
    """numpy: the behaviour support, by sorting (transformers' warper order: top-k then top-p)."""
    scaled = logits / temperature
    keep = np.ones_like(scaled, bool)
    if top_k:
        kth = np.sort(scaled)[::-1][top_k - 1]
        keep &= scaled >= kth
    masked = np.where(keep, scaled, -np.inf)
    probs = np.exp(masked - masked.max())
    probs /= probs.sum()
    if top_p < 1:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass strictly ahead in sorted order
        kept = np.zeros_like(keep)
        kept[order[before < top_p]] = True
        keep &= kept
    return keep


def reference_logprobs(logits, temperature, top_k, top_p):
    keep = reference_support(logits, temperature, top_k, top_p)
    masked = np.where(keep, logits / temperature, -np.inf)
    return masked - np.log(np.sum(np.exp(masked - masked.max()))) - masked.max()


def rows(temperature, top_p, top_k):
    return RowParams(jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
                     jnp.asarray(top_k, jnp.int32))


@pytest.mark.parametrize("vocab", [10, 32000])
def test_supports_match_sorting_reference(vocab):
    rng = np.random.default_rng(0)
    batch = 12
    logits = rng.normal(size=(batch, vocab)).astype(np.float32) * (3.0 if vocab == 10 else 0.5)
    temperature = rng.choice([0.5, 1.0, 1.7], size=batch)
    top_p = rng.choice([0.3, 0.75, 0.9, 1.0], size=batch)
    top_k = rng.choice([0, 1, 3, 7], size=batch)
    params = rows(temperature, top_p, top_k)
    got = np.asarray(strategy.sampling_log_probs(jnp.asarray(logits), params, Mode(k_cap=8, top_p=True)))
    for i in range(batch):
        want = reference_logprobs(logits[i].astype(np.float64), temperature[i], top_k[i], top_p[i])
        np.testing.assert_array_equal(np.isfinite(got[i]), np.isfinite(want), err_msg=f"row {i}")
        if top_k[i]:
            assert np.isfinite(got[i]).sum() <= top_k[i]
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[i][finite], want[finite], atol=1e-4)
        # The behaviour distribution is normalised over its support.
        np.testing.assert_allclose(np.exp(got[i][finite].astype(np.float64)).sum(), 1.0, atol=1e-5)


def test_temperature_scales_logits_without_truncation():
    logits = jnp.asarray([[2.0, 1.0, 0.0, -1.0], [0.5, 0.4, -3.0, 1.5]])
    for t in (0.25, 1.0, 3.0):
        params = strategy.row_params(2, t)
        got = strategy.sampling_log_probs(logits, params, Mode())
        np.testing.assert_allclose(got, jax.nn.log_softmax(logits / t), atol=1e-6)


def test_empirical_frequencies_match_target():
    """20k draws of one 8-token distribution (T=0.8, top-k 6, top-p 0.9) pass a chi-square test."""
    logits = np.array([1.2, 0.3, -0.5, 2.0, 0.9, -1.5, 0.0, 1.6], np.float32)
    draws = 20000
    params = strategy.row_params(draws, 0.8, top_p=0.9, top_k=6)
    keys = jax.random.split(jax.random.key(123), draws)
    out = jax.jit(strategy.sample, static_argnames="mode")(
        jnp.broadcast_to(logits, (draws, 8)), keys, params, mode=Mode(k_cap=8, top_p=True))
    target = np.exp(reference_logprobs(logits.astype(np.float64), 0.8, 6, 0.9))
    support = target > 0
    assert 2 <= support.sum() < 6  # the test exercises a real truncation
    counts = np.bincount(np.asarray(out.tokens), minlength=8)
    assert counts[~support].sum() == 0
    p_value = stats.chisquare(counts[support], draws * target[support]).pvalue
    assert p_value > 1e-3, (counts, draws * target)
    # Returned log-probs: behaviour under the truncated distribution, raw at T=1 over the vocab.
    tokens = np.asarray(out.tokens)
    np.testing.assert_allclose(np.asarray(out.logprobs), np.log(target[tokens]), atol=1e-5)
    raw = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
    np.testing.assert_allclose(np.asarray(out.raw_logprobs), raw[tokens], atol=1e-6)


def test_greedy_rows_take_argmax_and_padding_is_never_drawn():
    vocab, padded = 6, 8
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(64, padded)).astype(np.float32)
    logits[:, vocab:] = -np.inf  # a padded vocabulary
    temperature = np.where(np.arange(64) % 2 == 0, 0.0, 5.0)  # hot rows spread over the support
    out = strategy.sample(jnp.asarray(logits), jax.random.split(jax.random.key(0), 64),
                          rows(temperature, np.ones(64), np.zeros(64)), Mode())
    tokens = np.asarray(out.tokens)
    greedy = temperature == 0
    np.testing.assert_array_equal(tokens[greedy], logits[greedy].argmax(-1))
    np.testing.assert_array_equal(np.asarray(out.logprobs)[greedy], 0.0)
    assert tokens.max() < vocab and len(set(tokens[~greedy])) > 2
    raw = logits[:, :vocab] - np.log(np.exp(logits[:, :vocab]).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(out.raw_logprobs), raw[np.arange(64), tokens], atol=1e-5)


def test_top_p_keeps_ties_and_the_crossing_token():
    # probs 0.4, 0.3, 0.3 (tie), ~0: top_p 0.5 keeps the first two by mass, plus the tie.
    logits = jnp.log(jnp.asarray([[0.4, 0.3, 0.3, 1e-9]]))
    got = strategy.sampling_log_probs(logits, strategy.row_params(1, 1.0, top_p=0.5), Mode(top_p=True))
    np.testing.assert_array_equal(np.isfinite(np.asarray(got[0])), [True, True, True, False])
    got = strategy.sampling_log_probs(logits, strategy.row_params(1, 1.0, top_p=0.4), Mode(top_p=True))
    np.testing.assert_array_equal(np.isfinite(np.asarray(got[0])), [True, False, False, False])
