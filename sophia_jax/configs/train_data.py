"""Sections shared by stage configs, written once: ``data`` of the training configs (``train``
and ``warmup``) and ``distributed`` of every stage.

``configs/train.py`` and ``configs/warmup.py`` set ``cfg.data = get_data_config(runlocal)`` and
override what differs (the warm-up stage clears ``store`` and lists VQA sources instead). Every
field is read by :class:`sophia_jax.data.training_pipeline.TrainingPipeline`.
"""

from __future__ import annotations

import ml_collections


def extra_source(path: str = "", weight: float = 1.0, **fields: str) -> ml_collections.ConfigDict:
    """One extra source: a JSONL / parquet file, its mixture weight, and its field names."""
    return ml_collections.ConfigDict({"path": path, "weight": weight, "fields": dict(fields)})


def distributed_section() -> ml_collections.ConfigDict:
    """How a stage starts jax.distributed on several hosts (see sophia_jax/distributed.py). 'auto'
    uses coordinator_address here if set, else SOPHIA_COORDINATOR_ADDRESS/_NUM_PROCESSES/_PROCESS_ID,
    else the TPU VM's own slice description, else runs as one process."""
    return ml_collections.ConfigDict({
        "mode": "auto",  # auto | tpu | off
        "coordinator_address": "",  # host:port of process 0 ('' = from the environment)
        "num_processes": -1,  # -1 = from the environment
        "process_id": -1,  # -1 = from the environment
    })


def get_data_config(runlocal: bool = False) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.store = ""  # trajectory store folder (what `sophia-jax generate` wrote); '' = no store source
    # Selection to train on: '' = the records the generate run itself selected (their `selected`
    # flag); a name = a stored selection written by `sophia-jax select --name NAME`.
    d.selection = ""
    d.store_weight = 1.0  # mixture weight of the store source (source index 0)
    # Optional question dataset the store was generated from; needed only to resolve images that
    # were embedded in it (records hold "inline:<sha256>" for those). '' = images are file paths.
    d.store_questions = ""
    d.store_questions_image_field = "image"  # the image field of that dataset
    # Text-only reasoning trajectories: JSONL with question / response / optional system.
    # Each entry: extra_source(path, weight, question=..., response=..., system=..., id=...).
    d.text_sources = []
    # General VQA: JSONL or parquet with image / question / response (field names overridable).
    # RLAIF-V: extra_source(path, w, response="chosen"); see training_examples.VqaSource.
    d.vqa_sources = []

    d.seq_len = 1024 if runlocal else 32768  # packed row length in tokens
    d.tiles_per_row = 8 if runlocal else 26  # R: image tiles one packed row may carry
    d.max_tiles = 12  # InternVL dynamic tiling cap; must equal generate's policy.max_tiles
    d.pack_window = 8 if runlocal else 64  # open rows first-fit packing may place an example in

    # System prompt. rule: 'paper' = long-CoT prompt when the response contains <think>, the
    # default otherwise; 'default' / 'long_cot' = always that one. A text source's own `system`
    # field wins. Files replace the built-in texts ('' = built-in).
    d.system_prompt = ml_collections.ConfigDict({"rule": "paper", "long_cot_file": "", "default_file": ""})
    # Per-token behaviour log-probs are only meaningful when the reasoner used the policy's
    # tokenizer; set True only then (the sequence-level log-prob is always filled for the store).
    d.reasoner_tokenizer_is_policy = False

    d.seed = 0  # shuffling and mixing seed; the same seed gives the same batches on every host
    d.num_epochs = 1  # passes over the first present source; the others follow their weights
    d.shuffle = True  # False keeps source order (for debugging)
    # Grain threads that build batches ahead of the train step. One by default: the policy's
    # tokenizer (a Rust tokenizers object) is shared by them.
    d.prefetch_threads = 1
    d.prefetch_batches = 2  # batches built ahead
    return d
