"""Continuous batching over the paged KV cache: refills, stops mid-decoding, preemption, KV use
bounded by live tokens, a 32,768-token cap, and the tail narrowing onto fewer rows (tiny random
Qwen2, CPU)."""

import time

import numpy as np
import pytest

import hf_models
import test_decoder_parity
from test_sampler import GREEDY, compiles_during, config, hf_greedy, text_prompts, tokens_of
from sophia_jax.sampling import Prompt, Sampler, SamplingParams
from sophia_jax.sampling.testing import tiny_tokenizer

SMALL = dict(block_size=4, kv_budget=4 * 64)  # several blocks per row, a budget that matters


@pytest.fixture(scope="module")
def pair():
    torch_model = hf_models.causal_lm("qwen2")
    return torch_model, test_decoder_parity.port(torch_model)


def alone(model, prompt, params, **kw):
    return Sampler(model, config(batch_size=1, **kw)).generate([prompt], params)[0].samples[0]


def test_refilled_rows_match_each_prompt_alone_and_transformers(pair):
    """Half the rows stop at step 1 (their first generated token is a stop token) and are
    refilled from the queue while the other rows keep decoding."""
    torch_model, model = pair
    prompts = text_prompts((12, 5, 9, 3, 7, 10, 4, 6), seed=1)
    free = hf_greedy(torch_model, prompts, GREEDY.max_new_tokens)
    items = [Prompt(p, stop_token_ids=(int(free[i][0]),) if i % 2 == 0 else ()) for i, p in enumerate(prompts)]
    sampler = Sampler(model, config(batch_size=4, decode_chunk=8, **SMALL))
    results = sampler.generate(items, GREEDY)
    for i, r in enumerate(results):
        s = r.samples[0]
        if i % 2 == 0:
            assert s.tokens.tolist() == [free[i][0]] and s.finish_reason == "stop"
        else:
            assert s.tokens.tolist() == free[i].tolist() and s.finish_reason == "length"
        assert s.tokens.tolist() == alone(model, items[i], GREEDY, **SMALL).tokens.tolist()
    # Rows freed after step 1 were refilled before the long rows finished: the second decode
    # call ran with every row busy again, and the 8 prompts needed far fewer calls than 2 batches.
    live_rows = [h[0] for h in sampler.kv_usage.history]
    assert live_rows[0] == 4 and live_rows[1] == 4
    assert sum(1 for n in live_rows if n == 4) >= 2


def test_stop_during_decoding_tokens_reason_and_text(pair):
    _, model = pair
    tok = tiny_tokenizer(image_token_id=None)
    vocab = len(tok)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(5, min(vocab, hf_models.VOCAB), size=n).tolist() for n in (6, 9)]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=2)  # varied tokens, reproducible
    sampler = Sampler(model, config(batch_size=2, decode_chunk=3, **SMALL), tokenizer=tok)
    free = tokens_of(sampler.generate(prompts, params))
    # A stop token whose first appearance is past the prefill-produced token and mid-chunk.
    at, stop = next((t, x) for t, x in enumerate(free[0]) if t >= 2 and free[0].index(x) == t)
    results = sampler.generate([Prompt(prompts[0], stop_token_ids=(stop,)), prompts[1]], params)
    s0, s1 = results[0].samples[0], results[1].samples[0]
    assert s0.tokens.tolist() == free[0][: at + 1] and s0.finish_reason == "stop"
    assert len(s0.logprobs) == len(s0.raw_logprobs) == at + 1
    assert s0.text == tok.decode(free[0][:at], skip_special_tokens=True)
    assert s1.tokens.tolist() == free[1] and s1.finish_reason == "length"
    assert s1.text == tok.decode(free[1], skip_special_tokens=True)


def test_kv_use_grows_with_live_tokens(pair):
    _, model = pair
    sampler = Sampler(model, config(batch_size=2, decode_chunk=4, **SMALL))
    sampler.generate(text_prompts((5,)), SamplingParams(max_new_tokens=40, temperature=0.0))
    history = sampler.kv_usage.history  # (live rows, live tokens, blocks in use) per decode call
    tokens = [h[1] for h in history]
    blocks = [h[2] for h in history]
    assert tokens == sorted(tokens) and blocks == sorted(blocks) and blocks[-1] > 2 * blocks[0]
    bs = SMALL["block_size"]
    for _, live, used in history:  # what one row holds + its next decode call, no more
        assert live <= used * bs <= live + 4 + 2 * bs


