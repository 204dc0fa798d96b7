"""``sophia-jax aot``: the real train step compiled for a TPU slice you do not have.

    sophia-jax aot --config configs/train_internvl3_38b_v5p.py
    sophia-jax aot --config train --config.aot.topology=v5p:4x4x4 --config.aot.model=internvl3_38b \\
        --config.data.seq_len=8192 --config.train.micro_rows=64

With libtpu installed (the ``tpu`` extra), ``jax.experimental.topologies`` describes the devices
of a named slice (``v5p:4x4x4``) on any host, and ``jit(...).lower(...).compile()`` compiles for
them. The model is built abstractly (``nnx.eval_shape``: no weights), every parameter gets its
sharding from the logical rules, and the jitted train step the stage runs
(``training.step.TrainProgram.jitted``: optimizer, chunked loss, one micro-batch) is compiled with
the config's model settings (scan over layers, remat, splash attention). Printed per chip:
argument / output / temp bytes against HBM, FLOPs, XLA's estimated time (``optimal_seconds``) and
the projected MFU; see ``compile_train_step`` for what XLA's cost analysis cannot see and how the
report makes up for it. Exits 1 when the step does not fit. The sampler's programs are not
compiled here yet.
"""

from __future__ import annotations

import dataclasses
import math
import os
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


CHIPS = {  # Cloud TPU published figures
    "v5p": Chip(95 * GIB, 459e12, 2.765e12),
    "v6e": Chip(32 * GIB, 918e12, 1.64e12),
    "v5e": Chip(16 * GIB, 197e12, 0.819e12),
    "v4": Chip(32 * GIB, 275e12, 1.2e12),
}


def chip_of(topology: str) -> Chip:
    kind = topology.split(":")[0].lower()
    kind = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}.get(kind, kind)
    if kind not in CHIPS:
        raise UserError(f"--topology {topology!r}: unknown TPU generation {kind!r}; known: {sorted(CHIPS)}")
    return CHIPS[kind]


def topology_devices(topology: str) -> list:
    """Devices of a named TPU slice such as ``v5p:2x2x2`` (needs libtpu)."""
    from jax.experimental import topologies

    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # silence libtpu's multi-host probe
    # Compiling touches no chip, so several compiling processes may share this host's libtpu.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as e:  # noqa: BLE001 - libtpu raises plain RuntimeErrors for bad names / no libtpu
        raise UserError(f"--topology {topology!r}: cannot describe this TPU slice ({e}); is libtpu installed "
                        f"(pip install -e '.[tpu]')?") from e
    return list(desc.devices)


@dataclasses.dataclass(frozen=True)
class ProgramReport:
    name: str
    argument_bytes: int  # per device
    output_bytes: int
    alias_bytes: int  # outputs that reuse donated argument buffers
    temp_bytes: int
    code_bytes: int
    flops: float  # per device, XLA's count
    seconds: float | None  # XLA's estimated time (TPU cost analyses only)
    hbm_bytes: int
    model_flops: float | None = None  # whole step, all chips (train)
    chips: int = 1
    peak_flops: float = 0.0
    tokens: int | None = None  # decode: tokens one step emits (rows)
    bandwidth_bound_seconds: float | None = None  # decode: bytes read per chip / HBM bandwidth

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    @property
    def mfu(self) -> float | None:
        if self.model_flops is None or not self.seconds:
            return None
        return self.model_flops / (self.chips * self.peak_flops * self.seconds)

    def row(self) -> str:
        g = lambda b: f"{b / GIB:7.2f}"  # noqa: E731
        est = f"{self.seconds * 1e3:9.2f} ms" if self.seconds else "      n/a"
        extra = ""
        if self.mfu is not None:
            extra = f"MFU {100 * self.mfu:5.1f}%"
        elif self.tokens and self.seconds:
            extra = f"{self.tokens / self.seconds:,.0f} tok/s"
            if self.bandwidth_bound_seconds:
                extra += f" ({100 * self.bandwidth_bound_seconds / self.seconds:.0f}% of HBM-bw bound)"
        return (f"{self.name:<34} {g(self.argument_bytes)} {g(self.output_bytes)} {g(self.temp_bytes)} "
                f"{g(self.total_bytes)} / {self.hbm_bytes / GIB:.0f} {'yes' if self.fits else 'NO ':>4} "
                f"{self.flops / 1e12:9.2f} {est}  {extra}")


