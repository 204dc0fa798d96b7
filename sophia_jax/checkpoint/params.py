"""Reading and writing an NNX model's parameters by dotted path ("vision.layers.0.attn.q")."""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import nnx


def _path(parts) -> str:
    return ".".join(str(p) for p in parts)


def flat_params(model: nnx.Module) -> dict[str, nnx.Param]:
    """{dotted path: Param variable} for every parameter of ``model``."""
    return {_path(path): var for path, var in nnx.iter_graph(model) if isinstance(var, nnx.Param)}


def assign_params(model: nnx.Module, values: Mapping[str, np.ndarray], source: str = "checkpoint") -> None:
    """Writes ``values`` into ``model`` in place, keeping each parameter's dtype and sharding.

    Every parameter must be given, with its exact shape; extra entries are an error.
    """
    params = flat_params(model)
    missing = sorted(set(params) - set(values))
    extra = sorted(set(values) - set(params))
    if missing or extra:
        raise KeyError(f"{source}: parameters missing {missing[:5]}, unexpected {extra[:5]}")
    for path, var in params.items():
        old = var.get_value()
        new = np.asarray(values[path])
        if tuple(new.shape) != tuple(old.shape):
            raise ValueError(f"{source}: {path} has shape {new.shape}, model expects {old.shape}")
        sharding = getattr(old, "sharding", None)
        new = new.astype(old.dtype)
        var.set_value(jax.device_put(new, sharding) if sharding is not None else jax.numpy.asarray(new))
