"""InternViT pieces checked against torch directly: position interpolation and pixel shuffle."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import hf_models
from sophia_jax.checkpoint import assign_params, canonical_hf_name, internvl_rules, to_ours
from sophia_jax.models import InternVL, pixel_shuffle
from sophia_jax.models.hf_config import internvl_config_from_hf
from sophia_jax.models.internvit import bicubic_matrix


@pytest.mark.parametrize("src,dst", [(4, 6), (32, 40), (4, 2), (5, 5)])
def test_bicubic_matrix_matches_torch_interpolate(src, dst):
    grid = np.random.default_rng(0).standard_normal((1, 3, src, src)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.tensor(grid), size=(dst, dst), mode="bicubic",
                                               align_corners=False).numpy()
    m = bicubic_matrix(src, dst)
    got = np.einsum("rg,ncgw,sw->ncrs", m, grid, m)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pixel_shuffle_v2_and_v1_against_transformers():
    torch_model = hf_models.internvl("300m", "qwen2")
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 8)).astype(np.float32)
    expected = torch_model.model.pixel_shuffle(torch.tensor(x), 0.5).reshape(2, -1, 32).numpy()
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), "v2")), expected)
    v1 = np.asarray(pixel_shuffle(jnp.asarray(x), "v1")).reshape(2, 2, 2, 32)
    # v1 is the same tokens on a transposed grid
    np.testing.assert_array_equal(v1.transpose(0, 2, 1, 3).reshape(2, 4, 32), expected)


def test_larger_tiles_interpolate_positions_like_transformers():
    """84-pixel tiles make a 6x6 patch grid against the 4x4 table: both sides interpolate."""
    torch_model = hf_models.internvl("300m", "qwen2")
    config = internvl_config_from_hf(torch_model.config.to_dict())
    model = InternVL(config, rngs=nnx.Rngs(0))
    tensors = {canonical_hf_name(k): v for k, v in hf_models.state_dict_numpy(torch_model).items()}
    assign_params(model, to_ours(internvl_rules(config), tensors))
    pixels = np.random.default_rng(0).standard_normal((2, 3, 84, 84)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model.model.vision_tower(pixel_values=torch.tensor(pixels)).last_hidden_state.numpy()
    got = np.asarray(model.vision(jnp.asarray(pixels)))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_select_layer_picks_intermediate_hidden_state():
    torch_model = hf_models.internvl("6b", "qwen2")
    config = internvl_config_from_hf(torch_model.config.to_dict())
    import dataclasses
    config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, select_layer=-2))
    model = InternVL(config, rngs=nnx.Rngs(0))
    tensors = {canonical_hf_name(k): v for k, v in hf_models.state_dict_numpy(torch_model).items()}
    assign_params(model, to_ours(internvl_rules(config), tensors))
    pixels = np.random.default_rng(0).standard_normal((1, 3, 56, 56)).astype(np.float32)
    with torch.no_grad():
        out = torch_model.model.vision_tower(pixel_values=torch.tensor(pixels), output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(model.vision(jnp.asarray(pixels))), out.hidden_states[-2].numpy(), atol=1e-4)
