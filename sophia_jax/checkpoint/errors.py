"""The one error type for checkpoints that cannot be read, converted or written, and the CLI wrapper."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint problem; the message names the file and, where there is one, the tensor."""


def run_command(action) -> int:
    """Runs ``action() -> path`` for a command-line tool: on the host CPU, errors as exit code 1.

    Conversion and export need no accelerator, so JAX is kept off a TPU that a training job may
    hold (unless JAX_PLATFORMS says otherwise).
    """
    import os
    import sys

    import jax

    if "JAX_PLATFORMS" not in os.environ:
        try:
            jax.config.update("jax_platforms", "cpu")
        except Exception:  # backends already initialised by the caller: use what is there
            pass
    try:
        path = action()
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
