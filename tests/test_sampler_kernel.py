"""The TPU path of paged decode attention (``runtime.attention = "fused"``): JAX's Pallas ragged
paged attention kernel. Its argument conventions are checked against the kernel's own reference
on CPU, the switch keeps CPU programs on the plain path, and the decode program compiles with
the kernel for a TPU slice from this host (libtpu, no TPU)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sophia_jax import aot, sharding
from sophia_jax.configs import models as presets
from sophia_jax.models import CausalLM, RuntimeConfig
from sophia_jax.sampling import Sampler, SamplerConfig, SamplingParams, loop, paged, strategy
from sophia_jax.sampling import sampler as sampler_module

# The kernel needs head_dim % 128 == 0 (the SOPHIA models' 128); the other tiny models use 16.
TEXT = dataclasses.replace(presets.model_config(presets.get_config("tiny")).text, hidden_size=128, num_heads=4,
                           num_kv_heads=2, head_dim=128, intermediate_size=128)


def test_plain_attention_matches_the_kernels_reference():
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ref_ragged_paged_attention

    rows, heads, kv, dim, bs, blocks, width = 4, 4, 2, 128, 16, 40, 6
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((rows, heads, dim)), jnp.float32)
    pool = jnp.asarray(rng.standard_normal((blocks, bs, 2 * kv, dim)), jnp.float32)
    table = jnp.asarray(rng.permutation(np.arange(1, blocks))[: rows * width].reshape(rows, width), jnp.int32)
    visible = jnp.asarray([5, 1, 33, 96], jnp.int32)  # 1 slot, part of a block, a full table
    ours = paged.paged_attention(q, pool, table, visible)
    theirs = ref_ragged_paged_attention(q, pool, visible, table, jnp.arange(rows + 1, dtype=jnp.int32),
                                        jnp.asarray([rows], jnp.int32), sm_scale=dim**-0.5)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)
    # The pool interleaves keys and values per KV head: the same as keeping them apart.
    k, v = pool[:, :, 0::2], pool[:, :, 1::2]
    np.testing.assert_array_equal(np.asarray(paged.combine(k, v)), np.asarray(pool))


def test_fused_switch_keeps_cpu_programs_on_the_plain_path():
    def tokens(attention):
        model = CausalLM(TEXT, RuntimeConfig(attention=attention), rngs=nnx.Rngs(3))
        sampler = Sampler(model, SamplerConfig(batch_size=2, buckets=(8, 16), cache_dtype="float32", decode_chunk=4,
                                               kv_budget=256, block_size=8, progress=False))
        prompts = [[5, 9, 2, 7, 30, 11], [8, 1, 4]]
        results = sampler.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=1))
        return [s.tokens.tolist() for r in results for s in r.samples]

    assert tokens("fused") == tokens("xla")


def test_decode_compiles_with_the_kernel_for_a_tpu_slice():
    devices = aot.topology_devices("v5p:2x2x1")
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 2, 2), devices)  # rows over fsdp, heads over tensor
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rows, chunk, blocks, bs, width = 8, 16, 65, 16, 16

    def custom_calls(attention):
        runtime = RuntimeConfig(dtype="bfloat16", param_dtype="bfloat16", attention=attention)
        graphdef, params = aot.abstract_model(TEXT, runtime, mesh)
        state = jax.eval_shape(lambda: loop.init_state(TEXT, 0, 64, rows=rows, chunk=chunk, num_blocks=blocks,
                                                       block_size=bs, dtype="bfloat16", stop_slots=8))
        state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
        table = jax.ShapeDtypeStruct((rows, width), jnp.int32, sharding=replicated)
        scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
        with sharding.use_mesh(mesh):
            compiled = sampler_module._decode.lower(graphdef, params, state, table, scalar, scalar,
                                                    mode=strategy.Mode(top_p=True), pad_id=0).compile()
        text = compiled.as_text()
        return text.count("ragged_paged_attention_kernel"), text.count("tpu_custom_call")

    kernel_named, fused = custom_calls("fused")
    assert fused == TEXT.num_layers and kernel_named >= TEXT.num_layers  # one kernel per layer
    assert custom_calls("xla") == (0, 0)
