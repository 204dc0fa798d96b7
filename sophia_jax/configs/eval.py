"""Config for ``sophia-jax eval``: pass@1 on the paper's benchmarks from their published files.

    sophia-jax eval --config eval --config.model=/ckpt/sophia-38b --config.output_dir=/runs/eval-38b \\
        --config.benchmarks=mmmu=/data/MMMU,mathvista=/data/MathVista,mv_math=/data/MV-MATH/data/MV-MATH.json \\
        --config.image_roots=mv_math=/data/MV-MATH/images
    sophia-jax eval --config eval:runlocal --config.model=D/world/policy \\
        --config.benchmarks=questions=D/data/questions.jsonl --config.output_dir=O        # CPU smoke run

Defaults are the paper's evaluation (sophia-method.md section 5): zero-shot, temperature 1.0,
top-p 0.8, 16,384 new tokens, the long-CoT system prompt, the benchmark's hint before the
question, one sample per item. Model-based extraction and judging (the paper's Qwen2.5-72B
with Fig. A5 / A6) is off unless judge.checkpoint is set; rule-based judging is the default.
"""

from __future__ import annotations

import ml_collections

from sophia_jax.configs.generate import mesh, runlocal_sampler
from sophia_jax.configs.loading import unknown_variant


def _items_and_sampling(cfg: ml_collections.ConfigDict) -> None:
    """What is evaluated and how it is sampled and judged: shared by ``eval`` and training's held-out eval."""
    # Comma-separated name=path: a data file, a glob or the downloaded folder. Names: mmmu, mmmu_pro_vision,
    # mathvista, mathverse, dynamath, mathvision, mv_math, olympiadbench, questions (the generate format).
    cfg.benchmarks = ""
    cfg.image_roots = ""  # name=folder-or-zip for relative image paths ('' = each data file's folder)
    cfg.limit = 0  # first N items of each benchmark (0 = all)
    cfg.samples = 1  # k samples per item: pass@1 is averaged over them, pass@k reported when k > 1
    cfg.chunk = 256  # items per sampler call (a kill loses at most one chunk; a rerun resumes)
    cfg.sampling = ml_collections.ConfigDict({
        "temperature": 1.0,  # the paper's evaluation: no greedy decoding (it repeats itself)
        "top_p": 0.8,
        "top_k": 0,  # 0 = off
        "max_new_tokens": 16384,
        "seed": 0,  # with an item's id, decides its samples (a rerun and any host split give the same)
    })
    cfg.system_prompt = "long_cot"  # long_cot (Fig. A4 style) | default (InternVL's) | none | a file's path
    cfg.images = ml_collections.ConfigDict({
        "max_tiles": 12,  # InternVL dynamic tiling per image (+ thumbnail)
        "total_tiles": 64,  # tiles a question's images share (0 = sampler.tile_budget); <= sampler.tile_budget
    })
    cfg.verifier = ml_collections.ConfigDict()
    cfg.verifier.workers = 2  # judge processes
    cfg.verifier.timeout = 10.0  # seconds per answer; a timeout scores 0 with its reason
    cfg.sampler = ml_collections.ConfigDict()
    cfg.sampler.batch_size = 64  # decode rows
    cfg.sampler.tile_budget = 64  # image tiles per prefill call (>= images.total_tiles)
    cfg.sampler.cache_dtype = "bfloat16"  # KV cache dtype
    cfg.sampler.decode_chunk = 256  # decode steps between host checks
    cfg.sampler.buckets = (512, 1024, 2048, 4096, 8192, 16384, 32768)  # prompt-length ladder
    cfg.sampler.progress = False  # a bar per sampler call (the eval bar counts items)
    cfg.sampler.kv_budget = 1048576  # KV-cache tokens held at once over all rows
    cfg.sampler.block_size = 64  # KV-cache tokens per block


def _runlocal(cfg: ml_collections.ConfigDict) -> None:
    """A CPU smoke run: short generations, small batches and caches."""
    cfg.sampling.max_new_tokens = 16
    cfg.chunk = 4
    cfg.images.total_tiles = 8
    runlocal_sampler(cfg.sampler)
    cfg.sampler.tile_budget = 8
    cfg.verifier.workers = 1


def held_out(runlocal: bool = False) -> ml_collections.ConfigDict:
    """The ``eval`` section of the train config: held-out evaluation every N steps, logged to TensorBoard."""
    cfg = ml_collections.ConfigDict()
    cfg.every = 0  # evaluate the held-out items every N optimizer steps (0 = never) and at the end
    _items_and_sampling(cfg)
    if runlocal:
        _runlocal(cfg)
    return cfg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.model = ""  # our checkpoint or a Hugging Face directory of the model to evaluate (required)
    cfg.model_name = ""  # its name in the tables ('' = the checkpoint directory name)
    cfg.output_dir = ""  # per-item JSONL, results.json / .md, report.json (required)
    cfg.progress = True  # a progress bar over this host's items
    _items_and_sampling(cfg)

    # Model-based answer extraction (Fig. A5) and judging (Fig. A6), with any checkpoint our sampler runs.
    cfg.judge = ml_collections.ConfigDict({
        "checkpoint": "",  # '' = rule-based only (the default)
        "extract": True,  # read every answer with the judge model (else rule-based reading)
        "benchmarks": "mmmu,mathverse,mv_math",  # judged by the model (the paper's); the rest by rule
        "max_new_tokens": 64,  # per extraction / judgement, greedy
        "response_chars": 4000,  # the tail of a response the extraction prompt shows
    })

    cfg.dtype = "bfloat16"  # model compute and weight dtype
    # xla: plain attention; fused: on TPU, the Pallas ragged paged attention kernel in decode (as generate's)
    cfg.attention = "xla"
    cfg.mesh = mesh()  # over this host's devices; each host evaluates its share of the items
    cfg.distributed = ml_collections.ConfigDict({
        "mode": "auto",  # auto | tpu | off (see sophia_jax/distributed.py)
        "coordinator_address": "",  # host:port of process 0 ('' = from the environment)
        "num_processes": -1,  # -1 = from the environment
        "process_id": -1,  # -1 = from the environment
    })

    if arg == "runlocal":
        _runlocal(cfg)
        cfg.dtype = "float32"
    elif arg:
        raise unknown_variant("eval", arg, ("", "runlocal"))
    return cfg