def test_preemption_under_a_tight_budget_gives_the_same_samples(pair):
    _, model = pair
    prompts = text_prompts((9, 6, 11), seed=4)
    params = SamplingParams(max_new_tokens=24, temperature=1.0, n=2, seed=5)
    roomy = tokens_of(Sampler(model, config(batch_size=4, decode_chunk=4, **SMALL)).generate(prompts, params))
    tight = Sampler(model, config(batch_size=4, decode_chunk=4, block_size=4, kv_budget=4 * 14))
    assert tokens_of(tight.generate(prompts, params)) == roomy
    assert tight.kv_usage.preempted > 0 and tight.kv_usage.peak_blocks <= 14


def test_a_32768_token_cap_is_an_ordinary_setting(pair):
    """The cap sizes nothing: rows stop early (a stop token), memory follows what they hold."""
    _, model = pair
    prompts = text_prompts((7, 4, 10), seed=6)
    short = tokens_of(Sampler(model, config(batch_size=2)).generate(prompts, GREEDY))
    items = [Prompt(p, stop_token_ids=(short[i][2],)) for i, p in enumerate(prompts)]
    sampler = Sampler(model, config(batch_size=2, decode_chunk=16, block_size=16, kv_budget=32768))
    start = time.perf_counter()
    results = sampler.generate(items, SamplingParams(max_new_tokens=32768, temperature=0.0))
    assert time.perf_counter() - start < 60
    for i, r in enumerate(results):
        s = r.samples[0]
        stop_at = short[i].index(short[i][2])
        assert s.tokens.tolist() == short[i][: stop_at + 1] and s.finish_reason == "stop"
    assert sampler.kv_usage.peak_blocks <= 2 * 3  # two rows of < 2 blocks each (+ a prefix)


def test_the_tail_narrows_onto_fewer_rows_with_the_same_samples(pair):
    """Once nothing waits, the live rows move onto half as many rows (and again), so the tail of
    a run stops computing finished rows; the samples are the ones a full-width run gives."""
    _, model = pair
    prompts = text_prompts((5, 9, 3, 7, 11, 4, 6, 8), seed=7)
    params = SamplingParams(max_new_tokens=30, temperature=1.0, n=2, seed=3)  # 16 samples, 16 rows
    roomy = dict(decode_chunk=4, block_size=4, kv_budget=4 * 512)
    free = tokens_of(Sampler(model, config(batch_size=16, tail_rows=16, **roomy)).generate(prompts, params))
    # Stop tokens met at different steps (one from each sample), so rows finish one after another.
    items = [Prompt(p, stop_token_ids=(free[2 * i][2 + 3 * (i % 4)], free[2 * i + 1][4 + 3 * ((i + 2) % 4)]))
             for i, p in enumerate(prompts)]
    full = tokens_of(Sampler(model, config(batch_size=16, tail_rows=16, **roomy)).generate(items, params))
    assert len({len(t) for t in full}) > 4
    narrowing = Sampler(model, config(batch_size=16, tail_rows=2, **roomy))
    got, compiled = compiles_during(lambda: tokens_of(narrowing.generate(items, params)))
    assert got == full
    widths = sorted(k[1] for k in narrowing.programs if k[0] == "decode")
    assert widths[-1] == 16 and len(widths) >= 3 and min(widths) >= 2
    # One decode program per narrower width (16 rows were compiled by the runs above), one
    # select program per step down.
    assert compiled["decode"] == compiled["select_rows"] == len(widths) - 1
    live_rows = [h[0] for h in narrowing.kv_usage.history]
    assert live_rows[-1] < 16
    # The next call starts on all 16 rows again (one program widens), with nothing else compiled.
    again, compiled = compiles_during(lambda: tokens_of(narrowing.generate(items, params)))
    assert again == full and compiled == {"prefill": 0, "decode": 0, "admit": 0, "select_rows": 1}
