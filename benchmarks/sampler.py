"""Sampler throughput: sophia_jax against transformers' generate, same model and weights, one run.

A Qwen2-architecture "small" model (vocab 32000, hidden 512, 8 layers, 8 heads / 2 KV heads,
MLP 1408, float32, random weights), prompts of 128 random tokens, temperature 1.0, top-p 0.9.
Both sides sample from the same weights on the same CPU; PyTorch gets
``torch.set_num_threads(2)``. Three parts, in one run:

1. Fixed length: exactly 128 new tokens per prompt (no stop token), one batch of prompts.
   New tokens/s of each (end to end: prefill + decode, as ``generate`` is timed; median of
   interleaved rounds, since a shared machine's speed drifts), their ratio, and sophia_jax's
   compile time (first call minus a steady-state call).
2. Decode step time at a 128-token fill: our decode loop timed alone (64 steps from a 127-token
   prefix) with a 256-slot capacity (``max_new_tokens`` 128, a pool of 256 tokens per row) and
   with a 32K one (``max_new_tokens`` 32,768, i.e. a block table of 512 blocks per row, and the
   generate config's pool of 262,144 tokens). A step should cost what the rows hold.
3. Mixed length, the shape of reasoning work: samples stop at different lengths. The same
   weights with one change that makes a stop token likely at every step: the last layer's value
   bias gets a random vector, which adds one constant direction to every position's residual
   stream, and the stop token's LM-head row points along it, scaled so that the stop token has
   probability ~1/128 under top-p 0.9 (calibrated on its own samples). Lengths are then roughly
   geometric, mean ~128, capped at 2048, and reproducible (seeded). sophia_jax runs
   ``--mixed-samples`` prompts through ``--mixed-batch`` decode rows with continuous batching;
   transformers runs ``--hf-mixed-batches`` static batches of ``--mixed-batch`` prompts (each
   batch runs until its longest row stops; its rate does not depend on how many batches run).
   Reported: useful tokens/s (generated tokens up to and including the stop token) of each, the
   ratio, and ours / our own fixed-length rate at the same batch (the efficiency).

    python benchmarks/sampler.py                       # everything, default sizes
    python benchmarks/sampler.py --batch 8 --rounds 5 --skip-mixed

Measured on the shared 2-core host, other jobs running (figures move by 2x with the load):
see README "Benchmarks and TPU sizing".
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

VOCAB = 32000
STOP_TOKEN = 2  # any id works; the mixed workload's model makes this one likely


def qwen2_config():
    import transformers

    return transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=1408, max_position_embeddings=4096, tie_word_embeddings=False, rope_theta=1e6,
    )


def make_stop_likely(torch_model, stop: int, mean_length: float, top_p: float, seed: int = 0) -> None:
    """Edits the weights in place so that ``stop`` is sampled with probability ~1/mean_length at
    every step (see the module docstring): a constant residual direction from the last layer's
    value bias, and the stop token's LM-head row along it."""
    import torch

    cfg = torch_model.config
    attn = torch_model.model.layers[-1].self_attn
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv, group = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Softmax weights sum to 1, so a value bias b adds o_proj(b, repeated per query head)
        # to every position's attention output: a direction present at every step. At unit
        # scale its norm is about the residual stream's own (~10 here), so the context still
        # moves the hidden state.
        bias = torch.randn(kv * head_dim, generator=gen)
        attn.v_proj.bias.copy_(bias)
        direction = attn.o_proj.weight @ bias.view(kv, 1, head_dim).expand(kv, group, head_dim).reshape(-1)
        direction = direction / direction.norm()
        # Calibrate on the model's own samples (what decoding sees), the stop token's logit 0.
        torch_model.lm_head.weight[stop] = 0.0
        torch.manual_seed(seed)
        prompts = torch.randint(0, cfg.vocab_size, (4, 64), generator=gen)
        contexts = torch_model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                        temperature=1.0, top_p=top_p, top_k=0, max_new_tokens=128,
                                        min_new_tokens=128, eos_token_id=None, pad_token_id=0)
        hidden = torch_model.model(contexts).last_hidden_state[:, prompts.shape[1]:].reshape(-1, cfg.hidden_size)
        rest = torch.logsumexp(torch_model.lm_head(hidden), dim=-1)  # the stop token's logit is 0 here
        along = hidden @ direction
        # Top-p keeps ~top_p of the mass (the stop token inside it) and renormalises: aim the
        # raw probability at top_p / mean_length. Bisect the row's scale on these contexts.
        target, lo, hi = top_p / mean_length, 0.0, 10.0
        for _ in range(60):
            mid = (lo + hi) / 2
            p = torch.sigmoid(mid * along - rest).mean().item()
            lo, hi = (mid, hi) if p < target else (lo, mid)
        torch_model.lm_head.weight[stop] = lo * direction


