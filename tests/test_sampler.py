"""Sampler end to end on tiny random models: greedy parity with transformers' generate (text and
images, left-padded batches), teacher-forced log-probs, prefix sharing, seeds, stop tokens,
bounded compilations, weight swaps and a 2x4 CPU mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import hf_models
import test_decoder_parity
import test_internvl_parity
from sophia_jax import sharding
from sophia_jax.data import chat_templates
from sophia_jax.sampling import Prompt, Sampler, SamplerConfig, SamplingParams, compiled_programs, strategy
from sophia_jax.sampling.testing import tiny_tokenizer

LENGTHS = (12, 5, 9, 3)  # two buckets of (8, 16) with two prompts per batch
GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0)


def config(**kw):
    base = dict(batch_size=2, buckets=(8, 16, 32), cache_dtype="float32", decode_chunk=3, progress=False)
    return SamplerConfig(**{**base, **kw})


def text_prompts(lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, hf_models.VOCAB, size=n).tolist() for n in lengths]


def left_pad(prompts):
    length = max(map(len, prompts))
    ids = np.zeros((len(prompts), length), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    return ids, mask


def hf_greedy(torch_model, prompts, max_new, pixel_values=None):
    ids, mask = left_pad(prompts)
    kwargs = {} if pixel_values is None else {"pixel_values": torch.tensor(pixel_values)}
    with torch.no_grad():
        out = torch_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                   max_new_tokens=max_new, eos_token_id=None, pad_token_id=0, **kwargs)
    return out[:, ids.shape[1]:].numpy()


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def text_pair(request):
    torch_model = hf_models.causal_lm(request.param)
    return torch_model, test_decoder_parity.port(torch_model)


@pytest.fixture(scope="module")
def qwen2_sampler():
    torch_model = hf_models.causal_lm("qwen2")
    model = test_decoder_parity.port(torch_model)
    return model, Sampler(model, config())


def tokens_of(results):
    return [s.tokens.tolist() for r in results for s in r.samples]


def test_greedy_matches_transformers_text(text_pair):
    torch_model, model = text_pair
    sampler = Sampler(model, config())
    prompts = text_prompts()
    results = sampler.generate(prompts, GREEDY)
    expected = hf_greedy(torch_model, prompts, GREEDY.max_new_tokens)
    assert [r.index for r in results] == list(range(len(prompts)))
    np.testing.assert_array_equal(np.array(tokens_of(results)), expected)
    assert all(s.finish_reason == "length" for r in results for s in r.samples)
    # Prompts are prefilled without their last token (the first decode step feeds it): 11, 4, 8, 2.
    assert sampler.buckets_used == {8, 16}
    assert sorted(k[0] for k in sampler.programs) == ["decode", "prefill", "prefill"]


def test_logprobs_match_teacher_forced_forward(qwen2_sampler):
    model, sampler = qwen2_sampler
    params = SamplingParams(max_new_tokens=6, temperature=0.7, top_p=0.8, top_k=100, n=2, seed=3)
    prompts = text_prompts((7, 4))
    results = sampler.generate(prompts, params)
    mode = strategy.Mode(k_cap=128, top_p=True)
    for prompt, result in zip(prompts, results):
        for s in result.samples:
            full = jnp.asarray([prompt + s.tokens.tolist()])
            logits = model(full)[0, len(prompt) - 1:-1]  # predicts each generated token
            raw = jax.nn.log_softmax(logits)[jnp.arange(len(s.tokens)), s.tokens]
            np.testing.assert_allclose(s.raw_logprobs, np.asarray(raw), atol=1e-4)
            behaviour = strategy.sampling_log_probs(logits, strategy.row_params(len(s.tokens), 0.7, 0.8, 100), mode)
            np.testing.assert_allclose(s.logprobs, np.asarray(behaviour[jnp.arange(len(s.tokens)), s.tokens]),
                                       atol=1e-4)
            assert np.all(s.logprobs > s.raw_logprobs)  # truncation and T < 1 sharpen the distribution


def test_seeds_samples_and_batching(qwen2_sampler):
    model, sampler = qwen2_sampler
    prompts = text_prompts((6, 3, 10))
    params = SamplingParams(max_new_tokens=5, temperature=1.0, n=3, seed=7)
    a = tokens_of(sampler.generate(prompts, params))
    assert a == tokens_of(sampler.generate(prompts, params))
    assert len({tuple(t) for t in a[:3]}) > 1  # the n samples of one prompt differ
    assert a != tokens_of(sampler.generate(prompts, SamplingParams(**{**params.__dict__, "seed": 8})))
    # A row's randomness depends on (seed, prompt, sample), not on how prompts were batched.
    wide = Sampler(model, config(batch_size=6))
    assert a == tokens_of(wide.generate(prompts, params))


def test_stop_tokens_are_per_sequence(qwen2_sampler):
    _, sampler = qwen2_sampler
    prompts = text_prompts()
    free = tokens_of(sampler.generate(prompts, GREEDY))
    stop = free[0][3]
    first = free[0].index(stop)
    items = [Prompt(prompts[0], stop_token_ids=(stop,))] + prompts[1:]
    results = sampler.generate(items, GREEDY)
    s0 = results[0].samples[0]
    assert s0.tokens.tolist() == free[0][: first + 1] and s0.finish_reason == "stop"
    assert len(s0.logprobs) == len(s0.raw_logprobs) == first + 1
    assert tokens_of(results[1:]) == free[1:]


def compiles_during(fn):
    before = compiled_programs()
    out = fn()
    after = compiled_programs()
    return out, {k: after[k] - before[k] for k in after}


def test_compilations_bounded_by_buckets_and_weight_swaps(qwen2_sampler):
    model, _ = qwen2_sampler
    unique = dict(block_size=8, kv_budget=8 * 40)  # a pool shape no other test compiles
    sampler = Sampler(model, config(progress=True, **unique))
    prompts = text_prompts((3, 4, 5, 7, 9, 11, 13, 17, 20, 25))
    params = SamplingParams(max_new_tokens=7, temperature=0.0)
    streamed, compiled = compiles_during(lambda: list(sampler.generate_iter(prompts, params)))
    assert sorted(r.index for r in streamed) == list(range(len(prompts)))
    assert sampler.buckets_used == {8, 16, 32}
    # 10 prompts through 2 rows: many refills and decode calls, one decode and one admit
    # program; prefills by (bucket, width of the 1-2 prompt ladder).
    prefills = {k for k in sampler.programs if k[0] == "prefill"}
    assert compiled == {"prefill": len(prefills), "decode": 1, "admit": 1, "select_rows": 0} and len(prefills) <= 6
    before = tokens_of(sorted(streamed, key=lambda r: r.index))
    # New weights of the same structure reuse the compiled programs and change the output; so
    # does a second sampler over the same model graph.
    sampler.update_params(jax.tree.map(lambda x: x * 1.5, sampler.params))
    after, compiled = compiles_during(lambda: tokens_of(sampler.generate(prompts, params)))
    assert after != before and compiled == {"prefill": 0, "decode": 0, "admit": 0, "select_rows": 0}
    again, compiled = compiles_during(lambda: tokens_of(Sampler(model, config(**unique)).generate(prompts, params)))
    assert again == before and compiled == {"prefill": 0, "decode": 0, "admit": 0, "select_rows": 0}
    with pytest.raises(ValueError, match="differ"):
        sampler.update_params(jax.tree.map(lambda x: x[..., :1], sampler.params))


@pytest.mark.parametrize("mesh_shape", [(1, 2, 4), (2, 2, 2)], ids=["fsdp2-tensor4", "data2-fsdp2-tensor2"])
def test_mesh_matches_single_device(qwen2_sampler, mesh_shape):
    """2x4 meshes: batch over data/fsdp; with tensor=2 the 2 KV heads (and the cache) are split."""
    model, sampler = qwen2_sampler
    prompts = text_prompts()
    expected = tokens_of(sampler.generate(prompts, GREEDY))
    mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_shape))
    sharded = sharding.shard_module(nnx.clone(model), mesh)
    mesh_sampler = Sampler(sharded, config(batch_size=4), mesh=mesh)
    assert tokens_of(mesh_sampler.generate(prompts, GREEDY)) == expected
    assert len([k for k in mesh_sampler.programs if k[0] == "decode"]) == 1


def test_bfloat16_cache_tracks_float32(qwen2_sampler):
    model, sampler = qwen2_sampler
    prompts = text_prompts((7, 4))
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=1)
    bf16 = Sampler(model, config(cache_dtype="bfloat16")).generate(prompts, params)
    for prompt, result in zip(prompts, bf16):
        s = result.samples[0]
        logits = model(jnp.asarray([prompt + s.tokens.tolist()]))[0, len(prompt) - 1:-1]
        raw = jax.nn.log_softmax(logits)[jnp.arange(len(s.tokens)), s.tokens]
        np.testing.assert_allclose(s.raw_logprobs, np.asarray(raw), atol=2e-2)


# -- InternVL ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def internvl_pair():
    torch_model = hf_models.internvl("300m", "qwen2")
    return torch_model, test_internvl_parity.port(torch_model)


def multimodal_prompts():
    """Three chat prompts: 2-tile image, text only, 1-tile image (different lengths)."""
    tok = tiny_tokenizer(hf_models.IMAGE_TOKEN)
    rng = np.random.default_rng(5)
    questions = [("describe this image .", 2), ("what is 2 + 3 ?", 0), ("what is on the red tree ?", 1)]
    prompts = []
    for question, tiles in questions:
        ids = chat_templates.internvl_prompt_ids(tok, question, num_tiles=[tiles] if tiles else [],
                                                 tokens_per_tile=4, system_message=None)
        pixels = rng.standard_normal((tiles, 3, 56, 56)).astype(np.float32) if tiles else None
        prompts.append(Prompt(ids, pixel_values=pixels))
    return prompts


def test_internvl_greedy_matches_transformers_and_shares_prefix(internvl_pair):
    torch_model, model = internvl_pair
    prompts = multimodal_prompts()
    assert len({len(p.tokens) for p in prompts}) == 3
    # Two prompts per batch: the two image prompts (longest) together, the text-only one alone.
    sampler = Sampler(model, config(batch_size=4, buckets=(32, 64), tile_budget=4))
    n = 2
    results, compiled = compiles_during(
        lambda: sampler.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.0, n=n)))
    pixels = np.concatenate([p.pixel_values for p in prompts if p.pixel_values is not None])
    expected = hf_greedy(torch_model, [list(p.tokens) for p in prompts], 6, pixels)
    for i, result in enumerate(results):
        assert len(result.samples) == n
        for s in result.samples:  # every sample of a prompt reuses its one prefill
            np.testing.assert_array_equal(s.tokens, expected[i])
    # The two image prompts are prefilled together and feed 4 decode rows; the text-only prompt
    # waits for free rows and is prefilled alone, with its own program (no vision tower). Each
    # prompt is prefilled (and its images encoded) once for its n samples.
    assert sampler.kv_usage.prefilled == 3
    assert {k for k in sampler.programs if k[0] == "prefill"} == {("prefill", 32, 2, True), ("prefill", 32, 1, False)}
    assert compiled == {"prefill": 2, "decode": 1, "admit": 1, "select_rows": 0}
