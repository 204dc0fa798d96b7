"""``sophia-jax aot``: a stage's real programs compiled for a TPU slice you do not have.

    sophia-jax aot --config configs/train_internvl3_38b_v5p.py      # the train step, whole slice
    sophia-jax aot --config configs/generate_internvl3_38b_v5p.py   # the sampler, one host's chips
    sophia-jax aot --config train --config.aot.topology=v5p:4x4x4 --config.aot.model=internvl3_38b \\
        --config.data.seq_len=8192 --config.train.micro_rows=64
    sophia-jax aot --config configs/train_internvl3_38b_v6e.py --config.aot.cost=False   # fit only, one compile

With libtpu installed (the ``tpu`` extra), ``jax.experimental.topologies`` describes the devices
of a named slice (``v5p:4x4x4``) on any host, and ``jit(...).lower(...).compile()`` compiles for
them. Models are built abstractly (``nnx.eval_shape``: no weights), every parameter gets its
sharding from the logical rules. What is compiled depends on the config's stage:

* train / warmup: the jitted train step the stage runs (``training.step.TrainProgram.jitted``:
  optimizer, chunked loss, one micro-batch) with the config's model settings (scan over layers,
  remat, splash attention), for ``aot.topology``; the projected MFU comes with it.
* generate: the sampler's prefill and decode programs (``sampling.sampler._prefill`` / ``_decode``,
  the jitted functions every ``Sampler`` runs) for the policy (``aot.policy``) and the reasoner
  (``aot.reasoner``) at the config's sampler settings (batch, KV budget, buckets, attention), for
  one host's chips (``aot.topology``); decode tokens/s and the HBM-bandwidth bound come with them.

Printed per chip: argument / output / temp bytes against HBM, FLOPs, the estimated time with its
source (``estimate_seconds``: XLA's, or a roofline where XLA's is negative) and the projection;
see ``compile_train_step`` and ``compile_sampler`` for what XLA's cost analysis cannot see. Exits
1 when a program does not fit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from sophia_jax import sharding
from sophia_jax.configs import models as model_presets
from sophia_jax.errors import UserError
from sophia_jax.models import CausalLM, InternVL, RuntimeConfig
from sophia_jax.models.config import InternVLConfig

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_bytes: int
    peak_bf16_flops: float  # per chip, FLOP/s
    hbm_bandwidth: float  # bytes/s per chip
    ici_bandwidth: float  # bytes/s per chip, all inter-chip links together


CHIPS = {  # Cloud TPU published figures (ICI: 4,800 / 3,584 / 1,600 / 2,400 Gbps per chip)
    "v5p": Chip(95 * GIB, 459e12, 2.765e12, 600e9),
    "v6e": Chip(32 * GIB, 918e12, 1.64e12, 448e9),
    "v5e": Chip(16 * GIB, 197e12, 0.819e12, 200e9),
    "v4": Chip(32 * GIB, 275e12, 1.2e12, 300e9),
}


def chip_of(topology: str) -> Chip:
    kind = topology.split(":")[0].lower()
    kind = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}.get(kind, kind)
    if kind not in CHIPS:
        raise UserError(f"--topology {topology!r}: unknown TPU generation {kind!r}; known: {sorted(CHIPS)}")
    return CHIPS[kind]


def topology_devices(topology: str) -> list:
    """Devices of a named TPU slice such as ``v5p:2x2x2`` (needs libtpu). Described once per
    process: jit's trace cache keeps the meshes of sharding constraints, so a second description
    (new device objects) would not match the programs already traced for the first."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # silence libtpu's multi-host probe
    # Compiling touches no chip, so several compiling processes may share this host's libtpu.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return list(_describe(topology))
    except Exception as e:  # noqa: BLE001 - libtpu raises plain RuntimeErrors for bad names / no libtpu
        raise UserError(f"--topology {topology!r}: cannot describe this TPU slice ({e}); is libtpu installed "
                        f"(pip install -e '.[tpu]')?") from e