def build_models(seed: int = 0, stop_mean_length: float | None = None, top_p: float = 0.9):
    """(transformers model, sophia_jax CausalLM) with the same random weights; with
    ``stop_mean_length``, the weights of the mixed-length workload (``make_stop_likely``)."""
    import torch
    import transformers
    from flax import nnx

    from sophia_jax.checkpoint import assign_params, causal_lm_rules, to_ours
    from sophia_jax.models import CausalLM
    from sophia_jax.models.hf_config import text_config_from_hf

    hf_config = qwen2_config()
    torch.manual_seed(seed)
    torch_model = transformers.Qwen2ForCausalLM(hf_config).eval()
    if stop_mean_length is not None:
        make_stop_likely(torch_model, STOP_TOKEN, stop_mean_length, top_p, seed)
    config = text_config_from_hf(hf_config.to_dict())
    model = CausalLM(config, rngs=nnx.Rngs(0))
    tensors = {k: v.detach().float().numpy() for k, v in torch_model.state_dict().items()}
    assign_params(model, to_ours(causal_lm_rules(config), tensors))
    return torch_model, model


def sampler_for(model, batch: int, **kw):
    from sophia_jax.sampling import Sampler, SamplerConfig

    base = dict(batch_size=batch, buckets=(128, 256, 512), cache_dtype="float32", progress=False)
    return Sampler(model, SamplerConfig(**{**base, **kw}))


def sampling_params(max_new: int, seed: int, stop: tuple[int, ...] = ()):
    from sophia_jax.sampling import SamplingParams

    return SamplingParams(max_new_tokens=max_new, temperature=1.0, top_p=0.9, seed=seed, stop_token_ids=stop)


def clocks() -> tuple[float, float]:
    """(wall, this process's CPU) seconds. CPU time, all threads, moves less with other jobs'
    load than wall time does (contention still slows it), so efficiencies are given in both."""
    return time.perf_counter(), time.process_time()


def sophia_runner(model, prompts, new_tokens: int):
    """Returns (run(seed) -> (wall, CPU) seconds, compile seconds)."""
    sampler = sampler_for(model, len(prompts), decode_chunk=new_tokens)

    def run(seed: int) -> tuple[float, float]:
        wall, cpu = clocks()
        results = sampler.generate(prompts, sampling_params(new_tokens, seed))
        elapsed = time.perf_counter() - wall, time.process_time() - cpu
        assert all(len(s.tokens) == new_tokens for r in results for s in r.samples)
        return elapsed

    first = run(0)[0]
    return run, first - run(1)[0]


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


def decode_step_ms(model, batch: int, prompt_len: int, max_new: int, kv_budget: int, steps: int = 64,
                   rounds: int = 3) -> float:
    """Median ms per decode step over ``steps`` steps from a ``prompt_len - 1`` token fill.

    Drives the sampler's own pieces (``_Run``: prefill and admission; the jitted decode loop) so
    that only decode steps are timed.
    """
    import jax
    import jax.numpy as jnp

    from sophia_jax.sampling import Prompt
    from sophia_jax.sampling import sampler as sampler_module

    sampler = sampler_for(model, batch, decode_chunk=steps, kv_budget=kv_budget)
    prompts = [Prompt(p) for p in np.random.default_rng(1).integers(0, VOCAB, size=(batch, prompt_len)).tolist()]
    times = []
    for seed in range(rounds + 1):  # the first call compiles
        run = sampler_module._Run(sampler, prompts, sampling_params(max_new, seed))
        run._grow()
        run._admit()
        table = jnp.asarray(run.table)
        jax.block_until_ready(run.state)
        start = time.perf_counter()
        run.state = sampler_module._decode(sampler.graphdef, sampler.params, run.state, table, jnp.int32(steps),
                                           jnp.int32(batch + 1), mode=run.mode, pad_id=0)
        jax.block_until_ready(run.state)
        times.append(time.perf_counter() - start)
        assert int(np.min(run.state.generated)) == steps
        sampler._state = run.state
    return 1000 * statistics.median(times[1:]) / steps


