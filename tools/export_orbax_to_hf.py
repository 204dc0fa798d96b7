"""sophia_jax checkpoint (Orbax) -> transformers directory; see sophia_jax/checkpoint/export.py."""
from sophia_jax.checkpoint.export import main

if __name__ == "__main__":
    raise SystemExit(main())
