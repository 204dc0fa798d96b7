"""InternVL logits match transformers' InternVLForConditionalGeneration on tiny random models."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hf_models
from sophia_jax.checkpoint import assign_params, canonical_hf_name, internvl_rules, to_ours
from sophia_jax.models import InternVL, RuntimeConfig
from sophia_jax.models.hf_config import internvl_config_from_hf

CASES = [("300m", "qwen2"), ("6b", "qwen2"), ("300m", "llama")]


def port(torch_model, runtime=None):
    """Builds our InternVL from a transformers model's config and weights."""
    config = internvl_config_from_hf(torch_model.config.to_dict())
    model = InternVL(config, **({"runtime": runtime} if runtime else {}), rngs=nnx.Rngs(0))
    tensors = {canonical_hf_name(k): v for k, v in hf_models.state_dict_numpy(torch_model).items()}
    assign_params(model, to_ours(internvl_rules(config), tensors))
    return model


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "+".join(c))
def pair(request):
    torch_model = hf_models.internvl(*request.param)
    return torch_model, port(torch_model)


def test_logits_match_transformers(pair):
    torch_model, model = pair
    ids, mask, pixels = hf_models.multimodal_batch()
    expected = hf_models.torch_logits(torch_model, ids, mask, pixels)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))
    assert got.shape == expected.shape
    np.testing.assert_array_less(np.abs(got - expected).max(), 1e-4)
    # The comparison must not be vacuous: images change the logits.
    text_only = np.asarray(model(jnp.asarray(np.where(ids == hf_models.IMAGE_TOKEN, 7, ids)), None, jnp.asarray(mask)))
    assert np.abs(text_only - got).max() > 1e-3


def test_tile_budget_padding_changes_nothing(pair):
    _, model = pair
    ids, mask, pixels = hf_models.multimodal_batch()
    base = np.asarray(model(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))
    padded = np.concatenate([pixels, np.full((3, *pixels.shape[1:]), 5.0, np.float32)])
    tile_mask = np.arange(len(padded)) < len(pixels)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(padded), jnp.asarray(mask), tile_mask=jnp.asarray(tile_mask)))
    np.testing.assert_allclose(got, base, atol=1e-5)


def test_image_token_count_mismatch_is_an_error(pair):
    _, model = pair
    ids, mask, pixels = hf_models.multimodal_batch()
    with pytest.raises(ValueError, match="image tokens and image features do not match"):
        model(jnp.asarray(ids), jnp.asarray(pixels[:3]), jnp.asarray(mask))


# bfloat16 (weights and activations) against float32 on the same weights. Measured on these
# tiny models: max |diff| is about 1% of the largest |logit| (0.017 of 1.93); we allow 2.5%.
BF16_RELATIVE_TOLERANCE = 2.5e-2


def test_bfloat16_forward_stays_close_to_float32(pair):
    torch_model, model = pair
    ids, mask, pixels = (jnp.asarray(x) for x in hf_models.multimodal_batch())
    reference = np.asarray(model(ids, pixels, mask))
    bf16 = port(torch_model, RuntimeConfig(dtype="bfloat16", param_dtype="bfloat16"))
    assert bf16.language_model.embed.get_value().dtype == jnp.bfloat16
    got = np.asarray(bf16(ids, pixels, mask))
    assert got.dtype == np.float32  # logits are upcast for sampling and losses
    assert np.abs(got - reference).max() <= BF16_RELATIVE_TOLERANCE * np.abs(reference).max()