def sophia_mixed(model, prompts, batch: int, cap: int, seed: int):
    """((wall, CPU) seconds, lengths, KV use) of one continuous-batching run over all prompts
    (its programs compiled beforehand, the narrower tail widths included)."""
    sampler = sampler_for(model, batch)
    # Compiles decode at every tail width and prefill at the refill widths (mostly 4 prompts).
    sampler.generate(prompts[: 3 * batch], sampling_params(cap, seed + 1000, (STOP_TOKEN,)))
    wall, cpu = clocks()
    results = sampler.generate(prompts, sampling_params(cap, seed, (STOP_TOKEN,)))
    elapsed = time.perf_counter() - wall, time.process_time() - cpu
    lengths = [len(s.tokens) for r in results for s in r.samples]
    assert all(s.finish_reason == "stop" or len(s.tokens) == cap for r in results for s in r.samples)
    return elapsed, lengths, sampler.kv_usage


def transformers_mixed(torch_model, prompts, batch: int, cap: int):
    """(seconds, lengths) of static batches of ``batch`` prompts, each until its longest row stops."""
    import torch

    elapsed, lengths = 0.0, []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            ids = torch.tensor(np.asarray(prompts[i: i + batch]))
            start = time.perf_counter()
            out = torch_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                       top_p=0.9, top_k=0, max_new_tokens=cap, eos_token_id=STOP_TOKEN,
                                       pad_token_id=0)
            elapsed += time.perf_counter() - start
            for row in out[:, ids.shape[1]:].numpy():
                stops = np.flatnonzero(row == STOP_TOKEN)
                lengths.append(int(stops[0]) + 1 if stops.size else len(row))
    return elapsed, lengths


