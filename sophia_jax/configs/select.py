"""Config for ``sophia-jax select``: re-select the trajectories of a finished store.

    sophia-jax select --config.store=/runs/sophia-38b --config.selection.alpha=0.5 --config.selection.keep=2

The selection defaults are generate's (``generate.selection()``), so a re-selection without
overrides reproduces the selection the job itself made.
"""

from __future__ import annotations

import ml_collections

from sophia_jax.configs.generate import selection
from sophia_jax.configs.loading import unknown_variant


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.store = ""  # output_dir of sophia-jax generate (required)
    cfg.selection = selection()
    cfg.name = ""  # selection name ('' = alpha<A>-keep<N>)
    cfg.overwrite = False  # replace a selection of the same name
    if arg:
        raise unknown_variant("select", arg, ("",))
    return cfg
