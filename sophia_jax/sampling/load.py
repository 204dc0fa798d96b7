"""A checkpoint as a ready sampler: the model on a mesh, its tokenizer, a :class:`Sampler`.

Every command that samples (``generate``'s policy and reasoner, ``eval``'s model and judge)
loads its models through :func:`load_sampler`, so they read the same config section
(``sampler.*``) the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from sophia_jax.data import chat_templates
from sophia_jax.sampling.sampler import Sampler, SamplerConfig

__all__ = ["LoadedModel", "load_sampler", "sampler_config"]


@dataclasses.dataclass
class LoadedModel:
    """A model with its tokenizer and sampler; ``name`` is what records and reports call it."""

    name: str
    model: Any
    tokenizer: Any
    sampler: Sampler

    @property
    def multimodal(self) -> bool:
        return self.sampler.multimodal

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """InternVL's ``<|im_end|>`` (+ eos) for an InternVL, the tokenizer's end-of-turn ids for a text model."""
        if self.multimodal:
            return chat_templates.internvl_stop_token_ids(self.tokenizer)
        return chat_templates.stop_token_ids(self.tokenizer)


def sampler_config(section: Mapping, pad_id: int) -> SamplerConfig:
    """``SamplerConfig`` from a command's ``sampler`` config section."""
    return SamplerConfig(batch_size=section["batch_size"], buckets=tuple(section["buckets"]),
                         cache_dtype=section["cache_dtype"], tile_budget=section["tile_budget"],
                         decode_chunk=section["decode_chunk"], progress=section["progress"],
                         kv_budget=section["kv_budget"], block_size=section["block_size"], pad_id=pad_id)


def load_sampler(checkpoint: str, section: Mapping, *, dtype: str, mesh, name: str = "",
                 attention: str = "xla") -> LoadedModel:
    """Loads ``checkpoint`` (ours or a Hugging Face directory) onto ``mesh`` and builds its sampler.

    ``name`` defaults to the checkpoint directory's name; ``attention`` is the models' runtime switch
    (``fused``: the Pallas paged-attention kernel in decode on TPU, the plain path elsewhere).
    """
    from sophia_jax import checkpoint as checkpoints
    from sophia_jax.models.config import RuntimeConfig

    tokenizer = checkpoints.load_tokenizer(checkpoint)  # before the weights: an unusable one fails fast
    model = checkpoints.load(checkpoint, mesh=mesh, runtime=RuntimeConfig(dtype=dtype, param_dtype=dtype,
                                                                              attention=attention))
    sampler = Sampler(model, sampler_config(section, int(tokenizer.pad_token_id or 0)), mesh=mesh,
                      tokenizer=tokenizer)
    return LoadedModel(name or os.path.basename(os.path.normpath(checkpoint)), model, tokenizer, sampler)
