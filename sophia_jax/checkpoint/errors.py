"""The one error type for checkpoints that cannot be read, converted or written."""

from __future__ import annotations

from sophia_jax.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint problem; the message names the file and, where there is one, the tensor."""
