"""Config for ``sophia-jax train``: the SOPHIA policy update (Eq. 7) on a trajectory store.

    sophia-jax train --config train --config.model.checkpoint=/ckpt/internvl3-38b-warm \\
        --config.data.store=/runs/sophia-38b --config.output_dir=/runs/sophia-38b-train
    sophia-jax train --config train:runlocal --config.data.store=D/store --config.output_dir=O   # CPU

Defaults are the paper's (sophia-method.md section 4: AdamW, weight decay 0.05, peak learning
rate 2e-5, cosine to 0.25x, global batch 512, ViT and projector frozen, no importance ratio)
and section 7 where it is silent (token-mean loss, ~3% linear warm-up, 32768-token packing).
"""

from __future__ import annotations

import ml_collections

from sophia_jax.configs.eval import held_out
from sophia_jax.configs.train_data import distributed_section, get_data_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ("", "runlocal"):
        raise ValueError(f"unknown train config variant {arg!r}; known: '', 'runlocal'")
    runlocal = arg == "runlocal"
    cfg = ml_collections.ConfigDict()
    cfg.output_dir = ""  # checkpoints/, final/, metrics.jsonl, tensorboard/ go here (required)

    cfg.model = ml_collections.ConfigDict()
    # The policy: our checkpoint or a Hugging Face InternVL directory ('' = the one that wrote the
    # store's captions, as generate recorded it).
    cfg.model.checkpoint = ""
    cfg.model.dtype = "float32" if runlocal else "bfloat16"  # compute dtype
    cfg.model.param_dtype = "float32"  # master weights and optimizer state
    # xla | fused | splash (JAX's Pallas TPU kernel: never materialises [T, T] scores, so 32K-token
    # rows fit; TPU only, the vision encoder keeps xla)
    cfg.model.attention = "xla" if runlocal else "splash"
    cfg.model.remat = "none" if runlocal else "full"  # none | full | dots: decoder-layer rematerialisation
    # Decoder layers stacked and run by lax.scan: one compiled layer, so 64-layer models compile in
    # minutes; checkpoints stay per-layer. Resuming needs the same setting as the run that saved.
    cfg.model.scan_layers = not runlocal

    cfg.data = get_data_config(runlocal)
    if runlocal:  # a CPU smoke run repeats its handful of examples, to have steps to checkpoint and resume
        cfg.data.num_epochs = 16

    cfg.train = ml_collections.ConfigDict()
    cfg.train.trainable = "language"  # language | language+projector | all (the rest is frozen, no optimizer state)
    cfg.train.global_rows = 2 if runlocal else 512  # packed rows per optimizer step, all hosts together
    cfg.train.micro_rows = 1 if runlocal else 16  # rows per forward/backward; global_rows / micro_rows = accumulation
    cfg.train.steps = 8 if runlocal else 0  # optimizer steps (0 = as many as data.num_epochs gives)

    cfg.loss = ml_collections.ConfigDict()
    cfg.loss.normalization = "token_mean"  # token_mean (over the global batch) | sequence_mean | sequence_sum
    cfg.loss.importance_sampling = "off"  # off (the paper) | sequence | token: truncated importance weights
    cfg.loss.is_clip = 2.0  # truncation cap of the importance weights
    cfg.loss.chunk_tokens = 256 if runlocal else 2048  # tokens per chunk of the vocabulary-chunked loss

    cfg.optimizer = ml_collections.ConfigDict()
    cfg.optimizer.peak_learning_rate = 1e-3 if runlocal else 2e-5
    cfg.optimizer.end_learning_rate_ratio = 0.25  # cosine decays to this fraction of the peak
    cfg.optimizer.warmup_ratio = 0.03  # linear warm-up over this fraction of the steps
    cfg.optimizer.weight_decay = 0.05  # AdamW decoupled weight decay (matrices only)
    cfg.optimizer.b1 = 0.9
    cfg.optimizer.b2 = 0.999
    cfg.optimizer.eps = 1e-8
    cfg.optimizer.max_grad_norm = 1.0  # global-norm clipping (<= 0: off)

    cfg.checkpoint = ml_collections.ConfigDict()
    cfg.checkpoint.every = 2 if runlocal else 100  # steps between checkpoints (also saved at the end and on SIGTERM)
    cfg.checkpoint.keep = 3  # most recent checkpoints kept
    cfg.checkpoint.asynchronous = True  # write checkpoints while training goes on

    # Held-out evaluation every eval.every steps with the eval core (eval.benchmarks as in sophia-jax eval),
    # pass@1 per benchmark to TensorBoard; off by default.
    cfg.eval = held_out(runlocal)

    cfg.log = ml_collections.ConfigDict()
    cfg.log.tensorboard = True  # event files in output_dir/tensorboard
    cfg.log.progress = True  # console progress bar

    # Mesh over all devices of all hosts: FSDP by default; tensor > 1 shards heads, MLP and vocab.
    cfg.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    cfg.distributed = distributed_section()  # several hosts: how jax.distributed starts

    # `sophia-jax aot --config <this config>`: the TPU slice to compile this stage's train step for,
    # from any host (needs the tpu extra; no weights are read), and the architecture preset. cost=False
    # compiles only the step itself (memory and fit, in a third of the time; no FLOPs, time or MFU).
    cfg.aot = ml_collections.ConfigDict({"topology": "v5p:2x4x4", "model": "internvl3_8b", "cost": True})
    return cfg