@functools.lru_cache(maxsize=None)
def _describe(topology: str) -> tuple:
    from jax.experimental import topologies

    return tuple(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)


@dataclasses.dataclass(frozen=True)
class ProgramReport:
    name: str
    argument_bytes: int  # per device
    output_bytes: int
    alias_bytes: int  # outputs that reuse donated argument buffers
    temp_bytes: int
    code_bytes: int
    flops: float  # per device, XLA's count
    seconds: float | None  # estimated time: see ``estimate_seconds``
    hbm_bytes: int
    estimate: str = "XLA"  # where ``seconds`` comes from: XLA (its optimal_seconds) or roofline
    model_flops: float | None = None  # whole step, all chips (train)
    chips: int = 1
    peak_flops: float = 0.0
    tokens: int | None = None  # decode: tokens one step emits (rows)
    bandwidth_bound_seconds: float | None = None  # decode: bytes read per chip / HBM bandwidth
    resident_bytes: int = 0  # held on the chip beside the program's own buffers (generate: the other model)

    @property
    def total_bytes(self) -> int:
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes
                + self.resident_bytes)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    @property
    def mfu(self) -> float | None:
        # A 'peak' time is the model FLOPs at peak by construction: its MFU (100%) would say nothing.
        if self.model_flops is None or not self.seconds or self.estimate == "peak":
            return None
        return self.model_flops / (self.chips * self.peak_flops * self.seconds)

    def row(self) -> str:
        g = lambda b: f"{b / GIB:7.2f}"  # noqa: E731
        est = f"{self.seconds * 1e3:9.2f} ms {self.estimate:<4}" if self.seconds else "      n/a     "
        extra = ""
        if self.mfu is not None:
            extra = f"MFU {100 * self.mfu:5.1f}%"
        elif self.estimate == "peak":
            extra = "MFU n/a (estimate below model FLOPs at peak: XLA's counts miss work)"
        elif self.tokens and self.seconds:
            extra = f"{self.tokens / self.seconds:,.0f} tok/s"
            if self.bandwidth_bound_seconds:
                extra += f", HBM-bw bound {self.bandwidth_bound_seconds * 1e3:.2f} ms"
        return (f"{self.name:<34} {g(self.argument_bytes)} {g(self.output_bytes)} {g(self.temp_bytes)} "
                f"{g(self.total_bytes)} / {self.hbm_bytes / GIB:.0f} {'yes' if self.fits else 'NO ':>4} "
                f"{self.flops / 1e12:9.2f} {est}  {extra}")