HEADER = (f"{'program (per device, GiB)':<34} {'args':>7} {'out':>7} {'temp':>7} {'total':>7} / HBM  fits "
          f"{'TFLOP':>9} {'XLA est.':>12}  projected")


def _report(name, compiled, chip: Chip, **extra) -> ProgramReport:
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = cost or {}
    seconds = cost.get("optimal_seconds")
    return ProgramReport(
        name=name, argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes), flops=float(cost.get("flops", 0.0)),
        seconds=float(seconds) if seconds and seconds > 0 else None, hbm_bytes=chip.hbm_bytes,
        peak_flops=chip.peak_bf16_flops, **extra)


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
    """Model FLOPs of one micro-batch: 6 N T for the decoder, causal attention, and the ViT
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


def compile_train_step(cfg, arch, mesh, chip: Chip) -> ProgramReport:
    """The train step's memory from the program the stage runs; its FLOPs and XLA time too, except
    where XLA's cost analysis cannot see them:

    * with ``scan_layers`` XLA counts the scanned layer once, so FLOPs and time come from the same
      step compiled unrolled with 1 and 2 decoder layers, extrapolated linearly to all of them;
    * a Pallas kernel (``attention = splash``) is opaque to it, so the causal attention FLOPs are
      added to the time at the chip's peak rate (an optimistic bound: the MFU shown is an upper one).
    """
    report = _compile_train_step(cfg, arch, mesh, chip)
    text = arch.text if isinstance(arch, InternVLConfig) else arch
    if cfg.model.scan_layers:
        unrolled = cfg.copy_and_resolve_references()
        unrolled.model.scan_layers = False
        one, two = (_compile_train_step(unrolled, _with_text_layers(arch, n), mesh, chip) for n in (1, 2))
        extrapolate = lambda a, b: a + (text.num_layers - 1) * (b - a)  # noqa: E731
        seconds = extrapolate(one.seconds, two.seconds) if one.seconds and two.seconds else None
        report = dataclasses.replace(report, flops=extrapolate(one.flops, two.flops), seconds=seconds)
    if cfg.model.attention == "splash" and report.seconds:
        rows, length = cfg.train.micro_rows, cfg.data.seq_len
        attention = 6 * text.num_layers * text.num_heads * text.head_dim * length * rows * length  # causal, fwd+bwd
        report = dataclasses.replace(report, seconds=report.seconds + attention / (mesh.size * chip.peak_bf16_flops))
    return report


def _compile_train_step(cfg, arch, mesh, chip: Chip) -> ProgramReport:
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
        loss_chunk_tokens=cfg.loss.chunk_tokens)
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
    compiled = program.jitted(shapes).lower(program.abstract_state, frozen, batch).compile()
    text_params = _count(state["language_model"]) if multimodal else _count(state)
    vision = _count(state) - text_params  # ViT + projector
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


# ------------------------------------------------------------------------------------------------
# Command


def _arch(preset: str):
    try:
        return model_presets.model_config(model_presets.get_config(preset))
    except ValueError as e:
        raise UserError(str(e)) from e




def aot_main(argv=None) -> int:
    from sophia_jax.configs.loading import command_config

    cfg = command_config("aot", __doc__, "train", argv)  # a training stage's config: its aot section names the slice
    if "aot" not in cfg or "train" not in cfg:
        raise UserError("sophia-jax aot compiles a training stage's step: give a train or warmup config "
                        "(e.g. --config configs/train_internvl3_38b_v5p.py)")
    topology = cfg.aot.topology
    chip = chip_of(topology)
    devices = topology_devices(topology)
    mesh = sharding.make_mesh(sharding.MeshConfig(**cfg.mesh), devices)
    arch = _arch(cfg.aot.model)
    print(f"{cfg.aot.model} on {topology}: {len(devices)} chips, mesh {dict(mesh.shape)}, "
          f"HBM {chip.hbm_bytes / GIB:.0f} GiB/chip")
    print(HEADER, flush=True)
    misfits = []
    try:
        report = compile_train_step(cfg, arch, mesh, chip)
    except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses programs that exceed HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"{'train step':<34} does not fit: {str(e).splitlines()[0]}", flush=True)
        misfits.append("train step")
    else:
        print(report.row(), flush=True)
        if not report.fits:
            misfits.append(report.name)
    if misfits:
        print(f"does not fit in {chip.hbm_bytes / GIB:.0f} GiB HBM: {', '.join(misfits)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(aot_main())
