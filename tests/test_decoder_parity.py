"""Text decoders match transformers' causal LMs (Qwen3 per-head qk-norm, Qwen2, Llama)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hf_models
from sophia_jax.checkpoint import assign_params, causal_lm_rules, flat_params, to_ours
from sophia_jax.models import CausalLM, RopeScaling, RuntimeConfig
from sophia_jax.models.hf_config import text_config_from_hf


def port(torch_model):
    config = text_config_from_hf(torch_model.config.to_dict())
    model = CausalLM(config, rngs=nnx.Rngs(0))
    assign_params(model, to_ours(causal_lm_rules(config), hf_models.state_dict_numpy(torch_model)))
    return model


def padded_batch():
    rng = np.random.default_rng(1)
    lengths = [9, 5, 7]
    ids = rng.integers(0, hf_models.VOCAB, size=(3, 9)).astype(np.int32)
    mask = (np.arange(9)[None] < np.array(lengths)[:, None]).astype(np.int32)
    return ids * mask, mask


@pytest.mark.parametrize("family,overrides", [
    ("qwen3", {}),
    ("qwen3", {"tie_word_embeddings": True}),
    ("qwen2", {}),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}),
    ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}),
], ids=["qwen3", "qwen3-tied", "qwen2", "llama-llama3-rope", "llama-linear-rope"])
def test_causal_lm_matches_transformers(family, overrides):
    torch_model = hf_models.causal_lm(family, **overrides)
    model = port(torch_model)
    if overrides.get("tie_word_embeddings"):
        assert model.lm_head is None
    ids, mask = padded_batch()
    expected = hf_models.torch_logits(torch_model, ids, mask)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_array_less(np.abs(got - expected).max(), 1e-4)


def test_dynamic_rope_is_plain_below_max_positions():
    from sophia_jax.models import layers
    pos = jnp.arange(100)[None]
    dyn = layers.rope_tables(pos, 16, 1e6, RopeScaling("dynamic", 2.0), 128)
    plain = layers.rope_tables(pos, 16, 1e6, RopeScaling(), 128)
    np.testing.assert_array_equal(np.asarray(dyn[0]), np.asarray(plain[0]))
    longer = layers.rope_tables(jnp.arange(300)[None], 16, 1e6, RopeScaling("dynamic", 2.0), 128)
    assert not np.allclose(np.asarray(longer[0][:, :100]), np.asarray(plain[0]))


def test_padded_logits_are_minus_inf():
    torch_model = hf_models.causal_lm("qwen2")
    model = port(torch_model)
    hidden, _ = model.hidden_states(model.embed_tokens(jnp.zeros((1, 2), jnp.int32)), jnp.zeros((1, 2), jnp.int32),
                                    jnp.ones((1, 2), bool))
    padded = np.asarray(model.logits(hidden, padded=True))
    assert padded.shape[-1] % 128 == 0 and padded.shape[-1] >= hf_models.VOCAB
    assert np.all(np.isneginf(padded[..., hf_models.VOCAB:]))
    assert np.all(np.isfinite(padded[..., : hf_models.VOCAB]))


def test_fused_attention_and_remat_match_the_plain_path():
    """attention='fused' (jax.nn.dot_product_attention) and remat give the same logits and grads."""
    torch_model = hf_models.causal_lm("qwen2")
    plain = port(torch_model)
    weights = {k: np.asarray(v.get_value()) for k, v in flat_params(plain).items()}
    ids, mask = (jnp.asarray(x) for x in padded_batch())

    def loss_and_grads(model):
        graphdef, state = nnx.split(model)

        def loss(state):
            logits = nnx.merge(graphdef, state)(ids, mask)
            return jnp.mean(jax.nn.logsumexp(logits, -1) * mask)

        return jax.value_and_grad(loss)(state)

    base_loss, base_grads = loss_and_grads(plain)
    for runtime in (RuntimeConfig(attention="fused"), RuntimeConfig(remat=True), RuntimeConfig(remat="dots")):
        other = CausalLM(plain.config, runtime, rngs=nnx.Rngs(0))
        assign_params(other, weights)
        np.testing.assert_allclose(np.asarray(other(ids, mask)), np.asarray(plain(ids, mask)), atol=1e-5)
        other_loss, other_grads = loss_and_grads(other)
        np.testing.assert_allclose(other_loss, base_loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(other_grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
