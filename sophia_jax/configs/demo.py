"""Config for ``sophia-jax demo``: SOPHIA learning on the generated visual-math world (CPU).

The demo measures held-out pass@1 of the shipped tiny policy, runs the behaviour model
(``generate``) on the training questions, trains the policy on the selected trajectories and
on the paper's Table 5 ablations of the selection, and measures pass@1 again for each.

Variants: ``demo`` (the README's main command) and ``demo:quick`` (the same stages on 16 questions,
2 trajectories per caption and 2 training steps: the flow, not a measurement; tests/test_cli.py runs it).
"""

from __future__ import annotations

import ml_collections

from sophia_jax.configs.loading import unknown_variant

SETTINGS = ("random", "no_caption_reward", "no_shortest", "sophia")  # the rows trained, in the paper's order


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ("", "quick"):
        raise unknown_variant("demo", arg, ("", "quick"))
    quick = arg == "quick"
    cfg = ml_collections.ConfigDict()
    cfg.dir = ""  # where the world, the store, the training runs and the results go ('' = a new temporary directory)
    cfg.questions = 16 if quick else 400  # training questions for generate (two with broken images are added)
    cfg.questions_per_image = 2  # questions asked about each training image
    cfg.heldout = 8 if quick else 300  # held-out questions, on images no stage trains on
    cfg.policy = ""  # policy checkpoint ('' = the shipped sophia_jax/demo_models/policy)
    cfg.reasoner = ""  # text reasoner checkpoint ('' = the shipped sophia_jax/demo_models/reasoner)
    cfg.seed = 0  # sampling, the ablations' random draws and training order
    # Which trained rows to run, from SETTINGS (the base row is always measured).
    cfg.settings = SETTINGS

    cfg.captions = 4  # K: captions per image
    # N: reasoning trajectories per caption. Two keep the strict alpha meaning what it means at four
    # (only a caption whose every trajectory is correct passes 0.75) and leave 8 per question to choose from.
    cfg.trajectories = 2 if quick else 4
    cfg.alpha = 0.75  # caption-reward threshold (strict), the paper's
    cfg.keep = 1  # Keep-N shortest per question, the paper's

    cfg.eval = ml_collections.ConfigDict()
    cfg.eval.samples = 2 if quick else 4  # samples per held-out question; pass@1 is their mean correctness
    cfg.eval.temperature = 1.0  # the paper's evaluation decoding (sophia-method.md section 5)
    cfg.eval.top_p = 0.8
    cfg.eval.max_new_tokens = 192  # the longest solutions are about 140 tokens

    cfg.train = ml_collections.ConfigDict()
    cfg.train.steps = 2 if quick else 60  # optimizer steps, the same for every setting
    cfg.train.rows = 4 if quick else 8  # packed rows per step
    cfg.train.seq_len = 512  # tokens per packed row (about six trajectories)
    cfg.train.learning_rate = 1e-3  # peak; cosine to 0.25x, as the train config
    cfg.train.trainable = "language"  # the paper's: the vision tower and projector stay frozen
    return cfg
