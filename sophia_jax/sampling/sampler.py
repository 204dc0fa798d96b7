"""Host-side sampling API: prompts in, samples with log-probs out, over any number of prompts.

``Sampler(model, SamplerConfig(...))`` wraps a ``CausalLM`` (the text reasoner) or an
``InternVL`` (the policy). ``generate_iter(prompts, SamplingParams(...))`` yields one
``GenerationResult`` per prompt as soon as all its samples are finished; ``generate`` collects
them in prompt order.

Static shapes: prompts are left-padded to the smallest bucket of ``SamplerConfig.buckets`` that
holds them, batches are padded to a fixed number of prompts (and image tiles to a fixed budget),
and the cache holds ``bucket + max_new_tokens`` slots. So for fixed sampling settings the
compiled programs are one prefill and one decode per bucket used (plus one more pair per bucket
if a multimodal sampler also sees batches without any image). Each new program is logged;
``compiled_programs()`` counts what XLA compiled, shared by all samplers of the same model graph.

Work plan: prompts are sorted by length (longest first, so memory errors surface early) and cut
into batches of ``batch_size // n`` prompts, each prompt owning ``n`` decode rows that share its
prefix. A prompt with more samples than ``batch_size`` is split over several batches (each
re-prefills it). Decoding runs in chunks of ``decode_chunk`` steps; between chunks the host
yields prompts whose samples are all done, and a batch ends as soon as all its rows are done.

Parameters are whatever ``nnx.split(model)`` gives; place them on the mesh beforehand
(``sharding.create_sharded`` / ``shard_module``) and swap them with ``update_params`` without
recompiling.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from sophia_jax import sharding
from sophia_jax.sampling import loop, strategy

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
MAX_STOP_TOKENS = 8  # stop-token slots per row (static shape)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. Values (not the on/off of top-k/top-p) change without recompiling."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    n: int = 1  # samples per prompt, sharing the prompt's vision forward and prefill
    stop_token_ids: tuple[int, ...] = ()  # eos, end-of-turn; empty = always max_new_tokens
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt: token ids (image tokens already expanded) and, for InternVL, its tiles."""

    tokens: Sequence[int]
    pixel_values: np.ndarray | None = None  # float32[tiles, C, H, W]
    stop_token_ids: tuple[int, ...] = ()  # added to SamplingParams.stop_token_ids

    @property
    def num_tiles(self) -> int:
        return 0 if self.pixel_values is None else int(self.pixel_values.shape[0])


@dataclasses.dataclass
class Sample:
    """One generated continuation.

    Attributes:
      tokens: int32[n] generated ids; a stop token, when one ended the sample, is included.
      logprobs: float32[n] log-prob of each token under the distribution it was sampled from
        (after temperature, renormalised over the top-k/top-p support; 0 when greedy).
      raw_logprobs: float32[n] the model's log-prob at temperature 1 over the whole vocabulary,
        what a teacher-forced forward pass gives (use it for importance ratios of the model).
      finish_reason: "stop" (a stop token) or "length" (max_new_tokens).
      text: the decoded tokens without the stop token, when the sampler has a tokenizer.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    raw_logprobs: np.ndarray
    finish_reason: str
    text: str | None = None


@dataclasses.dataclass
class GenerationResult:
    """All samples of one prompt; ``index`` is the prompt's position in the input."""

    index: int
    prompt: Prompt
    samples: list[Sample]


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How the sampler batches and caches (independent of the sampling settings)."""

    batch_size: int = 8  # decode rows per batch; prompts per prefill = batch_size // n
    buckets: tuple[int, ...] = DEFAULT_BUCKETS  # prompt-length ladder (slots), ascending
    cache_dtype: str = "bfloat16"  # KV cache dtype; float32 for exact parity tests
    tile_budget: int = 16  # image tiles per prefill batch, padded; bounds vision compute
    decode_chunk: int = 256  # decode steps per jitted call; the host checks progress between
    pad_id: int = 0  # fills left padding and the tokens after a row stops
    progress: bool = True  # tqdm bar: prompts done/total, tokens/s, ETA


@dataclasses.dataclass(frozen=True)
class _Item:
    """Samples [offset, offset + count) of prompt ``index``."""

    index: int
    offset: int
    count: int


# Module-level jits: every Sampler over the same model graph shares the compiled programs (a new
# Sampler per RL iteration recompiles nothing). The weights are arguments, the graph is static.
_prefill = jax.jit(loop.prefill, static_argnames=("graphdef", "n", "max_new", "mode", "cache_dtype", "pad_id"))
_decode = jax.jit(loop.decode, static_argnames=("graphdef", "mode", "pad_id"), donate_argnames=("state",))


def compiled_programs() -> dict[str, int]:
    """How many prefill and decode programs have been compiled in this process (all samplers)."""
    return {"prefill": _prefill._cache_size(), "decode": _decode._cache_size()}


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length."""
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"prompt of {length} tokens is longer than the largest bucket {max(buckets)}; buckets: {buckets}")


