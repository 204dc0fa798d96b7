"""Host-side sampling API: prompts in, samples with log-probs out, over any number of prompts.

``Sampler(model, SamplerConfig(...))`` wraps a ``CausalLM`` (the text reasoner) or an
``InternVL`` (the policy). ``generate_iter(prompts, SamplingParams(...))`` yields one
``GenerationResult`` per prompt as soon as all its samples are finished; ``generate`` collects
them in prompt order.

Continuous batching over a paged KV cache (``paged``, ``loop``): ``batch_size`` decode rows each
work on one (prompt, sample) at a time. Between decode calls (at most ``decode_chunk`` steps;
a call ends early once a few rows are free and samples wait) finished rows are reported and
refilled from the queue. A prompt is prefilled once, when its first sample starts; all its
samples share its full KV blocks. KV memory is a pool of ``kv_budget`` tokens in blocks of
``block_size``: a row holds blocks for what it has generated plus one decode call, so the
``max_new_tokens`` cap sizes nothing. When the pool runs out the newest rows are restarted
later (same keys, so the same samples). ``kv_usage`` reports the use of the last call. Once
nothing waits, the live rows move onto half as many rows whenever they fit (down to
``tail_rows``), so the tail of a run does not pay for finished rows.

Compiled programs, for fixed sampling settings: one decode program per row width (``batch_size``
and the halvings down to ``tail_rows`` that a run's tail reaches), one admit program, one
select program per step down (and one to widen again); one prefill per (bucket,
prompts-per-prefill on a power-of-two ladder, images or not). Prompt buckets are
chosen on ``len(prompt) - 1`` (the last prompt token is fed by the first decode step). Each new
program is logged; ``compiled_programs()`` counts what XLA compiled, shared by all samplers of
the same model graph.

Floating point: a sample's tokens depend on (seed, prompt key -- its position unless ``Prompt.key``
is set --, sample) and the weights; its row and
its neighbours only change which rows are computed together, and rows do not interact, so
results do not depend on batching up to XLA's batch-size-dependent rounding (not seen on CPU
in the tests, which compare exactly).

Parameters are whatever ``nnx.split(model)`` gives; place them on the mesh beforehand
(``sharding.create_sharded`` / ``shard_module``) and swap them with ``update_params`` without
recompiling.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from sophia_jax import sharding
from sophia_jax.errors import UserError
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
    # The number the sampling keys fold in for this prompt (0 <= key < 2**31); None = its position in the
    # call. A stable key per prompt (e.g. a hash of a question id) makes its samples independent of which
    # other prompts share the call, so any split into calls samples the same tokens.
    key: int | None = None

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

    batch_size: int = 8  # decode rows, each holding one sample at a time
    buckets: tuple[int, ...] = DEFAULT_BUCKETS  # prompt-length ladder (slots), ascending
    cache_dtype: str = "bfloat16"  # KV cache dtype; float32 for exact parity tests
    tile_budget: int = 16  # image tiles per prefill call, padded; bounds vision compute
    decode_chunk: int = 256  # most decode steps per jitted call; rows are refilled between calls
    pad_id: int = 0  # fills left padding and the tokens after a row stops
    progress: bool = True  # tqdm bar: prompts done/total, tokens/s, ETA
    kv_budget: int = 65536  # KV-cache tokens held at once, over all rows and prompts
    block_size: int = 64  # KV-cache tokens per block (the unit of allocation)
    # When nothing waits and at most half the rows are live, decoding goes on over half as many
    # rows (one more decode program per width), down to this many; >= batch_size: never.
    tail_rows: int = 8


@dataclasses.dataclass
class KVUsage:
    """KV-cache use of the last ``generate`` call: per decode call, and the peak."""

    budget_tokens: int
    block_size: int
    peak_blocks: int = 0
    peak_live_tokens: int = 0
    preempted: int = 0  # samples restarted because the budget ran out
    prefilled: int = 0  # prompts prefilled (once for all their samples, unless preempted and evicted)
    history: list = dataclasses.field(default_factory=list)  # (live rows, live tokens, blocks in use)

    @property
    def peak_tokens(self) -> int:
        return self.peak_blocks * self.block_size


@dataclasses.dataclass
class _Prefix:
    """A prefilled prompt in the pool, shared by its samples until all of them are done."""

    blocks: list  # pool blocks holding its first length tokens
    length: int  # prompt length - 1
    unfinished: int  # samples not yet done (queued or decoding)


@dataclasses.dataclass
class _Row:
    """The sample a decode row is working on."""

    prompt: int
    sample: int
    blocks: list  # its block table (shared prefix blocks first)
    own: list  # the blocks it owns (freed when it ends)
    cap: int  # blocks it can need at most
    order: int  # admission counter (newest rows are preempted first)
    generated: int = 0
    tokens: list = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)
    raw: list = dataclasses.field(default_factory=list)


# Module-level jits: every Sampler over the same model graph shares the compiled programs (a new
# Sampler per RL iteration recompiles nothing). The weights are arguments, the graph is static.
_prefill = jax.jit(loop.prefill, static_argnames=("graphdef", "cache_dtype"), donate_argnames=("pool",))
_admit = jax.jit(loop.admit, donate_argnames=("state",))
_reset = jax.jit(loop.reset, donate_argnames=("state",))
_release = jax.jit(loop.release, donate_argnames=("state",))
_select_rows = jax.jit(loop.select_rows, donate_argnames=("pool",))
_decode = jax.jit(loop.decode, static_argnames=("graphdef", "mode", "pad_id"), donate_argnames=("state",))


def compiled_programs() -> dict[str, int]:
    """How many programs of each kind have been compiled in this process (all samplers)."""
    return {"prefill": _prefill._cache_size(), "decode": _decode._cache_size(), "admit": _admit._cache_size(),
            "select_rows": _select_rows._cache_size()}


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length."""
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"prompt of {length} tokens is longer than the largest bucket {max(buckets)}; buckets: {buckets}")


