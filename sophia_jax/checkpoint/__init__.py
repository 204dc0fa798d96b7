"""Hugging Face <-> sophia_jax parameter mapping and checkpoint I/O."""

from sophia_jax.checkpoint.keymap import (
    Rule,
    canonical_hf_name,
    causal_lm_rules,
    internvl_rules,
    to_hf,
    to_ours,
)
from sophia_jax.checkpoint.params import assign_params, flat_params

__all__ = [
    "Rule",
    "assign_params",
    "canonical_hf_name",
    "causal_lm_rules",
    "flat_params",
    "internvl_rules",
    "to_hf",
    "to_ours",
]
