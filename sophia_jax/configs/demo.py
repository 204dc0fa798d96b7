"""Config for ``sophia-jax demo``: the behaviour model on a toy world (tiny random models, CPU).

The demo runs ``generate:runlocal`` with the overrides below, then a re-selection.
"""

from __future__ import annotations

import ml_collections

from sophia_jax.configs.loading import unknown_variant


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.dir = ""  # where the toy world and the store go ('' = a new temporary directory)
    cfg.questions = 6  # toy questions (two more, with broken images, are always added)
    cfg.reasoner_n = 4  # reasoning trajectories per caption
    # Random weights give low caption rewards; these thresholds let the demo show a selection.
    cfg.alpha = 0.2  # selection threshold of the generate run
    cfg.reselect = ml_collections.ConfigDict({
        "alpha": 0.0,  # threshold of the re-selection
        "keep": 2,  # Keep-N of the re-selection
    })
    if arg:
        raise unknown_variant("demo", arg, ("",))
    return cfg