def sampling_mode(params: SamplingParams, vocab: int) -> strategy.Mode:
    """The static switches of the decode program for ``params``."""
    if params.temperature <= 0:
        return strategy.Mode(greedy=True)
    k_cap = 0
    if 0 < params.top_k < vocab:
        k_cap = min(1 << (params.top_k - 1).bit_length(), vocab)  # a power of two: few programs
    return strategy.Mode(k_cap=k_cap, top_p=params.top_p < 1.0)


def _pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def _blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class Sampler:
    """Samples from a CausalLM or an InternVL with a paged KV cache; see the module docstring."""

    def __init__(self, model: nnx.Module, config: SamplerConfig = SamplerConfig(), *, mesh: Mesh | None = None,
                 tokenizer=None):
        if list(config.buckets) != sorted(config.buckets) or not config.buckets:
            raise ValueError(f"buckets must be a non-empty ascending ladder, got {config.buckets}")
        if config.block_size < 1 or config.kv_budget < config.block_size:
            raise ValueError(f"need block_size >= 1 and kv_budget >= block_size, got {config.block_size}, "
                             f"{config.kv_budget}")
        self.config = config
        self.mesh = mesh
        self.tokenizer = tokenizer
        self.graphdef, self.params = nnx.split(model)
        self.text_config = loop.text_config(model)
        self.multimodal = hasattr(model, "image_features")
        if self.multimodal:
            self.image_token_id = model.config.image_token_id
            self.tokens_per_tile = model.config.tokens_per_tile
            self.image_size = model.config.vision.image_size
        self.num_blocks = config.kv_budget // config.block_size + 1  # + the scratch block
        self.programs: set[tuple] = set()  # signatures this sampler has run
        self.buckets_used: set[int] = set()
        self.kv_usage = KVUsage(config.kv_budget, config.block_size)
        self._state: loop.DecodeState | None = None  # kept between calls: the pool is allocated once

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

    def _note(self, key: tuple, what: str) -> None:
        if key not in self.programs:
            self.programs.add(key)
            logger.info("sampler: compiling %s %s; %d programs so far", what, key[1:], len(self.programs))

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
        if not prompts:
            return
        run = _Run(self, prompts, params)
        bar = _progress(len(prompts), self.config.progress)
        start = time.perf_counter()
        try:
            for result, generated in run:
                if result is not None:
                    bar.update(1)
                bar.set_postfix(tok_s=f"{generated / max(time.perf_counter() - start, 1e-9):.1f}")
                if result is not None:
                    yield result
        finally:
            bar.close()
            self._state = run.state  # the pool (maybe mid-run, after a break) for the next call

    # -- internals -----------------------------------------------------------------------------

    def _validate(self, index: int, prompt: Prompt, params: SamplingParams) -> None:
        tokens = np.asarray(prompt.tokens)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(f"prompt {index}: expected a non-empty 1-D token list, got shape {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.text_config.vocab_size:
            raise ValueError(f"prompt {index}: token ids must be in [0, {self.text_config.vocab_size})")
        bucket_for(len(tokens) - 1, self.config.buckets)
        stops = set(params.stop_token_ids) | set(prompt.stop_token_ids)
        if len(stops) > MAX_STOP_TOKENS:
            raise ValueError(f"prompt {index}: {len(stops)} stop tokens, at most {MAX_STOP_TOKENS}")
        if prompt.key is not None and not 0 <= prompt.key < 2**31:
            raise ValueError(f"prompt {index}: key must be in [0, 2**31), got {prompt.key}")
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
            if tokens[-1] == self.image_token_id:  # the last token is decoded as text (see loop)
                raise ValueError(f"prompt {index} ends with an image token; end it with text (the chat template does)")
        bs, chunk = self.config.block_size, min(self.config.decode_chunk, params.max_new_tokens)
        need = _blocks(len(tokens) - 1, bs) + _blocks(len(tokens) - 1 + min(chunk, params.max_new_tokens), bs)
        if need > self.num_blocks - 1:
            raise SamplerConfigError(
                f"prompt {index}: {len(tokens)} tokens need {need} KV blocks of {bs} to start decoding, "
                f"sampler kv_budget {self.config.kv_budget} holds {self.num_blocks - 1}; raise kv_budget")

    # -- layouts: the shapes and shardings of the programs' inputs (``aot`` compiles from them too) --

    def sharding(self, shape: tuple[int, ...], axes=("batch",)) -> NamedSharding | None:
        """Where an input of ``shape`` lives: its leading ``axes`` by the logical rules (batch over
        data/fsdp), the rest replicated; None without a mesh."""
        if self.mesh is None:
            return None
        return NamedSharding(self.mesh, sharding.logical_to_spec(tuple(axes) + (None,) * (len(shape) - len(axes)),
                                                                 shape, self.mesh))

    def _put(self, x, axes=("batch",)):
        """Host array -> device, placed by ``sharding``."""
        where = self.sharding(np.shape(x), axes)
        return jnp.asarray(x) if where is None else jax.device_put(x, where)

    def table_width(self, longest_prompt: int, max_new_tokens: int) -> int:
        """Blocks per row of the decode block table for a call whose longest prompt has ``longest_prompt`` tokens."""
        return min(_pow2(_blocks(longest_prompt - 1 + max_new_tokens, self.config.block_size)), self.num_blocks)

    def prefill_layout(self, bucket: int, prompts: int, images: bool) -> loop.PrefillBatch:
        """One prefill's inputs as ``jax.ShapeDtypeStruct``s with their shardings: ``prompts`` prompts
        padded to the next power of two (a ladder of prefill widths: few programs, little padding), in
        ``bucket`` slots (rows over the batch axes) and, with ``images``, the tile budget's tiles."""
        def spec(shape, dtype, axes=("batch",)):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=self.sharding(shape, axes))

        tiles, count = self.config.tile_budget, _pow2(prompts)
        return loop.PrefillBatch(
            tokens=spec((count, bucket), jnp.int32), mask=spec((count, bucket), jnp.bool_),
            pixel_values=spec((tiles, 3, self.image_size, self.image_size), jnp.float32, ()) if images else None,
            tile_mask=spec((tiles,), jnp.bool_, ()) if images else None,
            blocks=spec((count, _blocks(bucket, self.config.block_size)), jnp.int32))

    def _init_state(self, seed, max_new) -> loop.DecodeState:
        cfg = self.config
        return loop.init_state(self.text_config, seed, max_new, rows=cfg.batch_size, chunk=cfg.decode_chunk,
                               num_blocks=self.num_blocks, block_size=cfg.block_size, dtype=cfg.cache_dtype,
                               stop_slots=MAX_STOP_TOKENS)

    def abstract_state(self) -> loop.DecodeState:
        """The decode state (pool included) as ``jax.ShapeDtypeStruct``s with the shardings every call
        gets: ``loop.map_axes``'s layout on this mesh."""
        shapes = jax.eval_shape(self._init_state, np.uint32(0), np.int32(1))
        if self.mesh is None:
            return shapes
        return loop.map_axes(lambda x, axes: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                  sharding=self.sharding(x.shape, axes)), shapes)

    def state_shardings(self) -> loop.DecodeState | None:
        """Where each leaf of the decode state lives (None without a mesh)."""
        if self.mesh is None:
            return None
        return jax.tree.map(lambda x: x.sharding, self.abstract_state())

    def _fresh_state(self, params: SamplingParams) -> loop.DecodeState:
        """All rows free; the pool of the previous call is reused (its contents are dead)."""
        cfg = self.config
        seed, max_new = np.uint32(params.seed % 2**32), params.max_new_tokens
        state = self._state
        shape_ok = state is not None and state.pool[0].dtype == jnp.dtype(cfg.cache_dtype)
        layout = self.state_shardings()
        if not shape_ok:
            # Born in its layout: a replicated pool would hold the whole KV budget on every chip.
            init = jax.jit(self._init_state) if layout is None else jax.jit(self._init_state, out_shardings=layout)
            with sharding.use_mesh(self.mesh):
                state = init(seed, max_new)
        self._state = None
        if state.done.shape[0] != cfg.batch_size:  # the last call ended on fewer rows
            state = _select_rows(state.pool, state.replace(pool=None), np.arange(cfg.batch_size, dtype=np.int32))
        state = _reset(state, np.uint32(seed), np.int32(max_new))
        # Committed and in the layout the programs' outputs have: otherwise the first admit of a call
        # would compile a second program (jit caches on shardings and committed-ness).
        if layout is None:
            return jax.tree.map(lambda x: jax.device_put(x, x.sharding), state)
        return jax.device_put(state, layout)

    def _sample(self, row: _Row, stopped: bool) -> Sample:
        sample = Sample(tokens=np.asarray(row.tokens, np.int32), logprobs=np.asarray(row.logprobs, np.float32),
                        raw_logprobs=np.asarray(row.raw, np.float32), finish_reason="stop" if stopped else "length")
        if self.tokenizer is not None:
            body = sample.tokens[:-1] if stopped else sample.tokens
            sample.text = self.tokenizer.decode(body.tolist(), skip_special_tokens=True)
        return sample


class SamplerConfigError(UserError, ValueError):
    """The sampler's settings cannot serve the request (e.g. the KV budget is too small)."""


class _Run:
    """One ``generate_iter`` call: the queue of (prompt, sample), the rows, the block allocator.

    Iterating yields (result or None, generated tokens so far) after each decode call.
    """

    def __init__(self, sampler: Sampler, prompts: list[Prompt], params: SamplingParams):
        self.s, self.prompts, self.params = sampler, prompts, params
        cfg = sampler.config
        self.bs, self.rows_n, self.chunk = cfg.block_size, cfg.batch_size, cfg.decode_chunk
        self.mode = sampling_mode(params, sampler.text_config.vocab_size)
        self.table_width = sampler.table_width(max(len(p.tokens) for p in prompts), params.max_new_tokens)
        self.table = np.zeros((self.rows_n, self.table_width), np.int32)
        self.free = list(range(sampler.num_blocks - 1, 0, -1))  # block 0 is scratch
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].tokens))  # long first: errors early
        self.queue = collections.deque((i, j) for i in order for j in range(params.n))
        self.prefixes: dict[int, _Prefix] = {}
        self.rows: list[_Row | None] = [None] * self.rows_n
        self.samples = {i: [None] * params.n for i in range(len(prompts))}
        self.stops = {i: sorted(set(params.stop_token_ids) | set(p.stop_token_ids)) for i, p in enumerate(prompts)}
        vocab = sampler.text_config.vocab_size
        self.row_params = strategy.RowParams(
            temperature=sampler._put(np.full(self.rows_n, params.temperature, np.float32)),
            top_p=sampler._put(np.full(self.rows_n, params.top_p, np.float32)),
            top_k=sampler._put(np.full(self.rows_n, params.top_k if params.top_k < vocab else 0, np.int32)),
        )
        self.admitted = 0
        self.generated = 0
        sampler.kv_usage = self.usage = KVUsage(cfg.kv_budget, self.bs)
        self.state = sampler._fresh_state(params)

    # -- block allocation ------------------------------------------------------------------------

    def _row_need(self, length: int, cap: int) -> int:
        """Blocks a row of ``length`` filled slots needs to run one more decode call."""
        return min(_blocks(length + self.chunk, self.bs), cap)

    def _preempt(self, r: int) -> None:
        row = self.rows[r]
        self.free.extend(row.own)
        self.queue.appendleft((row.prompt, row.sample))  # it restarts identically (keys are per sample)
        self.rows[r] = None
        self.usage.preempted += 1
        logger.info("sampler: kv_budget full, restarting prompt %d sample %d later", row.prompt, row.sample)

    def _grow(self) -> list[int]:
        """Gives every live row the blocks for one more decode call, oldest rows first; preempts
        the newest rows when the budget runs out. Returns the preempted rows."""
        preempted = []
        live = sorted((r for r, row in enumerate(self.rows) if row is not None), key=lambda r: self.rows[r].order)
        for r in live:
            row = self.rows[r]
            if row is None:
                continue
            need = self._row_need(self.prefixes[row.prompt].length + row.generated, row.cap)
            while len(row.blocks) < need:
                if not self.free:
                    victim = max((v for v, x in enumerate(self.rows) if x is not None), key=lambda v: self.rows[v].order)
                    if victim == r and len(live) == 1:
                        raise SamplerConfigError(f"sampler kv_budget {self.s.config.kv_budget} is too small for one "
                                                 f"sample of prompt {row.prompt}; raise kv_budget")
                    self._preempt(victim)
                    preempted.append(victim)
                    if victim == r:
                        break
                    continue
                block = self.free.pop()
                row.blocks.append(block)
                row.own.append(block)
            if self.rows[r] is not None:
                self.table[r, : len(row.blocks)] = row.blocks
        return preempted

    # -- admission -------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Starts queued samples in free rows while the budget allows; prefills new prompts."""
        s, bs = self.s, self.bs
        free_rows = [r for r, row in enumerate(self.rows) if row is None]
        to_prefill, started = [], []
        while free_rows and self.queue:
            p, j = self.queue[0]
            length = len(self.prompts[p].tokens) - 1
            full, partial = divmod(length, bs)
            new_prefix = p not in self.prefixes
            cap = _blocks(length + self.params.max_new_tokens, bs)
            cost = (_blocks(length, bs) if new_prefix else 0) + self._row_need(length, cap) - full
            tiles = sum(self.prompts[q].num_tiles for q in to_prefill) + self.prompts[p].num_tiles
            if cost > len(self.free) or (new_prefix and tiles > s.config.tile_budget):
                break
            self.queue.popleft()
            if new_prefix:
                blocks = [self.free.pop() for _ in range(_blocks(length, bs))]
                self.prefixes[p] = _Prefix(blocks, length, self.params.n)
                to_prefill.append(p)
            prefix = self.prefixes[p]
            own = [self.free.pop() for _ in range(self._row_need(length, cap) - full)]
            r = free_rows.pop(0)
            self.rows[r] = _Row(p, j, prefix.blocks[:full] + own, own, cap, self.admitted)
            self.admitted += 1
            self.table[r] = 0
            self.table[r, : len(self.rows[r].blocks)] = self.rows[r].blocks
            started.append((r, prefix.blocks[full] if partial else 0, own[0] if partial else 0))
        if to_prefill:
            self._prefill(to_prefill)
        if started:
            self._start(started)

    def _prefill(self, prompt_ids: list[int]) -> None:
        """One prefill call for prompts with something to prefill (a 1-token prompt has nothing)."""
        s = self.s
        prompt_ids = [p for p in prompt_ids if self.prefixes[p].length > 0]
        if not prompt_ids:
            return
        bucket = bucket_for(max(self.prefixes[p].length for p in prompt_ids), s.config.buckets)
        images = any(self.prompts[p].pixel_values is not None for p in prompt_ids)
        layout = s.prefill_layout(bucket, len(prompt_ids), images)
        count = layout.tokens.shape[0]
        tokens = np.full(layout.tokens.shape, s.config.pad_id, np.int32)
        mask = np.zeros(layout.mask.shape, bool)
        blocks = np.zeros(layout.blocks.shape, np.int32)
        tiles = []
        for k, p in enumerate(prompt_ids):
            prompt, prefix = self.prompts[p], self.prefixes[p]
            ids = np.asarray(prompt.tokens, np.int32)[:-1]
            tokens[k, bucket - len(ids):] = ids
            mask[k, bucket - len(ids):] = True
            blocks[k, : len(prefix.blocks)] = prefix.blocks
            if prompt.pixel_values is not None:
                tiles.append(np.asarray(prompt.pixel_values, np.float32))
        pixel_values = tile_mask = None
        if images:
            real = np.concatenate(tiles)
            pixel_values = np.zeros(layout.pixel_values.shape, np.float32)
            pixel_values[: len(real)] = real
            tile_mask = np.arange(len(pixel_values)) < len(real)
        host = loop.PrefillBatch(tokens=tokens, mask=mask, pixel_values=pixel_values, tile_mask=tile_mask,
                                 blocks=blocks)
        batch = jax.tree.map(lambda x, spec: jnp.asarray(x) if spec.sharding is None else
                             jax.device_put(x, spec.sharding), host, layout)
        s._note(("prefill", bucket, count, images), "prefill")
        self.usage.prefilled += len(prompt_ids)
        s.buckets_used.add(bucket)
        with sharding.use_mesh(s.mesh):
            pool = _prefill(s.graphdef, s.params, self.state.pool, batch, cache_dtype=s.config.cache_dtype)
        self.state = self.state.replace(pool=pool)

    def _start(self, started: list[tuple[int, int, int]]) -> None:
        s, n = self.s, self.rows_n
        mask = np.zeros(n, bool)
        length, last, pi, si = (np.zeros(n, np.int32) for _ in range(4))
        src, dst = np.zeros(n, np.int32), np.zeros(n, np.int32)
        stop_ids = np.full((n, MAX_STOP_TOKENS), -1, np.int32)
        for r, copy_from, copy_to in started:
            row = self.rows[r]
            tokens = self.prompts[row.prompt].tokens
            key = self.prompts[row.prompt].key
            mask[r], length[r], last[r], si[r] = True, len(tokens) - 1, tokens[-1], row.sample
            pi[r] = row.prompt if key is None else key
            src[r], dst[r] = copy_from, copy_to
            stops = self.stops[row.prompt]
            stop_ids[r, : len(stops)] = stops
        new = loop.Admission(*(s._put(x) for x in (mask, length, last, pi, si, stop_ids, src, dst)))
        with sharding.use_mesh(s.mesh):
            self.state = _admit(self.state, new, self.row_params)

    # -- the loop --------------------------------------------------------------------------------

    def __iter__(self):
        s = self.s
        static = dict(mode=self.mode, pad_id=s.config.pad_id)
        while self.queue or any(row is not None for row in self.rows):
            preempted = self._grow()
            if preempted:
                mask = np.zeros(self.rows_n, bool)
                mask[preempted] = True
                with sharding.use_mesh(s.mesh):
                    self.state = _release(self.state, s._put(mask))
            self._admit()
            live = [r for r, row in enumerate(self.rows) if row is not None]
            if not live:
                raise SamplerConfigError(f"sampler kv_budget {s.config.kv_budget} cannot hold the next prompt; "
                                         f"raise kv_budget")
            if not self.queue:
                live = self._narrow(live)
            self._record(live)
            # Come back for a refill once a few rows are free, if anything waits.
            want = min(len(self.queue), max(1, self.rows_n // 8)) if self.queue else self.rows_n + 1
            # Nothing waits: come back when the rows could fit in half the width.
            refill_at = self.rows_n - len(live) + want if self.queue else self._narrow_at(len(live))
            s._note(("decode", self.rows_n, self.chunk, self.table_width, self.mode), "decode")
            with sharding.use_mesh(s.mesh):
                self.state = _decode(s.graphdef, s.params, self.state, s._put(self.table), jnp.int32(self.chunk),
                                     jnp.int32(refill_at), **static)
            done, generated, stopped, tokens, logprobs, raw = jax.device_get((
                self.state.done, self.state.generated, self.state.stopped, self.state.out_tokens,
                self.state.out_logprobs, self.state.out_raw))
            for r in live:
                row = self.rows[r]
                k = int(generated[r]) - row.generated
                row.tokens.extend(tokens[r, :k].tolist())
                row.logprobs.extend(logprobs[r, :k].tolist())
                row.raw.extend(raw[r, :k].tolist())
                row.generated += k
                self.generated += k
                if done[r]:
                    yield self._finish(r, bool(stopped[r])), self.generated
            yield None, self.generated

    def _narrow_at(self, live: int) -> int:
        """Free rows at which decoding should stop to narrow (rows_n + 1 = run to the end)."""
        half = self.rows_n // 2
        if half < self.s.config.tail_rows or live <= half:
            return self.rows_n + 1
        return self.rows_n - half

    def _narrow(self, live: list[int]) -> list[int]:
        """Moves the live rows onto the fewest rows of the halving ladder that hold them (down to
        ``tail_rows``); returns their new indices."""
        width = self.rows_n
        while width // 2 >= self.s.config.tail_rows and len(live) <= width // 2:
            width //= 2
        if width == self.rows_n:
            return live
        keep = np.asarray(live + [self.rows_n] * (width - len(live)), np.int32)  # past the end = free
        with sharding.use_mesh(self.s.mesh):
            self.state = _select_rows(self.state.pool, self.state.replace(pool=None), self.s._put(keep))
        self.rows = [self.rows[r] for r in live] + [None] * (width - len(live))
        self.table = np.concatenate([self.table[live], np.zeros((width - len(live), self.table_width), np.int32)])
        self.row_params = strategy.RowParams(*(x[:width] for x in self.row_params))
        self.rows_n = width
        self.s._note(("select_rows", width), "select_rows")
        return list(range(len(live)))

    def _record(self, live: list[int]) -> None:
        tokens = sum(self.prefixes[self.rows[r].prompt].length + self.rows[r].generated for r in live)
        used = self.s.num_blocks - 1 - len(self.free)
        self.usage.history.append((len(live), tokens, used))
        self.usage.peak_blocks = max(self.usage.peak_blocks, used)
        self.usage.peak_live_tokens = max(self.usage.peak_live_tokens, tokens)

    def _finish(self, r: int, stopped: bool) -> GenerationResult | None:
        row = self.rows[r]
        self.rows[r] = None
        self.table[r] = 0
        self.free.extend(row.own)
        self.samples[row.prompt][row.sample] = self.s._sample(row, stopped)
        prefix = self.prefixes[row.prompt]
        prefix.unfinished -= 1
        if prefix.unfinished:
            return None
        self.free.extend(prefix.blocks)
        del self.prefixes[row.prompt]
        return GenerationResult(row.prompt, self.prompts[row.prompt], self.samples.pop(row.prompt))


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
