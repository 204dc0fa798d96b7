"""sophia_jax: SOPHIA semi-off-policy RL for InternVL vision-language models, in JAX."""

__version__ = "0.1.0"