def _mode(params: SamplingParams, vocab: int) -> strategy.Mode:
    if params.temperature <= 0:
        return strategy.Mode(greedy=True)
    k_cap = 0
    if 0 < params.top_k < vocab:
        k_cap = min(1 << (params.top_k - 1).bit_length(), vocab)  # a power of two: few programs
    return strategy.Mode(k_cap=k_cap, top_p=params.top_p < 1.0)


class Sampler:
    """Samples from a CausalLM or an InternVL with a static KV cache; see the module docstring."""

    def __init__(self, model: nnx.Module, config: SamplerConfig = SamplerConfig(), *, mesh: Mesh | None = None,
                 tokenizer=None):
        if list(config.buckets) != sorted(config.buckets) or not config.buckets:
            raise ValueError(f"buckets must be a non-empty ascending ladder, got {config.buckets}")
        self.config = config
        self.mesh = mesh
        self.tokenizer = tokenizer
        self.graphdef, self.params = nnx.split(model)
        self.text_config = loop.text_config(model)
        self.multimodal = hasattr(model, "image_features")
        if self.multimodal:
            self.image_token_id = model.config.image_token_id
            self.tokens_per_tile = model.config.tokens_per_tile
        self.programs: set[tuple] = set()  # prefill/decode signatures this sampler has run
        self.buckets_used: set[int] = set()

    # -- weights and bookkeeping ---------------------------------------------------------------

    def update_params(self, params: nnx.State | nnx.Module) -> None:
        """Swaps in new weights of the same structure, shapes and dtypes (no recompilation)."""
        if isinstance(params, nnx.Module):
            _, params = nnx.split(params)
        old, old_tree = jax.tree.flatten(self.params)
        new, new_tree = jax.tree.flatten(params)
        if old_tree != new_tree or any((a.shape, a.dtype) != (b.shape, b.dtype) for a, b in zip(old, new)):
            raise ValueError("new parameters differ in structure, shape or dtype from the sampler's model")
        self.params = params

    # -- public API ----------------------------------------------------------------------------

    def generate(self, prompts: Iterable[Prompt | Sequence[int]], params: SamplingParams) -> list[GenerationResult]:
        """All results, in prompt order."""
        results = list(self.generate_iter(prompts, params))
        return sorted(results, key=lambda r: r.index)

    def generate_iter(
        self, prompts: Iterable[Prompt | Sequence[int]], params: SamplingParams
    ) -> Iterator[GenerationResult]:
        """Yields each prompt's result as soon as all its ``params.n`` samples are finished."""
        prompts = [p if isinstance(p, Prompt) else Prompt(tokens=list(p)) for p in prompts]
        for i, p in enumerate(prompts):
            self._validate(i, p, params)
        per_prompt = min(params.n, self.config.batch_size)
        prompts_per_batch = max(1, self.config.batch_size // per_prompt)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].tokens))
        items = [_Item(i, off, min(per_prompt, params.n - off)) for i in order for off in range(0, params.n, per_prompt)]
        batches = self._plan(items, prompts, prompts_per_batch)

        pending = {i: [None] * params.n for i in range(len(prompts))}
        left = {i: math.ceil(params.n / per_prompt) for i in range(len(prompts))}
        bar = _progress(len(prompts), self.config.progress)
        start, generated = time.perf_counter(), 0
        try:
            for batch in batches:
                for item, samples, new_tokens in self._run_batch(batch, prompts, params, per_prompt, prompts_per_batch):
                    generated += new_tokens
                    if item is None:  # progress tick only
                        bar.set_postfix(tok_s=f"{generated / max(time.perf_counter() - start, 1e-9):.1f}")
                        continue
                    pending[item.index][item.offset : item.offset + item.count] = samples
                    left[item.index] -= 1
                    if left[item.index] == 0:
                        bar.update(1)
                        bar.set_postfix(tok_s=f"{generated / max(time.perf_counter() - start, 1e-9):.1f}")
                        yield GenerationResult(item.index, prompts[item.index], pending.pop(item.index))
        finally:
            bar.close()

    # -- internals -----------------------------------------------------------------------------

    def _validate(self, index: int, prompt: Prompt, params: SamplingParams) -> None:
        tokens = np.asarray(prompt.tokens)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(f"prompt {index}: expected a non-empty 1-D token list, got shape {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.text_config.vocab_size:
            raise ValueError(f"prompt {index}: token ids must be in [0, {self.text_config.vocab_size})")
        bucket_for(len(tokens), self.config.buckets)
        stops = set(params.stop_token_ids) | set(prompt.stop_token_ids)
        if len(stops) > MAX_STOP_TOKENS:
            raise ValueError(f"prompt {index}: {len(stops)} stop tokens, at most {MAX_STOP_TOKENS}")
        if prompt.pixel_values is not None and not self.multimodal:
            raise ValueError(f"prompt {index} has images but the model is text-only")
        if self.multimodal:
            n_image_tokens = int(np.sum(tokens == self.image_token_id))
            if n_image_tokens != prompt.num_tiles * self.tokens_per_tile:
                raise ValueError(
                    f"prompt {index}: {n_image_tokens} image tokens but {prompt.num_tiles} tiles x "
                    f"{self.tokens_per_tile} tokens per tile"
                )
            if prompt.num_tiles > self.config.tile_budget:
                raise ValueError(f"prompt {index}: {prompt.num_tiles} tiles exceed tile_budget {self.config.tile_budget}")

    def _plan(self, items: list[_Item], prompts: list[Prompt], prompts_per_batch: int) -> list[list[_Item]]:
        """Consecutive items (sorted by length) packed under the prompt and tile budgets."""
        batches, current, tiles = [], [], 0
        for item in items:
            t = prompts[item.index].num_tiles
            if current and (len(current) == prompts_per_batch or tiles + t > self.config.tile_budget):
                batches.append(current)
                current, tiles = [], 0
            current.append(item)
            tiles += t
        if current:
            batches.append(current)
        return batches

    def _put(self, x, axes):
        """Host array -> device, batch dim over data/fsdp when there is a mesh."""
        if self.mesh is None:
            return jnp.asarray(x)
        spec = sharding.logical_to_spec(axes + (None,) * (np.ndim(x) - len(axes)), np.shape(x), self.mesh)
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    def _prefill_batch(self, batch, prompts, params, per_prompt, prompts_per_batch) -> tuple[loop.PrefillBatch, int]:
        length = max(len(prompts[it.index].tokens) for it in batch)
        bucket = bucket_for(length, self.config.buckets)
        rows = prompts_per_batch * per_prompt
        tokens = np.full((prompts_per_batch, bucket), self.config.pad_id, np.int32)
        mask = np.zeros((prompts_per_batch, bucket), bool)
        prompt_index = np.zeros(rows, np.int32)
        sample_index = np.zeros(rows, np.int32)
        active = np.zeros(rows, bool)
        stop_ids = np.full((rows, MAX_STOP_TOKENS), -1, np.int32)
        tiles = []
        for j, item in enumerate(batch):
            prompt = prompts[item.index]
            ids = np.asarray(prompt.tokens, np.int32)
            tokens[j, bucket - len(ids):] = ids
            mask[j, bucket - len(ids):] = True
            sl = slice(j * per_prompt, (j + 1) * per_prompt)
            prompt_index[sl] = item.index
            sample_index[sl] = item.offset + np.arange(per_prompt)
            active[sl] = np.arange(per_prompt) < item.count
            stops = sorted(set(params.stop_token_ids) | set(prompt.stop_token_ids))
            stop_ids[sl, : len(stops)] = stops
            if prompt.pixel_values is not None:
                tiles.append(np.asarray(prompt.pixel_values, np.float32))
        pixel_values = tile_mask = None
        if tiles:
            real = np.concatenate(tiles)
            pixel_values = np.zeros((self.config.tile_budget, *real.shape[1:]), np.float32)
            pixel_values[: len(real)] = real
            tile_mask = np.arange(self.config.tile_budget) < len(real)
        rp = strategy.RowParams(
            temperature=np.full(rows, params.temperature, np.float32),
            top_p=np.full(rows, params.top_p, np.float32),
            top_k=np.full(rows, params.top_k if params.top_k < self.text_config.vocab_size else 0, np.int32),
        )
        b = ("batch",)
        pb = loop.PrefillBatch(
            tokens=self._put(tokens, b),
            mask=self._put(mask, b),
            pixel_values=None if pixel_values is None else self._put(pixel_values, b),
            tile_mask=None if tile_mask is None else self._put(tile_mask, b),
            seed=jnp.asarray(np.uint32(params.seed % 2**32)),
            prompt_index=self._put(prompt_index, b),
            sample_index=self._put(sample_index, b),
            row_params=strategy.RowParams(*(self._put(x, b) for x in rp)),
            stop_ids=self._put(stop_ids, b),
            active=self._put(active, b),
        )
        return pb, bucket

    def _run_batch(self, batch, prompts, params, per_prompt, prompts_per_batch):
        """Runs one batch; yields (item, samples, new_tokens) per finished item, or (None, [], new_tokens)."""
        pb, bucket = self._prefill_batch(batch, prompts, params, per_prompt, prompts_per_batch)
        mode = _mode(params, self.text_config.vocab_size)
        max_new = params.max_new_tokens
        key = (bucket, prompts_per_batch, per_prompt, max_new, pb.pixel_values is not None, mode)
        if key not in self.programs:
            self.programs.add(key)
            logger.info(
                "sampler: compiling for bucket %d (prefill %d prompts, decode %d rows x %d slots, images=%s, %s); "
                "%d program pairs so far", bucket, prompts_per_batch, prompts_per_batch * per_prompt,
                bucket + max_new, key[4], mode, len(self.programs))
        self.buckets_used.add(bucket)
        static = dict(mode=mode, pad_id=self.config.pad_id)
        with sharding.use_mesh(self.mesh):
            state = _prefill(self.graphdef, self.params, pb, n=per_prompt, max_new=max_new,
                                  cache_dtype=self.config.cache_dtype, **static)
            reported = np.zeros(len(batch), bool)
            seen_tokens = 0
            while True:
                done, lengths, step = jax.device_get((state.done, state.length, state.step))
                total = int(lengths.sum())
                new_tokens, seen_tokens = total - seen_tokens, total
                finished = [j for j in range(len(batch))
                            if not reported[j] and done[j * per_prompt:(j + 1) * per_prompt].all()]
                if finished:
                    host = jax.device_get((state.tokens, state.logprobs, state.raw_logprobs, state.stopped))
                    for j in finished:
                        reported[j] = True
                        yield batch[j], self._samples(host, lengths, j, per_prompt, batch[j].count), new_tokens
                        new_tokens = 0
                if new_tokens:
                    yield None, [], new_tokens
                if reported.all():
                    return
                stop_at = min(int(step) + self.config.decode_chunk, max_new)
                state = _decode(self.graphdef, self.params, state, jnp.int32(stop_at), **static)

    def _samples(self, host, lengths, j, per_prompt, count) -> list[Sample]:
        tokens, logprobs, raw, stopped = host
        out = []
        for r in range(j * per_prompt, j * per_prompt + count):
            n = int(lengths[r])
            sample = Sample(
                tokens=tokens[r, :n].copy(), logprobs=logprobs[r, :n].copy(), raw_logprobs=raw[r, :n].copy(),
                finish_reason="stop" if stopped[r] else "length",
            )
            if self.tokenizer is not None:
                body = sample.tokens[:-1] if stopped[r] else sample.tokens
                sample.text = self.tokenizer.decode(body.tolist(), skip_special_tokens=True)
            out.append(sample)
        return out


def _progress(total: int, enabled: bool):
    """A tqdm bar (tqdm ships with transformers) or a silent stand-in."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, unit="prompt", desc="sampling", dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            pass
    return _Silent()


class _Silent:
    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass
