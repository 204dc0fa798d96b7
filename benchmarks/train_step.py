"""Train-step throughput: sophia_jax against transformers + torch AdamW, same model and weights, one run.

The "small" Qwen2 model of benchmarks/sampler.py (vocab 32000, hidden 512, 8 layers, 8 heads /
2 KV heads, MLP 1408, float32), a batch of 8 rows x 512 tokens, every token trained (one
segment per row), AdamW. Our step is the real one (``training.step.TrainProgram``: chunked
loss, global-norm clipping, AdamW) on the weights loaded through ``checkpoint.load`` from the
transformers model's own save. PyTorch gets ``torch.set_num_threads(2)``.

Each side runs in its own process, so its peak RSS is its own. Reported: tokens/s of each
(median over timed steps), their ratio, peak RSS, and the model FLOP/s of our step as a fraction
of this CPU's float32 matmul rate, measured here with a large jitted matmul (an MFU). Model FLOPs
are counted by hand, as MFU figures are: 6 x tokens x matmul parameters (LM head included, the
embedding lookup not) plus the attention products over the full [T, S] square, forward and
backward; recomputation (the loss's logits in its backward) is work, not model FLOPs, so it is
not counted. XLA's ``cost_analysis`` is no substitute: it counts a ``while`` body once, so it
misses all but one chunk of the vocabulary-chunked loss.

    python benchmarks/train_step.py            # both sides, then the comparison
    python benchmarks/train_step.py --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BATCH, LENGTH = 8, 512


def hf_config():
    import transformers

    return transformers.Qwen2Config(
        vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=1408, max_position_embeddings=1024, tie_word_embeddings=False, rope_theta=1e6,
    )


def torch_model(seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(hf_config())


def tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 32000, size=(BATCH, LENGTH + 1)).astype(np.int32)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_torch(steps: int) -> dict:
    import torch

    torch.set_num_threads(2)
    model = torch_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
    ids = torch.tensor(tokens(), dtype=torch.long)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        out = model(input_ids=ids[:, :-1], labels=ids[:, :-1])  # transformers shifts labels itself
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:])
    return {"tokens_per_s": BATCH * LENGTH / step_s, "step_s": step_s, "peak_rss_mib": peak_rss_mib()}


def matmul_flops_per_s(n: int = 2048, rounds: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def model_flops_per_step() -> float:
    """Forward + backward FLOPs of one step on BATCH x LENGTH tokens (see the module docstring)."""
    c = hf_config()
    d, f, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    head_dim = d // c.num_attention_heads
    q_width, kv_width = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    per_layer = d * q_width + 2 * d * kv_width + q_width * d + 3 * d * f
    matmul_params = layers * per_layer + d * c.vocab_size
    tokens = BATCH * LENGTH
    attention = layers * 2 * 2 * BATCH * LENGTH * LENGTH * q_width  # q k^T and p v, forward
    return 3 * (2 * tokens * matmul_params + attention)


def run_ours(steps: int) -> dict:
    import jax

    from sophia_jax import checkpoint, sharding
    from sophia_jax.training import step as step_lib
    from sophia_jax.training.optimizer import OptimizerConfig, trainable_filter

    with tempfile.TemporaryDirectory() as tmp:
        torch_model().save_pretrained(tmp)
        mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
        model = checkpoint.load(tmp, mesh)
    graphdef, params, frozen = step_lib.split_model(model, trainable_filter("all"))
    del model
    config = step_lib.StepConfig(optimizer=OptimizerConfig(peak_learning_rate=1e-5, total_steps=1000),
                                 loss_chunk_tokens=1024)
    program = step_lib.TrainProgram(graphdef, params, frozen, mesh, config)
    ids = tokens()
    local = {
        "input_ids": ids[None, :, :-1], "targets": ids[None, :, 1:],
        "loss_weights": np.ones((1, BATCH, LENGTH), np.float32),
        "segment_ids": np.ones((1, BATCH, LENGTH), np.int32),
        "positions": np.broadcast_to(np.arange(LENGTH, dtype=np.int32), (1, BATCH, LENGTH)).copy(),
        "source": np.zeros((1, BATCH, LENGTH), np.int32),
        "behaviour_seq_logprob": np.full((1, BATCH, LENGTH), np.nan, np.float32),
        "behaviour_token_logprob": np.full((1, BATCH, LENGTH), np.nan, np.float32),
    }
    batch = program.global_batch(local, BATCH)
    state = program.init(params)
    flops = model_flops_per_step()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        state, metrics = program(state, frozen, batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:])
    matmul = matmul_flops_per_s()
    return {"tokens_per_s": BATCH * LENGTH / step_s, "step_s": step_s, "peak_rss_mib": peak_rss_mib(),
            "flops_per_step": flops, "achieved_flops_per_s": flops / step_s, "matmul_flops_per_s": matmul}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per side (after one warm-up step)")
    p.add_argument("--side", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print(json.dumps(run_ours(args.steps) if args.side == "ours" else run_torch(args.steps)))
        return
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device, all its threads
    results = {}
    for side in ("ours", "torch"):
        out = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(args.steps)],
                             capture_output=True, text=True, env=env, check=True)
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, torch_ = results["ours"], results["torch"]
    print(f"train step, small Qwen2 (32000 vocab, 512 wide, 8 layers), batch {BATCH} x {LENGTH} tokens, float32")
    print(f"  sophia_jax   {ours['tokens_per_s']:8.0f} tokens/s  ({ours['step_s']:.3f} s/step), "
          f"peak RSS {ours['peak_rss_mib']:.0f} MiB")
    print(f"  transformers {torch_['tokens_per_s']:8.0f} tokens/s  ({torch_['step_s']:.3f} s/step), "
          f"peak RSS {torch_['peak_rss_mib']:.0f} MiB")
    print(f"  ratio (ours / transformers): {ours['tokens_per_s'] / torch_['tokens_per_s']:.2f}x")
    print(f"  our step: {ours['flops_per_step'] / 1e9:.1f} model GFLOP, {ours['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s "
          f"= {ours['achieved_flops_per_s'] / ours['matmul_flops_per_s']:.0%} of this CPU's measured float32 matmul "
          f"rate ({ours['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