HEADER = (f"{'program (per device, GiB)':<34} {'args':>7} {'out':>7} {'temp':>7} {'total':>7} / HBM  fits "
          f"{'TFLOP':>9} {'est. time (source)':>17}  projected")

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE = re.compile(r"= (.*?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16}


def collective_bytes(hlo_text: str) -> int:
    """Bytes the collectives of a compiled (per-device) HLO move: for each collective op, the largest
    array of its result type (an all-gather's gathered array, an all-reduce's operand), counted once
    per op in the text (a loop body once)."""
    total = 0
    for match in _COLLECTIVE.finditer(hlo_text):
        sizes = [math.prod(int(d) for d in dims.split(",") if d) * _BITS.get(t, int(re.sub(r"\D", "", t) or 8)) // 8
                 for t, dims in _ARRAY.findall(match.group(1))]
        total += max(sizes, default=0)
    return total


def estimate_seconds(cost: dict, hlo_text: str, chip: Chip) -> tuple[float | None, str]:
    """(seconds, source) of one run of a compiled program on one chip.

    XLA's own estimate (``optimal_seconds``) where it is positive. On chips with SparseCores (v5p,
    v6e) XLA offloads scatter-adds (the loss's per-sequence sums in a train step) to them as async
    calls, and its TPU cost model prices each such ``call-start`` at -1 s: the tiny train step
    gives -8.0 s with 8 of them on v5p:2x2x1 and -6.0 s with 6 on v5p:2x4x4 (positive on v5e, which
    has none), the 1-layer InternVL3-8B step on v5p:2x4x4 at 1,024 tokens -7.88 s with 8. There the estimate is a
    roofline of the compiled program's own counts: ``max(flops / peak, bytes accessed / HBM
    bandwidth)`` plus the collectives' bytes (``collective_bytes``) over the chip's ICI bandwidth.
    It assumes every op runs at the chip's peak rate or at its HBM bandwidth, whichever binds
    (XLA's ``bytes accessed`` counts each fused op's operands and results once), and that no
    collective overlaps compute (a pessimistic term); what XLA cannot see (a Pallas kernel) is not in it.
    """
    xla = cost.get("optimal_seconds")
    if xla is not None and xla > 0:
        return float(xla), "XLA"
    flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    if not flops and not accessed:
        return None, "roofline"
    roofline = max(flops / chip.peak_bf16_flops, accessed / chip.hbm_bandwidth)
    return roofline + collective_bytes(hlo_text) / chip.ici_bandwidth, "roofline"


def _report(name, compiled, chip: Chip, **extra) -> ProgramReport:
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = cost or {}
    seconds, source = estimate_seconds(cost, compiled.as_text(), chip)
    return ProgramReport(
        name=name, argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes), flops=float(cost.get("flops", 0.0)),
        seconds=seconds, estimate=source, hbm_bytes=chip.hbm_bytes, peak_flops=chip.peak_bf16_flops, **extra)


def abstract_model(arch, runtime: RuntimeConfig, mesh):
    """(graphdef, state of ShapeDtypeStructs carrying their NamedShardings): no weights."""
    cls = InternVL if isinstance(arch, InternVLConfig) else CausalLM
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(arch, runtime, rngs=nnx.Rngs(0))))
    shardings = sharding.state_shardings(state, mesh)
    return graphdef, jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), state, shardings)


def _count(state) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def _sds(shape, dtype, mesh_sharding):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=mesh_sharding)


# ------------------------------------------------------------------------------------------------
# Train step


