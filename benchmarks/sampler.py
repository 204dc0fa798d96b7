"""Sampler throughput: sophia_jax against transformers' generate, same model and weights, one run.

A Qwen2-architecture "small" model (vocab 32000, hidden 512, 8 layers, 8 heads / 2 KV heads,
MLP 1408, float32, random weights), prompts of 128 random tokens, exactly 128 new tokens (no stop
tokens), temperature 1.0, top-p 0.9. Both sides sample from the same weights on the same CPU;
PyTorch gets ``torch.set_num_threads(2)``.

    python benchmarks/sampler.py                       # batch 8 and 64
    python benchmarks/sampler.py --batch 8 --rounds 5

Reported per batch: new tokens/s of each (end to end: prefill + decode, as ``generate`` is
timed; median of interleaved rounds, since a shared machine's speed drifts), their ratio, and
sophia_jax's compile time (first call minus a steady-state call).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def build_models(seed: int = 0):
    import torch
    import transformers
    from flax import nnx

    from sophia_jax.checkpoint import assign_params, causal_lm_rules, to_ours
    from sophia_jax.models import CausalLM
    from sophia_jax.models.hf_config import text_config_from_hf

    hf_config = transformers.Qwen2Config(
        vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=1408, max_position_embeddings=1024, tie_word_embeddings=False, rope_theta=1e6,
    )
    torch.manual_seed(seed)
    torch_model = transformers.Qwen2ForCausalLM(hf_config).eval()
    config = text_config_from_hf(hf_config.to_dict())
    model = CausalLM(config, rngs=nnx.Rngs(0))
    tensors = {k: v.detach().float().numpy() for k, v in torch_model.state_dict().items()}
    assign_params(model, to_ours(causal_lm_rules(config), tensors))
    return torch_model, model


def sophia_runner(model, prompts, new_tokens: int):
    """Returns (run(seed) -> seconds, compile seconds)."""
    from sophia_jax.sampling import Sampler, SamplerConfig, SamplingParams

    sampler = Sampler(model, SamplerConfig(batch_size=len(prompts), buckets=(128, 256, 512), cache_dtype="float32",
                                           decode_chunk=new_tokens, progress=False))

    def run(seed: int) -> float:
        params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, top_p=0.9, seed=seed)
        start = time.perf_counter()
        results = sampler.generate(prompts, params)
        elapsed = time.perf_counter() - start
        assert all(len(s.tokens) == new_tokens for r in results for s in r.samples)
        return elapsed

    first = run(0)
    return run, first - run(1)


def transformers_runner(torch_model, prompts, new_tokens: int):
    """Returns run() -> seconds for transformers' generate (warmed up)."""
    import torch

    ids = torch.tensor(np.asarray(prompts))
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=0.9, top_k=0,
                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)

    def run(max_new: int = new_tokens) -> float:
        with torch.no_grad():
            start = time.perf_counter()
            out = torch_model.generate(ids, **{**kwargs, "max_new_tokens": max_new, "min_new_tokens": max_new})
            elapsed = time.perf_counter() - start
        assert out.shape[1] == ids.shape[1] + max_new
        return elapsed

    run(4)  # warm-up
    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved (sophia_jax, transformers) timing rounds; medians are reported")
    parser.add_argument("--hf-rounds-large", type=int, default=1,
                        help="transformers rounds for batches over 16 (one takes minutes on 2 cores)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args(argv)

    import jax
    import torch

    torch.set_num_threads(args.threads)
    torch_model, model = build_models()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); prompt {args.prompt_len}, new {args.new_tokens}, T=1.0, top-p 0.9")
    print(f"{'batch':>5} | {'sophia_jax tok/s':>16} | {'transformers tok/s':>18} | {'ratio':>6} | {'compile s':>9}")
    rng = np.random.default_rng(0)
    for batch in args.batch:
        prompts = rng.integers(0, 32000, size=(batch, args.prompt_len)).tolist()
        ours_run, compile_s = sophia_runner(model, prompts, args.new_tokens)
        theirs_run = transformers_runner(torch_model, prompts, args.new_tokens)
        hf_rounds = args.rounds if batch <= 16 else min(args.rounds, args.hf_rounds_large)
        ours, theirs = [], []
        for r in range(args.rounds):  # interleaved, so both see the same machine load
            ours.append(ours_run(r + 2))
            if r < hf_rounds:
                theirs.append(theirs_run())
        ours_tps = batch * args.new_tokens / statistics.median(ours)
        theirs_tps = batch * args.new_tokens / statistics.median(theirs)
        print(f"{batch:>5} | {ours_tps:>16.1f} | {theirs_tps:>18.1f} | {ours_tps / theirs_tps:>5.1f}x | "
              f"{compile_s:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
