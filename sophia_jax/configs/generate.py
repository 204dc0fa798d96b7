"""Config for ``sophia-jax generate``: the SOPHIA behaviour model (captions -> reasoning -> store).

    sophia-jax generate --config generate \\
        --config.dataset.path=/data/questions.jsonl --config.output_dir=/runs/sophia-38b \\
        --config.policy.checkpoint=/ckpt/internvl3-38b --config.reasoner.checkpoint=/ckpt/qwq-32b

Defaults follow the paper (K = N = 8 samples, alpha = 0.75, Keep-1, 32768-token cap) and
shared/docs/sophia-method.md section 7 where the paper is silent (caption sampling at
temperature 1.0 / top-p 0.8; the reasoner at 0.6 / 0.95).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from sophia_jax import sharding
from sophia_jax.configs.loading import unknown_variant
from sophia_jax.configs.train_data import distributed_section


def _sampling(n: int, temperature: float, top_p: float, max_new_tokens: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "n": n,  # samples per prompt
        "temperature": temperature,  # 0 = greedy
        "top_p": top_p,  # 1 = off
        "top_k": 0,  # 0 = off
        "max_new_tokens": max_new_tokens,  # generation cap per sample
        "seed": 0,  # base seed; each shard derives its own, so reruns reproduce a shard
    })


def selection() -> ml_collections.ConfigDict:
    """The selection rule; ``sophia-jax select`` reads its defaults from here too."""
    return ml_collections.ConfigDict({
        "alpha": 0.75,  # keep a trajectory only if its caption's reward is strictly above this
        "keep": 1,  # Keep-N: shortest qualifying trajectories per question
    })


def mesh() -> ml_collections.ConfigDict:
    """``sharding.MeshConfig`` as config fields (its defaults: data 1, fsdp all devices, tensor 1)."""
    return ml_collections.ConfigDict(dataclasses.asdict(sharding.MeshConfig()))


def runlocal_sampler(sampler: ml_collections.ConfigDict) -> None:
    """A ``sampler`` section shrunk for a CPU smoke run (every command's ``runlocal``): few rows,
    short buckets and chunks, a float32 cache, a small KV pool."""
    sampler.batch_size = 8
    sampler.buckets = (128, 256, 512, 1024, 2048)
    sampler.decode_chunk = 16
    sampler.cache_dtype = "float32"
    sampler.kv_budget = 16384
    sampler.block_size = 16


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.output_dir = ""  # the trajectory store and reports go here (required)

    cfg.dataset = ml_collections.ConfigDict()
    cfg.dataset.path = ""  # JSONL or parquet of questions (required)
    cfg.dataset.image_root = ""  # base directory for relative image paths ('' = the dataset's directory)
    # Field names in the dataset; set choices/hint to '' when absent.
    cfg.dataset.fields = ml_collections.ConfigDict(
        {"id": "id", "image": "image", "question": "question", "answer": "answer", "choices": "choices", "hint": "hint"}
    )
    cfg.dataset.limit = 0  # use only the first N questions (0 = all)

    cfg.policy = ml_collections.ConfigDict()
    cfg.policy.checkpoint = ""  # our checkpoint or a Hugging Face directory of the InternVL policy (required)
    cfg.policy.name = ""  # recorded in every trajectory ('' = the checkpoint directory name)
    cfg.policy.sampling = _sampling(n=8, temperature=1.0, top_p=0.8, max_new_tokens=32768)  # K captions
    cfg.policy.max_tiles = 12  # InternVL dynamic tiling: at most this many tiles (+ thumbnail)

    cfg.reasoner = ml_collections.ConfigDict()
    cfg.reasoner.checkpoint = ""  # checkpoint or Hugging Face directory of the text reasoner (required)
    cfg.reasoner.name = ""  # recorded in every trajectory ('' = the checkpoint directory name)
    cfg.reasoner.sampling = _sampling(n=8, temperature=0.6, top_p=0.95, max_new_tokens=32768)  # N per caption
    cfg.reasoner.system_prompt = ""  # optional system turn for the reasoner's chat template

    # Replacement prompt files ('' = built-in): caption, simulate_reasoning, long_cot_system, default_system.
    cfg.prompts = ml_collections.ConfigDict(
        {"caption": "", "simulate_reasoning": "", "long_cot_system": "", "default_system": ""}
    )

    cfg.selection = selection()

    cfg.verifier = ml_collections.ConfigDict()
    cfg.verifier.workers = 2  # judge processes
    cfg.verifier.timeout = 10.0  # seconds per answer; a timeout scores 0 with its reason

    cfg.num_shards = 256  # questions are hashed by id into this many resumable units of work

    cfg.sampler = ml_collections.ConfigDict()
    cfg.sampler.batch_size = 64  # decode rows per batch
    cfg.sampler.tile_budget = 16  # image tiles per prefill batch (>= max_tiles + 1)
    cfg.sampler.cache_dtype = "bfloat16"  # KV cache dtype
    cfg.sampler.decode_chunk = 256  # decode steps between host checks
    cfg.sampler.buckets = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)  # prompt-length ladder
    cfg.sampler.progress = True  # per-batch progress bars
    cfg.sampler.kv_budget = 262144  # KV-cache tokens held at once over all rows (bounds KV memory)
    cfg.sampler.block_size = 64  # KV-cache tokens per block

    cfg.dtype = "bfloat16"  # model compute and weight dtype
    # xla: plain attention everywhere; fused: on TPU, JAX's Pallas ragged paged attention kernel in
    # decode (head dim a multiple of 128) and jax.nn.dot_product_attention in prefill
    cfg.attention = "xla"
    # Mesh over this host's devices; each host samples its own shards with its own model copy.
    cfg.mesh = mesh()  # data, fsdp, tensor sizes; -1 = all remaining devices

    cfg.distributed = distributed_section()  # several hosts: how jax.distributed starts

    # `sophia-jax aot --config <this config>`: the TPU chips of one host to compile the sampler's
    # prefill and decode programs for (each host samples with its own model copy; needs the tpu
    # extra, reads no weights), the architecture presets, and the prompt lengths the prefill
    # bucket and the decode block table are sized for: a caption prompt (policy.max_tiles + 1
    # tiles of 256 tokens and the question) and a reasoning prompt (question and caption).
    cfg.aot = ml_collections.ConfigDict({
        "topology": "v5p:2x2x1", "policy": "internvl3_8b", "reasoner": "qwq_32b",
        "prompt_tokens": {"policy": 4096, "reasoner": 2048},
    })

    if arg == "runlocal":  # a CPU smoke run: tiny generation caps, float32, small batches
        for role in (cfg.policy, cfg.reasoner):
            role.sampling.n = 2
            role.sampling.max_new_tokens = 16
        cfg.num_shards = 4
        runlocal_sampler(cfg.sampler)
        cfg.dtype = "float32"
    elif arg:
        raise unknown_variant("generate", arg, ("", "runlocal"))
    return cfg
