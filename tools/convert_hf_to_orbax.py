"""Hugging Face checkpoint -> sophia_jax checkpoint (Orbax); see sophia_jax/checkpoint/convert.py."""
from sophia_jax.checkpoint.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
