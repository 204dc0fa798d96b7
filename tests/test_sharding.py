"""Logical-axis rules, born-sharded parameters and mesh forward parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import hf_models
from sophia_jax import sharding
from sophia_jax.checkpoint import assign_params, canonical_hf_name, internvl_rules, to_ours
from sophia_jax.models import InternVL
from sophia_jax.models.hf_config import internvl_config_from_hf


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, tensor=4))


def test_mesh_config_fills_minus_one():
    assert sharding.MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.MeshConfig(data=2, fsdp=3, tensor=1).shape(8)
    with pytest.raises(ValueError, match="at most one"):
        sharding.MeshConfig(data=-1, fsdp=-1).shape(8)


def test_logical_rules(mesh):
    spec = sharding.logical_to_spec(("embed", "mlp"), (64, 128), mesh)
    assert spec == P("fsdp", "tensor")
    # batch takes fsdp first, so embed stays whole on activations
    assert sharding.logical_to_spec(("batch", "length", "embed"), (4, 8, 64), mesh) == P("fsdp", None, None)
    # 25 heads do not split over 4 devices: replicated rather than an error
    assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (64, 25, 8), mesh) == P("fsdp", None, None)
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_spec(("nonsense",))


def test_parameters_are_born_sharded(mesh):
    torch_model = hf_models.internvl("300m", "qwen2")
    config = internvl_config_from_hf(torch_model.config.to_dict())
    model = sharding.create_sharded(lambda: InternVL(config, rngs=nnx.Rngs(0)), mesh)
    embed = model.language_model.embed.get_value()
    assert embed.sharding.spec == P("tensor", "fsdp")
    # Every parameter with at least 2**12 elements must be split across devices.
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and var.get_value().size >= 4096:
            shard = var.get_value().addressable_shards[0].data
            assert shard.size < var.get_value().size, path


def test_mesh_forward_matches_single_device(mesh):
    torch_model = hf_models.internvl("6b", "qwen2")
    config = internvl_config_from_hf(torch_model.config.to_dict())
    tensors = {canonical_hf_name(k): v for k, v in hf_models.state_dict_numpy(torch_model).items()}
    weights = to_ours(internvl_rules(config), tensors)
    ids, mask, pixels = (jnp.asarray(x) for x in hf_models.multimodal_batch())

    single = InternVL(config, rngs=nnx.Rngs(0))
    assign_params(single, weights)
    expected = np.asarray(single(ids, pixels, mask))

    sharded = sharding.create_sharded(lambda: InternVL(config, rngs=nnx.Rngs(1)), mesh)
    assign_params(sharded, weights)
    graphdef, state = nnx.split(sharded)

    @jax.jit
    def forward(state, ids, pixels, mask):
        with sharding.use_mesh(mesh):
            return nnx.merge(graphdef, state)(ids, pixels, mask)

    got = forward(state, ids, pixels, mask)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)
