"""The Eq. 7 loss: chunked log-probs against log_softmax, and policy_loss against hand sums."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sophia_jax import sharding
from sophia_jax.errors import UserError
from sophia_jax.models.config import TextConfig
from sophia_jax.models.decoder import CausalLM
from sophia_jax.training import loss as L

VOCAB, VP, D = 13, 16, 8  # a padded head: rows 13..15 are padding


def reference_log_probs(hidden, head, targets, vocab=VOCAB):
    """Plain log_softmax over the real vocabulary, then pick the target."""
    logits = jnp.dot(hidden, head[:, :vocab].astype(hidden.dtype), preferred_element_type=jnp.float32)
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]


def inputs(b=2, l=5, seed=0, dtype=jnp.float32):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k1, (b, l, D), dtype)
    head = jax.random.normal(k2, (D, VP), jnp.float32)
    targets = jax.random.randint(k3, (b, l), 0, VOCAB)
    weights = jax.random.uniform(k4, (b, l), minval=0.0, maxval=2.0)
    return hidden, head, targets, weights


def logp_fn(chunk, unroll=False):
    return lambda h, w, t: L.token_log_probs(h, w, t, vocab_size=VOCAB, chunk_size=chunk, unroll=unroll)


def test_log_probs_match_log_softmax_and_padding_rows_never_win():
    hidden, head, targets, _ = inputs()
    # Padding rows with huge logits would dominate any softmax that let them in.
    head = head.at[:, VOCAB:].set(50.0)
    hidden = jnp.abs(hidden)
    want = reference_log_probs(hidden, head, targets)
    for chunk in (0, 3):
        got = jax.jit(logp_fn(chunk))(hidden, head, targets)
        assert got.shape == targets.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(got))) and bool(jnp.all(got < 0))


@pytest.mark.parametrize("chunk, unroll", [(1, False), (3, False), (4, False), (7, False), (10, False), (64, False),
                                           (3, True)])
def test_chunked_loss_and_gradients_equal_unchunked(chunk, unroll):
    """B*L = 10 tokens; 3, 4 and 7 do not divide it, 10 and 64 are one chunk. Unrolled chunks (the
    loop written out, as ``sophia-jax aot`` prices the step) compute the same."""
    hidden, head, targets, weights = inputs()

    def loss(fn):
        return lambda h, w: jnp.sum(weights * fn(h, w, targets)) / 10.0

    ref_val, (ref_dh, ref_dw) = jax.jit(jax.value_and_grad(loss(logp_fn(0)), argnums=(0, 1)))(hidden, head)
    val, (dh, dw) = jax.jit(jax.value_and_grad(loss(logp_fn(chunk, unroll)), argnums=(0, 1)))(hidden, head)
    np.testing.assert_allclose(val, ref_val, atol=1e-6)
    np.testing.assert_allclose(dh, ref_dh, atol=1e-6)
    np.testing.assert_allclose(dw, ref_dw, atol=1e-6)
    assert dh.dtype == hidden.dtype and dw.dtype == head.dtype

    # The unchunked path itself against autodiff through a plain log_softmax.
    plain = lambda h, w, t: reference_log_probs(h, w, t)  # noqa: E731
    p_val, (p_dh, p_dw) = jax.value_and_grad(loss(plain), argnums=(0, 1))(hidden, head)
    np.testing.assert_allclose(ref_val, p_val, atol=1e-6)
    np.testing.assert_allclose(ref_dh, p_dh, atol=1e-6)
    np.testing.assert_allclose(ref_dw, p_dw, atol=1e-6)
    assert not np.any(np.asarray(ref_dw[:, VOCAB:]))  # padding rows get no gradient


def test_bf16_inputs_run_and_stay_close():
    hidden, head, targets, weights = inputs(dtype=jnp.bfloat16)
    head16 = head.astype(jnp.bfloat16)

    def loss(h, w):
        return jnp.sum(weights * L.token_log_probs(h, w, targets, vocab_size=VOCAB, chunk_size=3))

    val, (dh, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(hidden, head16)
    assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    h32, w32 = hidden.astype(jnp.float32), head16.astype(jnp.float32)
    ref = lambda h, w: jnp.sum(weights * reference_log_probs(h, w, targets))  # noqa: E731
    ref_val, (ref_dh, ref_dw) = jax.value_and_grad(ref, argnums=(0, 1))(h32, w32)
    np.testing.assert_allclose(val, ref_val, rtol=2e-2)
    np.testing.assert_allclose(dh.astype(jnp.float32), ref_dh, atol=5e-2 * float(jnp.abs(ref_dh).max()))
    np.testing.assert_allclose(dw.astype(jnp.float32), ref_dw, atol=5e-2 * float(jnp.abs(ref_dw).max()))


def test_real_model_head_tied_and_untied():
    """The head the trainer passes: CausalLM's ``lm_head`` or tied ``embed.T``, padded to 128."""
    for tied in (False, True):
        config = TextConfig(vocab_size=200, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                            head_dim=8, intermediate_size=32, tie_word_embeddings=tied)
        model = CausalLM(config, rngs=nnx.Rngs(0))
        ids = jax.random.randint(jax.random.key(1), (2, 6), 0, 200)
        targets = jnp.roll(ids, -1, axis=1)

        @nnx.jit
        def both(model, ids, targets):
            hidden = model.embed_tokens(ids)  # the head's input; the decoder stack is not under test
            head = model.embed[...].T if tied else model.lm_head[...]
            want = jnp.take_along_axis(jax.nn.log_softmax(model.logits(hidden), -1), targets[..., None], -1)
            got = L.token_log_probs(hidden, head, targets, vocab_size=200, chunk_size=5)
            return got, want[..., 0], head.shape

        got, want, head_shape = both(model, ids, targets)
        assert head_shape[1] == config.padded_vocab_size > 200
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_sharded_on_a_2x4_mesh_equals_single_device():
    hidden, head, targets, weights = inputs(b=4, l=6, seed=3)

    def loss(h, w):
        lp = L.token_log_probs(h, w, targets, vocab_size=VOCAB, chunk_size=8)
        return jnp.sum(weights * lp) / 24.0, lp

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (ref_val, ref_lp), (ref_dh, ref_dw) = grad(hidden, head)

    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, tensor=4))
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    h_s, w_s = put(hidden, P("data")), put(head, P(None, "tensor"))
    with sharding.use_mesh(mesh):
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (val, lp), (dh, dw) = fn(h_s, w_s)
        hlo = fn.lower(h_s, w_s).compile().as_text()
    # Each device's chunk logits: 8 tokens over data=2, 16 vocab rows over tensor=4.
    assert "f32[4,4]" in hlo and "f32[8,16]" not in hlo
    np.testing.assert_allclose(val, ref_val, atol=1e-6)
    np.testing.assert_allclose(lp, ref_lp, atol=1e-6)
    np.testing.assert_allclose(dh, ref_dh, atol=1e-6)
    np.testing.assert_allclose(dw, ref_dw, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# policy_loss against hand computations
#
# row 0: segments [1, 1, 2, 2]; row 1: [1, 1, 1, 0] (last position padding)
# loss tokens (w != 0): (0,1) w=1 lp=-2 | (0,2) w=1 lp=-3, (0,3) w=.5 lp=-4 | (1,1) w=2 lp=-.5, (1,2) w=1 lp=-1.5
# per-token terms -w*lp: 2 | 3, 2 | 1, 1.5  -> sum 9.5, 5 tokens, 3 segments

LOGP = np.array([[-1.0, -2.0, -3.0, -4.0], [-5.0, -0.5, -1.5, -np.inf]], np.float32)


def batch(**extra):
    out = {
        "loss_weights": np.array([[0, 1, 1, 0.5], [0, 2, 1, 0]], np.float32),
        "segment_ids": np.array([[1, 1, 2, 2], [1, 1, 1, 0]], np.int32),
        "source": np.array([[0, 0, 1, 1], [1, 1, 1, -1]], np.int32),
    }
    out.update(extra)
    return {k: jnp.asarray(v) for k, v in out.items()}


def run(config, b=None, logp=LOGP):
    num, den, metrics = jax.jit(lambda lp, bt: L.policy_loss(lp, bt, config, num_sources=2))(
        jnp.asarray(logp), b or batch()
    )
    return float(num), float(den), metrics


@pytest.mark.parametrize(
    "mode, num, den",
    [("token_mean", 9.5, 5.0), ("sequence_mean", 2 / 1 + 5 / 2 + 2.5 / 2, 3.0), ("sequence_sum", 9.5, 3.0)],
)
def test_normalisation_modes_by_hand(mode, num, den):
    n, d, m = run(L.LossConfig(normalization=mode))
    assert n == pytest.approx(num) and d == pytest.approx(den)
    assert float(m["nll_sum"]) == pytest.approx(2 + 3 + 4 + 0.5 + 1.5)
    assert float(m["tokens"]) == 5 and float(m["segments"]) == 3
    np.testing.assert_allclose(m["source_loss_sum"], [2.0, 7.5])
    np.testing.assert_allclose(m["source_tokens"], [1.0, 4.0])
    f = L.finalize_metrics(m, ["store", "text"])
    assert f["loss"] == pytest.approx(num / den)
    assert f["loss/store"] == pytest.approx(2.0) and f["loss/text"] == pytest.approx(7.5 / 4)
    assert "is_ratio_mean" not in f


def test_gradient_is_minus_weight_on_loss_tokens_only():
    """-inf at the padding position and the w = 0 positions get exactly zero gradient."""
    g = jax.grad(lambda lp: L.policy_loss(lp, batch(), L.LossConfig())[0])(jnp.asarray(LOGP))
    np.testing.assert_array_equal(g, [[0, -1, -1, -0.5], [0, -2, -1, 0]])


SEQ_BEH = np.array([[np.nan, -2.5, -10.0, -10.0], [np.nan, np.nan, np.nan, np.nan]], np.float32)


def test_sequence_importance_weights_truncated_and_nan_by_hand():
    # seg (0,1): policy -2 vs behaviour -2.5 -> e^0.5; seg (0,2): -7 vs -10 -> e^3, capped at 2;
    # seg (1,1): behaviour NaN -> weight 1, not in the metrics.
    r1, r2 = math.exp(0.5), math.exp(3.0)
    n, d, m = run(L.LossConfig(importance_sampling="sequence"), batch(behaviour_seq_logprob=SEQ_BEH))
    assert n == pytest.approx(2 * r1 + 5 * 2 + 2.5) and d == 5.0
    f = L.finalize_metrics(m)
    assert f["is_ratio_mean"] == pytest.approx((r1 + r2) / 2)
    assert f["is_ratio_max"] == pytest.approx(r2, rel=1e-6)
    assert f["is_clipped_fraction"] == pytest.approx(0.5)
    assert f["is_ess"] == pytest.approx((r1 + 2) ** 2 / (r1**2 + 4))
    assert float(m["is_count"]) == 2
    # The clamp bounds the log-ratio before exp; a large cap then leaves e^clamp.
    n, _, m = run(L.LossConfig(importance_sampling="sequence", is_clip=100.0, log_ratio_clamp=1.0),
                  batch(behaviour_seq_logprob=SEQ_BEH))
    assert n == pytest.approx(2 * r1 + 5 * math.e + 2.5)
    assert float(m["is_clipped"]) == 0
    # The weights are detached: d loss / d logp is still -w * weight.
    g = jax.grad(lambda lp: L.policy_loss(lp, batch(behaviour_seq_logprob=SEQ_BEH),
                                          L.LossConfig(importance_sampling="sequence"))[0])(jnp.asarray(LOGP))
    np.testing.assert_allclose(g, [[0, -r1, -2, -1], [0, -2, -1, 0]], rtol=1e-6)


def test_token_importance_weights_by_hand():
    beh = np.array([[np.nan, -2.1, np.nan, -3.0], [np.nan, -1.5, -1.5, np.nan]], np.float32)
    # ratios: (0,1) e^0.1 | (0,2) NaN -> 1, (0,3) e^-1 | (1,1) e^1 capped at 2, (1,2) 1
    ratios = [math.exp(0.1), math.exp(-1.0), math.e, 1.0]
    n, d, m = run(L.LossConfig(importance_sampling="token", normalization="sequence_sum"),
                  batch(behaviour_token_logprob=beh))
    assert n == pytest.approx(2 * ratios[0] + 3 + 2 * ratios[1] + 2 + 1.5) and d == 3.0
    f = L.finalize_metrics(m)
    weights = [ratios[0], ratios[1], 2.0, 1.0]
    assert float(m["is_count"]) == 4
    assert f["is_ratio_mean"] == pytest.approx(sum(ratios) / 4)
    assert f["is_clipped_fraction"] == pytest.approx(0.25)
    assert f["is_ess"] == pytest.approx(sum(weights) ** 2 / sum(x * x for x in weights))


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "sequence_sum"])
def test_micro_batches_merge_to_the_whole_batch(mode):
    config = L.LossConfig(normalization=mode, importance_sampling="sequence")
    whole = batch(behaviour_seq_logprob=SEQ_BEH)
    _, _, m = run(config, whole)
    parts = [run(config, {k: v[i : i + 1] for k, v in whole.items()}, LOGP[i : i + 1])[2] for i in (0, 1)]
    merged = L.merge_metrics(*parts)
    got, want = L.finalize_metrics(merged), L.finalize_metrics(m)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k]), k


def test_bad_settings_are_user_errors():
    for kwargs, field in [({"normalization": "mean"}, "normalization"), ({"importance_sampling": "seq"}, "importance"),
                          ({"is_clip": 0.0}, "is_clip"), ({"log_ratio_clamp": -1.0}, "clamp"),
                          ({"chunk_size": 1.5}, "chunk_size")]:
        with pytest.raises(UserError, match=field):
            L.LossConfig(**kwargs)
