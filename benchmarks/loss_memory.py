"""Memory and speed of loss + gradient at the InternVL vocabulary: chunked against unchunked.

Float32 hidden states [tokens, D] and a padded LM head [D, 151,680] (vocabulary 151,674), loss =
mean of -log p(target), gradient with respect to both. Two programs:

* ``chunked``: ``sophia_jax.training.loss.token_log_probs`` with ``--chunk`` tokens per chunk;
* ``unchunked``: a plain ``jax.nn.log_softmax`` over the full [tokens, V] float32 logits.

Each runs in a fresh child process, which compiles it, prints the compiled program's
``memory_analysis()`` (temp bytes: XLA's scratch beyond arguments and outputs), scans the
compiled HLO text for any float32 buffer shaped [tokens, vocab] (padded or not), runs it
``--repeats`` times for tokens/s and reports its peak RSS (VmHWM). The parent prints both, the
ratios, and fails if the chunked program holds a [tokens, vocab] float32 buffer or its peak RSS
is above a quarter of the unchunked one.

    python benchmarks/loss_memory.py                          # 8,192 tokens, D = 1024
    python benchmarks/loss_memory.py --compile_only           # memory analysis only, no run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

VOCAB = 151674
GiB = 1 << 30


def peak_rss() -> int:
    """This process's peak resident set (VmHWM), fresh at exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def available_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo (Linux only)")


def child(mode: str, tokens: int, d: int, chunk: int, repeats: int, compile_only: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from sophia_jax.models.config import VOCAB_MULTIPLE
    from sophia_jax.training import loss as L

    vp = -(-VOCAB // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(k1, (1, tokens, d), jnp.float32)
    head = jax.random.normal(k2, (d, vp), jnp.float32) * d**-0.5
    targets = jax.random.randint(k3, (1, tokens), 0, VOCAB)

    if mode == "chunked":
        def loss(h, w):
            return -jnp.mean(L.token_log_probs(h, w, targets, vocab_size=VOCAB, chunk_size=chunk))
    else:
        def loss(h, w):
            logp = jax.nn.log_softmax(h @ w[:, :VOCAB], axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    t0 = time.perf_counter()
    compiled = step.lower(hidden, head).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    # Any f32 array with both a tokens-sized and a vocab-sized dim (e.g. f32[8192,151680]).
    def dims(shape):
        return set(map(int, shape.split(",")))

    big = sorted({m.group(0) for m in re.finditer(r"f32\[([0-9,]+)\]", hlo)
                  if tokens in dims(m.group(1)) and dims(m.group(1)) & {VOCAB, vp}})
    out = {
        "mode": mode, "temp_bytes": mem.temp_size_in_bytes, "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes, "tokens_by_vocab_f32": big, "compile_s": compile_s,
    }
    if not compile_only:
        # The machine may be shared: refuse to run a program that would not fit in what is free.
        need = mem.temp_size_in_bytes + 2 * GiB
        if available_memory() < need:
            raise SystemExit(f"{mode}: needs about {need / GiB:.1f} GiB, only {available_memory() / GiB:.1f} available")
        baseline = peak_rss()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(hidden, head))
            times.append(time.perf_counter() - t0)
        out.update(baseline_rss=baseline, peak_rss=peak_rss(), seconds=min(times), tokens_per_s=tokens / min(times))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--d", type=int, default=1024, help="hidden width D")
    p.add_argument("--chunk", type=int, default=1024, help="tokens per chunk of the chunked loss")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--compile_only", action="store_true", help="memory analysis only; do not run")
    p.add_argument("--child", choices=["chunked", "unchunked"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.tokens, args.d, args.chunk, args.repeats, args.compile_only)))
        return 0

    print(f"vocabulary {VOCAB}, {args.tokens} tokens, D = {args.d}, float32, chunk {args.chunk} tokens; "
          f"loss + grad w.r.t. hidden and head")
    results = {}
    for mode in ("chunked", "unchunked"):
        cmd = [sys.executable, __file__, "--child", mode, "--tokens", str(args.tokens), "--d", str(args.d),
               "--chunk", str(args.chunk), "--repeats", str(args.repeats)] + (["--compile_only"] if args.compile_only else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            raise SystemExit(f"{mode} child failed with exit code {proc.returncode}")
        r = results[mode] = json.loads(line[0][len("RESULT "):])
        msg = (f"{mode:>9}: temp {r['temp_bytes'] / GiB:6.2f} GiB (args {r['argument_bytes'] / GiB:.2f}, "
               f"outputs {r['output_bytes'] / GiB:.2f}), compile {r['compile_s']:.1f} s, "
               f"f32[tokens, vocab] buffers: {', '.join(r['tokens_by_vocab_f32']) or 'none'}")
        if "peak_rss" in r:
            msg += (f"\n{'':>11}peak RSS {r['peak_rss'] / GiB:.2f} GiB (before running {r['baseline_rss'] / GiB:.2f}), "
                    f"{r['seconds']:.1f} s = {r['tokens_per_s']:.0f} tokens/s")
        print(msg, flush=True)

    c, u = results["chunked"], results["unchunked"]
    print(f"temp bytes chunked / unchunked: {c['temp_bytes'] / u['temp_bytes']:.3f}")
    ok = not c["tokens_by_vocab_f32"]
    if "peak_rss" in c:
        ratio = c["peak_rss"] / u["peak_rss"]
        print(f"peak RSS chunked / unchunked: {ratio:.3f} (target <= 0.25); "
              f"speed chunked / unchunked: {c['tokens_per_s'] / u['tokens_per_s']:.2f}")
        ok &= ratio <= 0.25
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
