"""Checkpoints: Hugging Face <-> sophia_jax parameter mapping, conversion, Orbax save/restore.

    model = checkpoint.load("/ckpt/InternVL3-8B", mesh=mesh)               # a HF directory, directly
    checkpoint.convert_hf("/ckpt/InternVL3-8B", "/ckpt/internvl3-8b")       # once, streamed to Orbax
    model = checkpoint.load("/ckpt/internvl3-8b", mesh=mesh)                # restore, sharded
    tokenizer = checkpoint.load_tokenizer("/ckpt/internvl3-8b")              # trust_remote_code=False
    checkpoint.save(model, "/ckpt/run/step-100", assets="/ckpt/internvl3-8b")
    checkpoint.export_hf("/ckpt/run/step-100", "/ckpt/run/step-100-hf")     # back to transformers
"""

# Converting and exporting
from sophia_jax.checkpoint.convert import convert_hf
from sophia_jax.checkpoint.errors import CheckpointError
from sophia_jax.checkpoint.export import export_hf

# Reading Hugging Face directories
from sophia_jax.checkpoint.hf_source import open_hf

# The rule table between our parameter paths and transformers names
from sophia_jax.checkpoint.keymap import (
    Rule,
    canonical_hf_name,
    causal_lm_rules,
    internvl_rules,
    to_hf,
    to_ours,
)
from sophia_jax.checkpoint.params import assign_params, flat_params

# Our checkpoint directories
from sophia_jax.checkpoint.store import is_checkpoint, load, save

# Tokenizers of either kind of directory, never running checkpoint code
from sophia_jax.checkpoint.tokenizer_assets import load_tokenizer

__all__ = [
    "CheckpointError",
    "Rule",
    "assign_params",
    "canonical_hf_name",
    "causal_lm_rules",
    "convert_hf",
    "export_hf",
    "flat_params",
    "internvl_rules",
    "is_checkpoint",
    "load",
    "load_tokenizer",
    "open_hf",
    "save",
    "to_hf",
    "to_ours",
]