def describe(lengths) -> str:
    x = np.asarray(lengths)
    return f"mean {x.mean():.0f}, median {np.median(x):.0f}, max {x.max()}, {np.mean(x == x.max()):.0%} at max"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved (sophia_jax, transformers) timing rounds; medians are reported")
    parser.add_argument("--hf-rounds-large", type=int, default=1,
                        help="transformers rounds for batches over 16 (one takes minutes on 2 cores)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--step-batch", type=int, nargs="*", default=[8, 64],
                        help="batches for the decode-step-time comparison (none: skip it)")
    parser.add_argument("--skip-mixed", action="store_true", help="skip the mixed-length workload")
    parser.add_argument("--mixed-batch", type=int, default=32, help="decode rows (and transformers' batch)")
    parser.add_argument("--mixed-samples", type=int, default=1024, help="prompts of the mixed workload (ours)")
    parser.add_argument("--hf-mixed-batches", type=int, default=2, help="transformers batches of the mixed workload")
    parser.add_argument("--mixed-mean", type=float, default=128.0, help="target mean length (1 / stop probability)")
    parser.add_argument("--mixed-cap", type=int, default=2048, help="max_new_tokens of the mixed workload")
    args = parser.parse_args(argv)

    import jax
    import torch

    torch.set_num_threads(args.threads)
    torch_model, model = build_models()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.1f}; prompt {args.prompt_len}, "
          f"T=1.0, top-p 0.9")
    print(f"\nfixed length: {args.new_tokens} new tokens")
    print(f"{'batch':>5} | {'sophia_jax tok/s':>16} | {'transformers tok/s':>18} | {'ratio':>6} | {'compile s':>9}")
    rng = np.random.default_rng(0)
    fixed_rate, fixed_runs = {}, {}
    for batch in args.batch:
        prompts = rng.integers(0, VOCAB, size=(batch, args.prompt_len)).tolist()
        ours_run, compile_s = sophia_runner(model, prompts, args.new_tokens)
        theirs_run = transformers_runner(torch_model, prompts, args.new_tokens)
        hf_rounds = args.rounds if batch <= 16 else min(args.rounds, args.hf_rounds_large)
        ours, theirs = [], []
        for r in range(args.rounds):  # interleaved, so both see the same machine load
            ours.append(ours_run(r + 2))
            if r < hf_rounds:
                theirs.append(theirs_run())
        ours_tps = batch * args.new_tokens / statistics.median(w for w, _ in ours)
        theirs_tps = batch * args.new_tokens / statistics.median(theirs)
        fixed_rate[batch] = ours_tps, batch * args.new_tokens / statistics.median(c for _, c in ours)
        if batch == args.mixed_batch:  # kept for the efficiency's second reference
            fixed_runs[batch] = ours_run
        print(f"{batch:>5} | {ours_tps:>16.1f} | {theirs_tps:>18.1f} | {ours_tps / theirs_tps:>5.1f}x | "
              f"{compile_s:>9.2f}", flush=True)

    if args.step_batch:
        print(f"\ndecode step at a {args.prompt_len}-token fill (64 steps), ms/step")
        print(f"{'batch':>5} | {'256 slots':>9} | {'32K capacity':>12} | {'ratio':>6}")
        for batch in args.step_batch:
            small = decode_step_ms(model, batch, args.prompt_len, 256 - args.prompt_len, batch * 256)
            large = decode_step_ms(model, batch, args.prompt_len, 32768, 262144)
            print(f"{batch:>5} | {small:>9.1f} | {large:>12.1f} | {large / small:>5.2f}x", flush=True)

    if args.skip_mixed:
        return
    del torch_model, model
    torch_model, model = build_models(stop_mean_length=args.mixed_mean)
    batch, cap = args.mixed_batch, args.mixed_cap
    prompts = np.random.default_rng(1).integers(0, VOCAB, size=(args.mixed_samples, args.prompt_len)).tolist()
    print(f"\nmixed length: stop token probability ~1/{args.mixed_mean:.0f}, cap {cap}, {batch} rows; "
          f"sophia_jax {len(prompts)} prompts, transformers {args.hf_mixed_batches} x {batch}; "
          f"load average {os.getloadavg()[0]:.1f}")
    (ours_s, ours_cpu), ours_len, usage = sophia_mixed(model, prompts, batch, cap, seed=0)
    theirs_s, theirs_len = transformers_mixed(torch_model, prompts[: args.hf_mixed_batches * batch], batch, cap)
    ours_tps, theirs_tps = sum(ours_len) / ours_s, sum(theirs_len) / theirs_s
    print(f"  lengths, sophia_jax:   {describe(ours_len)}; KV peak {usage.peak_tokens} tokens "
          f"({usage.peak_live_tokens} live), {usage.preempted} preempted")
    print(f"  lengths, transformers: {describe(theirs_len)}")
    print(f"  useful tok/s: sophia_jax {ours_tps:.1f} ({ours_s:.0f} s), transformers {theirs_tps:.1f} "
          f"({theirs_s:.0f} s), ratio {ours_tps / theirs_tps:.1f}x")
    if batch in fixed_runs:
        # The load drifts over the minutes the mixed run takes: the fixed rate is taken again
        # right after it, and the efficiency uses the mean of the two.
        again = [fixed_runs[batch](r + 100) for r in range(args.rounds)]
        tokens = batch * args.new_tokens
        after = tokens / statistics.median(w for w, _ in again), tokens / statistics.median(c for _, c in again)
        (wall_before, cpu_before) = fixed_rate[batch]
        print(f"  efficiency (mixed / fixed-length rate at batch {batch}, before and after it): wall "
              f"{ours_tps / ((wall_before + after[0]) / 2):.2f} (fixed {wall_before:.1f}, {after[0]:.1f} tok/s); "
              f"CPU time {sum(ours_len) / ours_cpu / ((cpu_before + after[1]) / 2):.2f} "
              f"(fixed {cpu_before:.1f}, {after[1]:.1f} tok/CPU-s)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