def train_model_flops(arch, text_params: int, vision_params: int, rows: int, length: int, tiles: int,
                      vision_trainable: bool) -> float:
    """Model FLOPs of one micro-batch: 6 N T for the decoder's matrices (``text_params`` without an
    untied input embedding table, which is a lookup, not a matmul), causal attention, and the ViT
    (forward only when frozen: its inputs are pixels, so no backward flows into it)."""
    text = arch.text if isinstance(arch, InternVLConfig) else arch
    tokens = rows * length
    attention = 6 * text.num_layers * text.num_heads * text.head_dim * length * tokens  # 12 L D T, halved (causal)
    flops = 6.0 * text_params * tokens + attention
    if isinstance(arch, InternVLConfig) and tiles:
        patches = (arch.vision.image_size // arch.vision.patch_size) ** 2 + 1
        flops += (6.0 if vision_trainable else 2.0) * vision_params * patches * rows * tiles
    return flops


def _with_text_layers(arch, layers: int):
    if isinstance(arch, InternVLConfig):
        return dataclasses.replace(arch, text=dataclasses.replace(arch.text, num_layers=layers))
    return dataclasses.replace(arch, num_layers=layers)


# What a train step's cost programs are compiled with, so that XLA's cost analysis sees all of
# their work: its SparseCore offload of scatter-adds is priced at -1 s per call, and its windowed
# einsums (an FSDP all-gather or reduce-scatter split into a loop of matmul steps) are `while`
# loops whose bodies it counts once. The programs compute the same; only the schedule differs.
COST_OPTIONS = {
    "xla_tpu_enable_offloading_scatter_to_sparsecore": "DISABLED",
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}


def compile_train_step(cfg, arch, mesh, chip: Chip) -> ProgramReport:
    """The train step's memory from the program the stage runs; its FLOPs and time from copies of
    it without loops, since XLA's cost analysis counts a loop body once and sees no Pallas kernel:

    * the cost programs unroll the decoder layers (compiled with 1 and 2 of them, extrapolated
      linearly to all) and the loss's vocabulary chunks (``loss_chunk_unroll``: compile time grows
      with the chunk count, so TPU configs use chunks of ~1,024 tokens per chip), and are compiled
      with ``COST_OPTIONS`` (no SparseCore offload, no windowed einsums);
    * a Pallas kernel (``attention = splash``) is opaque to XLA, so the causal attention FLOPs
      (forward, backward and, under remat, the forward again) are added to the time at the chip's
      peak rate (an optimistic bound: the MFU shown is an upper one);
    * no step is faster than its model FLOPs at the chip's peak: where the estimate is below that,
      that time is shown instead (source ``peak``; no MFU is shown for it, as it would be 100% by
      construction).
    """
    report = _compile_train_step(cfg, arch, mesh, chip)
    if not cfg.aot.cost:  # memory and fit only
        return dataclasses.replace(report, flops=0.0, seconds=None, estimate="none")
    text = arch.text if isinstance(arch, InternVLConfig) else arch
    unrolled = cfg.copy_and_resolve_references()
    unrolled.model.scan_layers = False
    one, two = (_compile_train_step(unrolled, _with_text_layers(arch, n), mesh, chip, cost_program=True)
                for n in (1, 2))
    extrapolate = lambda a, b: a + (text.num_layers - 1) * (b - a)  # noqa: E731
    seconds = extrapolate(one.seconds, two.seconds) if one.seconds and two.seconds else None
    source = one.estimate if one.estimate == two.estimate else "mixed"
    report = dataclasses.replace(report, flops=extrapolate(one.flops, two.flops), seconds=seconds, estimate=source)
    if cfg.model.attention == "splash" and report.seconds:
        rows, length = cfg.train.micro_rows, cfg.data.seq_len
        passes = 3 if cfg.model.remat == "none" else 4  # forward, backward (2x); remat runs the forward again
        attention = 2 * passes * text.num_layers * text.num_heads * text.head_dim * length * rows * length  # causal
        report = dataclasses.replace(report, seconds=report.seconds + attention / (mesh.size * chip.peak_bf16_flops))
    return at_least_model_flops(report)


def at_least_model_flops(report: ProgramReport) -> ProgramReport:
    """``report`` with its time raised to the model FLOPs at the chips' peak where it is below that
    (source ``peak``; no MFU is shown for it)."""
    floor = report.model_flops / (report.chips * report.peak_flops)
    if report.seconds and report.seconds < floor:
        return dataclasses.replace(report, seconds=floor, estimate="peak")
    return report


def _compile_train_step(cfg, arch, mesh, chip: Chip, cost_program: bool = False) -> ProgramReport:
    """The stage's train step, or (``cost_program``) the loop-free copy ``compile_train_step`` prices."""
    from sophia_jax.training import loss as loss_lib
    from sophia_jax.training import step as step_lib
    from sophia_jax.training.optimizer import OptimizerConfig, trainable_filter
    from sophia_jax.training.trainer import model_runtime

    m = cfg.model
    runtime = model_runtime(cfg)
    graphdef, state = abstract_model(arch, runtime, mesh)
    graphdef, params, frozen = _split_abstract(graphdef, state, trainable_filter(cfg.train.trainable))
    o = cfg.optimizer
    step_config = step_lib.StepConfig(
        optimizer=OptimizerConfig(peak_learning_rate=o.peak_learning_rate, end_learning_rate_ratio=o.end_learning_rate_ratio,
                                  warmup_steps=1, total_steps=100, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2,
                                  eps=o.eps, max_grad_norm=o.max_grad_norm),
        loss=loss_lib.LossConfig(normalization=cfg.loss.normalization,
                                 importance_sampling=cfg.loss.importance_sampling, is_clip=cfg.loss.is_clip),
        loss_chunk_tokens=cfg.loss.chunk_tokens, loss_chunk_unroll=cost_program)
    program = step_lib.TrainProgram(graphdef, params, frozen, mesh, step_config)
    rows, length = cfg.train.micro_rows, cfg.data.seq_len
    multimodal = isinstance(arch, InternVLConfig)
    tiles = cfg.data.tiles_per_row if multimodal else 0
    shapes = {k: (1, rows, length) for k in ("input_ids", "targets", "segment_ids", "positions", "source")}
    shapes.update({k: (1, rows, length) for k in ("loss_weights", "behaviour_seq_logprob", "behaviour_token_logprob")})
    dtypes = {k: jnp.int32 for k in ("input_ids", "targets", "segment_ids", "positions", "source")}
    if multimodal:
        size = arch.vision.image_size
        shapes["pixel_values"], dtypes["pixel_values"] = (1, rows, tiles, 3, size, size), jnp.float32
        shapes["tile_mask"], dtypes["tile_mask"] = (1, rows, tiles), jnp.bool_
    batch = {k: _sds(s, dtypes.get(k, jnp.float32), step_lib.batch_sharding(mesh, s)) for k, s in shapes.items()}
    lowered = program.jitted(shapes).lower(program.abstract_state, frozen, batch)
    compiled = lowered.compile(COST_OPTIONS if cost_program else None)
    lm = state["language_model"] if multimodal else state
    text_params = _count(lm)
    vision = _count(state) - text_params  # ViT + projector
    text = arch.text if multimodal else arch
    if not text.tie_word_embeddings:
        text_params -= _count(lm["embed"])
    model_flops = train_model_flops(arch, text_params, vision, rows, length, tiles,
                                    vision_trainable=cfg.train.trainable == "all")
    name = f"train step {rows}x{length} (remat {m.remat}{', scan' if m.scan_layers else ''})"
    return _report(name, compiled, chip, model_flops=model_flops,
                   chips=mesh.size)


def _split_abstract(graphdef, state, trainable):
    """(graphdef, trainable, frozen) of an abstract model, as ``step.split_model`` splits a real one."""
    model = nnx.merge(graphdef, state)
    return nnx.split(model, trainable, ...)


# ------------------------------------------------------------------------------------------------
# Sampler

SAMPLER_ROLES = ("policy", "reasoner")


def abstract_sampler(arch, cfg, mesh):
    """The generate stage's ``Sampler`` (``load_sampler``'s settings from ``cfg``) over an abstract
    model on ``mesh``: no weights, the parameters' shardings from the logical rules."""
    from sophia_jax.sampling.load import sampler_config
    from sophia_jax.sampling.sampler import Sampler

    runtime = RuntimeConfig(dtype=cfg.dtype, param_dtype=cfg.dtype, attention=cfg.attention)
    graphdef, state = abstract_model(arch, runtime, mesh)
    return Sampler(nnx.merge(graphdef, state), sampler_config(cfg.sampler, pad_id=0), mesh=mesh)


def first_prefill_prompts(cfg, role: str, multimodal: bool) -> int:
    """Prompts in a run's first (and widest) prefill: every row is free, each prompt takes
    ``sampling.n`` rows and, for the policy, ``policy.max_tiles + 1`` tiles of the tile budget."""
    prompts = -(-cfg.sampler.batch_size // cfg[role].sampling.n)
    if multimodal:
        prompts = min(prompts, cfg.sampler.tile_budget // (cfg.policy.max_tiles + 1))
    return max(prompts, 1)


def decode_read_bytes(sampler) -> int:
    """Bytes one decode step must read on each chip, the HBM-bandwidth bound's numerator:

    * every decoder weight the chip's rows multiply by -- all of it but its tensor-parallel
      split (rows are split over data x fsdp, so fsdp-sharded weights are gathered to every chip),
      less the token-embedding table when the head is untied (a step looks up one row per sequence);
    * the keys and values of a full pool (``kv_budget`` tokens, the steady state of a long run)
      held by the chip's share of the rows, with the pool's KV heads as sharded.
    """
    lm = sampler.params["language_model"] if sampler.multimodal else sampler.params
    untied = not sampler.text_config.tie_word_embeddings
    weights = 0
    for path, x in jax.tree_util.tree_leaves_with_path(lm):
        if untied and getattr(path[0], "key", None) == "embed":
            continue
        spec, mesh = x.sharding.spec, x.sharding.mesh
        split = math.prod(mesh.shape["tensor"] for entry in spec if entry is not None
                          for axis in (entry if isinstance(entry, tuple) else (entry,)) if axis == "tensor")
        weights += x.size * x.dtype.itemsize // split
    state = sampler.abstract_state()
    layer = state.pool[0]
    per_token = math.prod(layer.sharding.shard_shape(layer.shape)[2:]) * layer.dtype.itemsize * len(state.pool)
    row_shards = state.length.shape[0] // state.length.sharding.shard_shape(state.length.shape)[0]
    return weights + sampler.config.kv_budget * per_token // row_shards


def held_bytes(sampler) -> int:
    """Bytes a sampler holds on each chip between calls: its weights and its KV pool."""
    leaves = jax.tree.leaves(sampler.params) + jax.tree.leaves(sampler.abstract_state().pool)
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)


def compile_sampler(cfg, role: str, arch, mesh, chip: Chip) -> tuple[list[ProgramReport], int]:
    """The sampler's prefill and decode programs (``sampler._prefill`` / ``_decode``, the jitted
    functions every ``Sampler`` runs) for ``role``, with the inputs a run gives them:

    * prefill: the run's first prefill (``first_prefill_prompts``) of prompts of
      ``aot.prompt_tokens[role]`` tokens in their bucket, with the tile budget's tiles for the policy;
    * decode: ``batch_size`` rows, the block table of those prompts plus ``max_new_tokens``, the
      role's sampling mode, the pool of ``kv_budget`` tokens.

    XLA's cost analysis counts one trip of the decode ``while_loop`` (one token for every row)
    with the call's set-up, so the estimate is that of one step: tokens/s = rows / estimate. The
    bandwidth bound (``decode_read_bytes`` / HBM bandwidth) is what no decode step can beat.
    Returns the reports and the role's ``held_bytes`` (what it occupies while the other role runs).
    """
    from sophia_jax.sampling.sampler import (SamplingParams, _decode, _prefill, bucket_for,
                                             sampling_mode)

    sampler = abstract_sampler(arch, cfg, mesh)
    sc, p = sampler.config, cfg[role].sampling
    params = SamplingParams(max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
                            top_k=p.top_k, n=p.n)
    prompt = cfg.aot.prompt_tokens[role]
    state = sampler.abstract_state()
    try:
        bucket = bucket_for(prompt - 1, sc.buckets)
    except ValueError as e:
        raise UserError(f"--config.aot.prompt_tokens.{role}: {e}") from e
    batch = sampler.prefill_layout(bucket, first_prefill_prompts(cfg, role, sampler.multimodal), sampler.multimodal)
    rows, width = sc.batch_size, sampler.table_width(prompt, params.max_new_tokens)
    table = _sds((rows, width), jnp.int32, sampler.sharding((rows, width)))
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    with sharding.use_mesh(mesh):
        prefill = _prefill.lower(sampler.graphdef, sampler.params, state.pool, batch,
                                 cache_dtype=sc.cache_dtype).compile()
        decode = _decode.lower(sampler.graphdef, sampler.params, state, table, scalar, scalar,
                               mode=sampling_mode(params, sampler.text_config.vocab_size), pad_id=sc.pad_id).compile()
    count = batch.tokens.shape[0]
    images = f" +{sc.tile_budget} tiles" if sampler.multimodal else ""
    return [
        _report(f"{role} prefill {count}x{bucket}{images}", prefill, chip, tokens=count * bucket),
        _report(f"{role} decode step, {rows} rows", decode, chip, tokens=rows,
                bandwidth_bound_seconds=decode_read_bytes(sampler) / chip.hbm_bandwidth),
    ], held_bytes(sampler)


# ------------------------------------------------------------------------------------------------
# Command


def _arch(preset: str):
    try:
        return model_presets.model_config(model_presets.get_config(preset))
    except ValueError as e:
        raise UserError(str(e)) from e


def _programs(cfg, mesh, chip):
    """(label, thunk compiling a list of reports) per program group of the config's stage."""
    if "sampler" in cfg:  # the generate stage: the policy's and the reasoner's sampler programs
        return [(f"sampler ({cfg.aot.policy}, {cfg.aot.reasoner})", lambda: _generate_programs(cfg, mesh, chip))]
    return [(f"train step ({cfg.aot.model})", lambda: [compile_train_step(cfg, _arch(cfg.aot.model), mesh, chip)])]


def _generate_programs(cfg, mesh, chip) -> list[ProgramReport]:
    """Both roles' programs. Generate loads both models and keeps them, so each program's total
    counts the other role's weights and KV pool as resident."""
    compiled = {role: compile_sampler(cfg, role, _arch(cfg.aot[role]), mesh, chip) for role in SAMPLER_ROLES}
    (policy, policy_held), (reasoner, reasoner_held) = compiled["policy"], compiled["reasoner"]
    print(f"held while the other model runs (weights + KV pool of {cfg.sampler.kv_budget:,} tokens, per chip): "
          f"policy {policy_held / GIB:.2f} GiB, reasoner {reasoner_held / GIB:.2f} GiB; each total below includes it",
          flush=True)
    return ([dataclasses.replace(r, resident_bytes=reasoner_held) for r in policy]
            + [dataclasses.replace(r, resident_bytes=policy_held) for r in reasoner])


def aot_main(argv=None) -> int:
    from sophia_jax.configs.loading import command_config

    # A stage's config (train, warmup or generate): its aot section names the slice and the models.
    cfg = command_config("aot", __doc__, "train", argv)
    if "aot" not in cfg or ("train" not in cfg and "sampler" not in cfg):
        raise UserError("sophia-jax aot compiles a stage's programs: give a train, warmup or generate config "
                        "(e.g. --config configs/train_internvl3_38b_v5p.py)")
    topology = cfg.aot.topology
    chip = chip_of(topology)
    devices = topology_devices(topology)
    mesh = sharding.make_mesh(sharding.MeshConfig(**cfg.mesh), devices)
    models = ", ".join(f"{k} {cfg.aot[k]}" for k in ("model", *SAMPLER_ROLES) if k in cfg.aot)
    print(f"{models} on {topology}: {len(devices)} chips, mesh {dict(mesh.shape)}, "
          f"HBM {chip.hbm_bytes / GIB:.0f} GiB/chip")
    print(HEADER, flush=True)
    misfits = []
    for label, compile_group in _programs(cfg, mesh, chip):
        try:
            reports = compile_group()
        except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses programs that exceed HBM
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            print(f"{label:<34} does not fit: {str(e).splitlines()[0]}", flush=True)
            misfits.append(label)
            continue
        for report in reports:
            print(report.row(), flush=True)
            if not report.fits:
                misfits.append(report.name)
    if misfits:
        print(f"does not fit in {chip.hbm_bytes / GIB:.0f} GiB HBM: {', '.join(misfits)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(aot_main())
