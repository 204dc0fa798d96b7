"""Config for ``sophia-jax warmup``: warm-up fine-tuning of the base policy on general VQA data.

The same trainer as ``sophia-jax train`` (paper section 5.1: the base InternVL is first tuned on
image-description VQA, RLAIF-V's accepted responses and WildVision's best ones), on VQA sources
instead of a trajectory store. Sources are given as a Python literal list:

    sophia-jax warmup --config warmup --config.model.checkpoint=/ckpt/InternVL3-38B \\
        --config.output_dir=/runs/warmup-38b \\
        --config.data.vqa_sources="[{'path': '/data/rlaif-v.parquet', 'weight': 1.0, 'fields': {'response': 'chosen'}},
                                    {'path': '/data/wildvision-best.jsonl', 'weight': 1.0, 'fields': {}}]"

The paper gives no warm-up hyperparameters; defaults follow sophia-method.md section 7 item 16
(one epoch, peak learning rate 1e-5, the main stage's optimizer and freezing).
"""

from __future__ import annotations

import ml_collections

from sophia_jax.configs import train


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ("", "runlocal"):
        raise ValueError(f"unknown warmup config variant {arg!r}; known: '', 'runlocal'")
    cfg = train.get_config(arg)
    cfg.data.store = ""  # no trajectory store in this stage
    if arg != "runlocal":
        cfg.optimizer.peak_learning_rate = 1e-5
    return cfg
