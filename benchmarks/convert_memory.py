"""Peak host memory of checkpoint conversion on a synthetic checkpoint of a few GB.

Writes a text-only Qwen2-style checkpoint of random bf16 tensors straight into sharded
safetensors files (no torch), then runs ``sophia-jax convert`` (and, unless ``--no_export``,
``sophia-jax export`` back to transformers) each in a fresh child process, and prints the
checkpoint size, the child's peak RSS, their ratio, the budget (1.3 x size + 1 GiB) and seconds.
Each phase runs in its own process and reports its peak RSS (VmHWM); a child that only imports
the modules gives the process baseline.

    python benchmarks/convert_memory.py                     # ~2.5 GB, 8 layers
    python benchmarks/convert_memory.py --layers 24 --keep  # ~5 GB, keep the files
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

from sophia_jax.checkpoint import testing

GiB = 1 << 30


def qwen2_config(layers: int) -> dict:
    """Qwen2.5-3B-like widths with the InternVL vocabulary; depth sets the size."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151674, "hidden_size": 2048,
        "intermediate_size": 11008, "num_hidden_layers": layers, "num_attention_heads": 16,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 32768,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }


def peak_rss() -> int:
    """This process image's peak resident set (VmHWM). Unlike getrusage's maxrss it starts
    afresh at exec, so a child does not inherit the high-water mark of the process that forked it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: best effort


def child(phase: str, args: list[str]) -> None:
    """Runs one phase in this (fresh) process and prints its peak RSS for the parent."""
    if phase == "write":
        size = testing.write_random_causal_lm(args[0], qwen2_config(int(args[1])), int(float(args[2]) * GiB))
        print(f"SIZE {size}")
    elif phase == "convert":
        from sophia_jax.checkpoint import convert

        assert convert.main(args) == 0
    elif phase == "export":
        from sophia_jax.checkpoint import export

        assert export.main(args) == 0
    print(f"PEAK_RSS {peak_rss()}", flush=True)


def run_child(phase: str, *args: str) -> tuple[dict, float]:
    """Runs a phase in a child process; returns its reported numbers and wall seconds."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    start = time.monotonic()
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", phase, *args], env=env,
                          stdout=subprocess.PIPE, text=True)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed with exit code {done.returncode}")
    numbers = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("SIZE", "PEAK_RSS"):
            numbers[key] = int(value)
    return numbers, seconds


def report(what: str, size: int, rss: float, seconds: float, baseline: float) -> None:
    budget = 1.3 * size + GiB
    print(f"{what:8s} checkpoint {size / GiB:6.2f} GiB | peak RSS {rss / GiB:5.2f} GiB "
          f"(ratio {rss / size:4.2f}, {(rss - baseline) / GiB:4.2f} GiB above the import baseline) | "
          f"budget {budget / GiB:5.2f} GiB {'OK' if rss <= budget else 'EXCEEDED'} | {seconds:6.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/sophia_convert_bench")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (8 gives ~2.3 GiB)")
    parser.add_argument("--shard_gb", type=float, default=1.0, help="safetensors shard size, GiB")
    parser.add_argument("--no_export", action="store_true", help="skip the export back to transformers")
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = parser.parse_args(argv)

    hf_dir, ckpt, out = (os.path.join(args.workdir, n) for n in ("hf", "orbax", "export"))
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    written, seconds = run_child("write", hf_dir, str(args.layers), str(args.shard_gb))
    size = written["SIZE"]
    shards = sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))
    print(f"synthetic checkpoint: {size / GiB:.2f} GiB ({size / 1e9:.2f} GB) of bf16 in {len(shards)} "
          f"safetensors files, written in {seconds:.0f} s", flush=True)
    baseline = run_child("baseline")[0]["PEAK_RSS"]
    print(f"process baseline (imports only): peak RSS {baseline / GiB:.2f} GiB", flush=True)
    numbers, seconds = run_child("convert", f"--config.hf_dir={hf_dir}", f"--config.out={ckpt}", "--config.progress=False")
    report("convert", size, numbers["PEAK_RSS"], seconds, baseline)
    if not args.no_export:
        numbers, seconds = run_child("export", f"--config.checkpoint={ckpt}", f"--config.out={out}",
                                     "--config.progress=False", f"--config.max_shard_gb={args.shard_gb}")
        report("export", size, numbers["PEAK_RSS"], seconds, baseline)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
