"""KV-cache sampling for the InternVL policy and the text reasoner.

Split by role: ``strategy`` (logits -> token and log-probs; pure), ``paged`` (the paged KV pool
and the one-token decoder step over it, plain or with the TPU kernel), ``loop`` (jitted prefill,
admission and ``while_loop`` decode), ``sampler`` (host API: prompts, continuous batching, the
block allocator, results, progress).
"""

# Host API
from sophia_jax.sampling.sampler import (
    DEFAULT_BUCKETS,
    GenerationResult,
    Prompt,
    Sample,
    Sampler,
    SamplerConfig,
    SamplingParams,
    bucket_for,
    compiled_programs,
)

# Strategy (pure functions, usable inside other jitted code)
from sophia_jax.sampling.strategy import Mode, RowParams, SampleOutput, sample, sampling_log_probs

__all__ = [
    "DEFAULT_BUCKETS",
    "GenerationResult",
    "Mode",
    "Prompt",
    "RowParams",
    "Sample",
    "SampleOutput",
    "Sampler",
    "SamplerConfig",
    "SamplingParams",
    "bucket_for",
    "compiled_programs",
    "sample",
    "sampling_log_probs",
]
