"""The decoder's attention (custom backward) against jax.nn.dot_product_attention's autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sophia_jax.models import layers


def _inputs(dtype, b=2, t=12, s=12, n=4, k=2, h=16, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, t, n, h)), dtype)
    kk = jnp.asarray(rng.normal(size=(b, s, k, h)), dtype)
    v = jnp.asarray(rng.normal(size=(b, s, k, h)), dtype)
    # causal + two packed segments in row 0, left padding in row 1
    # queries are the last t of the s key slots
    keys = np.array([[1] * (s - 7) + [2] * 7, [0] * 3 + [1] * (s - 3)])
    queries = keys[:, s - t:]
    causal = np.tril(np.ones((t, s), bool), k=s - t)
    mask = causal[None] & (queries[:, :, None] == keys[:, None, :]) & (keys[:, None, :] > 0)
    mask[:, np.arange(t), np.arange(s - t, s)] = True  # every query sees its own slot (padding rows too)
    return q, kk, v, jnp.asarray(mask), jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)


def _value_and_grads(fn, q, k, v, mask, cotangent):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, mask).astype(jnp.float32) * cotangent)  # noqa: E731
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


def _reference(q, k, v, mask):
    return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None],
                                        implementation="xla")


@pytest.mark.parametrize("with_mask", [True, False])
def test_attention_value_and_gradients_match_reference_float32(with_mask):
    q, k, v, mask, cot = _inputs(jnp.float32)
    mask = mask if with_mask else None
    ours = _value_and_grads(lambda *a: layers.attention(*a, impl="xla"), q, k, v, mask, cot)
    ref = _value_and_grads(_reference, q, k, v, mask, cot)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_attention_gradients_bfloat16_follow_float32():
    q, k, v, mask, cot = _inputs(jnp.bfloat16)
    ours = _value_and_grads(lambda *a: layers.attention(*a, impl="xla"), q, k, v, mask, cot)
    ref = _value_and_grads(_reference, *(x.astype(jnp.float32) for x in (q, k, v)), mask, cot)
    for a, b in zip(jax.tree.leaves(ours)[1:], jax.tree.leaves(ref)[1:]):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), rtol=5e-2, atol=5e-2)


def test_attention_with_longer_keys_than_queries():
    """The cached-prefill shape: T new queries over S >= T key slots."""
    q, k, v, mask, cot = _inputs(jnp.float32, t=5, s=12)
    ours = _value_and_grads(lambda *a: layers.attention(*a, impl="xla"), q, k, v, mask, cot)
    ref = _value_and_grads(_reference, q, k, v, mask, cot)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_splash_kernel_matches_the_xla_path_on_packed_rows():
    """The TPU splash kernel (Pallas interpret mode on CPU): value and gradients on packed,
    padded rows equal the XLA attention with the decoder's causal-and-segment mask."""
    b, t, n, k, h = 2, 256, 4, 2, 128
    rng = np.random.default_rng(1)
    q, kk, v = (jnp.asarray(rng.normal(size=(b, t, heads, h)), jnp.float32) for heads in (n, k, k))
    segments = np.zeros((b, t), np.int32)
    segments[0, :100], segments[0, 100:] = 1, 2
    segments[1, 30:] = 1  # left padding: segment 0
    segments = jnp.asarray(segments)
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & (segments[:, :, None] == segments[:, None, :])
    cot = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
    splash = _value_and_grads(lambda q, k, v, s: layers.splash_attention(q, k, v, s, block=128, interpret=True),
                              q, kk, v, segments, cot)
    xla = _value_and_grads(lambda *a: layers.attention(*a, impl="xla"), q, kk, v, mask, cot)
    for a, b_ in zip(jax.tree.leaves(splash), jax.tree.leaves(xla)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), rtol=2e-4, atol=2e-4)
