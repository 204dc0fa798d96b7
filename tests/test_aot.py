"""``sophia_jax.aot``: the real train step and the sampler's programs compile for a small TPU
slice on CPU (needs libtpu), and the report's figures follow from the compiled programs."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sophia_jax import aot, sharding
from sophia_jax.configs.loading import load
from sophia_jax.errors import UserError
from sophia_jax.models import CausalLM, RuntimeConfig

TINY = ["--config.data.seq_len=128", "--config.train.micro_rows=4", "--config.data.tiles_per_row=2",
        "--config.loss.chunk_tokens=64"]
TPU_DEFAULTS = ["--config.model.attention=splash", "--config.model.scan_layers=True", "--config.model.remat=full"]


def test_train_step_compiles_for_a_tpu_slice():
    """With the TPU configs' model settings: the Pallas splash kernel, layers under scan, remat."""
    devices = aot.topology_devices("v5e:2x2")
    assert len(devices) == 4 and devices[0].platform == "tpu"
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 2, 2), devices)
    cfg, arch, chip = load("train:runlocal", TINY + TPU_DEFAULTS), aot._arch("tiny"), aot.CHIPS["v5e"]
    train = aot.compile_train_step(cfg, arch, mesh, chip)
    assert "scan" in train.name
    assert train.fits and 0 < train.argument_bytes < train.total_bytes < chip.hbm_bytes
    assert train.flops > 0 and train.seconds and 0 < train.mfu < 1
    # XLA's per-device count covers at least the model FLOPs' share of one chip (it adds remat, loss, optimizer).
    assert train.flops >= train.model_flops / mesh.size * 0.5
    assert "MFU" in train.row()


def test_cost_programs_have_no_loops_and_extrapolate_to_the_unrolled_step():
    """XLA's cost analysis counts a loop body once: the scanned step (layers and loss chunks in
    loops) shows far fewer FLOPs than the same step written out. The report's figure, extrapolated
    from 1- and 2-layer loop-free copies, matches the loop-free copy of the whole model."""
    devices = aot.topology_devices("v5p:2x2x1")
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 4, 1), devices)
    cfg, arch, chip = load("train:runlocal", TINY + TPU_DEFAULTS[1:]), aot._arch("tiny"), aot.CHIPS["v5p"]
    captured = []
    report = aot._report

    def spy(name, compiled, chip, **extra):
        captured.append(compiled.as_text())
        return report(name, compiled, chip, **extra)

    unrolled = cfg.copy_and_resolve_references()
    unrolled.model.scan_layers = False
    aot._report = spy
    try:
        whole = aot._compile_train_step(unrolled, arch, mesh, chip, cost_program=True)
        scanned = aot._compile_train_step(cfg, arch, mesh, chip)
    finally:
        aot._report = report
    assert " while(" not in captured[0] and "call-start(" not in captured[0] and " while(" in captured[1]
    assert whole.estimate == "XLA" and whole.seconds > 0
    assert scanned.flops < 0.8 * whole.flops
    extrapolated = aot.compile_train_step(cfg, arch, mesh, chip)
    assert extrapolated.flops == pytest.approx(whole.flops, rel=0.02)
    assert extrapolated.seconds == pytest.approx(whole.seconds, rel=0.1)


def test_cost_false_compiles_only_the_step_for_its_fit():
    devices = aot.topology_devices("v5e:2x2")
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 4, 1), devices)
    cfg = load("train:runlocal", TINY + ["--config.aot.cost=False"])
    report = aot.compile_train_step(cfg, aot._arch("tiny"), mesh, aot.CHIPS["v5e"])
    assert report.fits and report.total_bytes > 0 and report.seconds is None and report.mfu is None
    assert "n/a" in report.row() and "MFU" not in report.row()


def test_aot_exits_nonzero_when_a_program_does_not_fit(capsys):
    # The XLA attention's f32 scores of 4 rows x 32K x 32K tokens alone are 16 GiB per head.
    code = aot.aot_main(["--config", "train:runlocal", "--config.aot.topology=v5e:2x2", "--config.aot.model=tiny",
                         "--config.data.seq_len=32768", "--config.train.micro_rows=4"])
    assert code == 1
    assert "does not fit" in capsys.readouterr().err


def test_unknown_topology_is_a_user_error():
    with pytest.raises(UserError, match="v9x"):
        aot.chip_of("v9x:2x2")


def test_roofline_where_xla_prices_sparsecore_calls_negative():
    """On v5p XLA offloads the loss's scatter-adds to the SparseCores and its cost model prices
    each such call at -1 s; the report falls back to the roofline of the program's own counts."""
    devices = aot.topology_devices("v5p:2x2x1")
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 4, 1), devices)
    cfg, chip = load("train:runlocal", TINY), aot.CHIPS["v5p"]
    captured = {}

    def spy(name, compiled, chip, **extra):
        captured.update(cost=compiled.cost_analysis(), hlo=compiled.as_text())
        return report(name, compiled, chip, **extra)

    report, aot._report = aot._report, spy
    try:
        train = aot._compile_train_step(cfg, aot._arch("tiny"), mesh, chip)
    finally:
        aot._report = report
    cost, hlo = captured["cost"], captured["hlo"]
    offloaded = hlo.count('call-start(')
    assert offloaded and 'async_execution_thread="sparsecore"' in hlo
    assert cost["optimal_seconds"] == pytest.approx(-offloaded, abs=0.01)
    roofline = (max(cost["flops"] / chip.peak_bf16_flops, cost["bytes accessed"] / chip.hbm_bandwidth)
                + aot.collective_bytes(hlo) / chip.ici_bandwidth)
    assert train.estimate == "roofline" and train.seconds == pytest.approx(roofline) and 0 < train.mfu < 1
    assert aot.collective_bytes(hlo) > 0 and "roofline" in train.row()


def test_collective_bytes_counts_a_known_all_gather():
    devices = aot.topology_devices("v5p:2x2x1")
    mesh = jax.sharding.Mesh(np.asarray(devices), ("x",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    x = jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=split)
    hlo = jax.jit(lambda x: x * 2, out_shardings=whole).lower(x).compile().as_text()
    assert aot.collective_bytes(hlo) == 64 * 256 * 4  # the gathered array, once


GENERATE = ["--config.aot.topology=v5p:2x2x1", "--config.mesh.tensor=2", "--config.attention=fused",
            "--config.aot.policy=tiny", "--config.aot.reasoner=tiny_qwen3",
            "--config.aot.prompt_tokens.policy=100", "--config.aot.prompt_tokens.reasoner=60"]


def test_sampler_programs_compile_for_a_tpu_slice():
    """The generate stage's prefill and decode (the sampler's own jitted programs) for one host's
    4 chips: rows over fsdp 2, heads over tensor 2; the decode's bandwidth bound by hand."""
    cfg = load("generate:runlocal", GENERATE)
    devices = aot.topology_devices(cfg.aot.topology)
    mesh, chip = sharding.make_mesh(sharding.MeshConfig(**cfg.mesh), devices), aot.CHIPS["v5p"]
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 2}
    (prefill, decode), held = aot.compile_sampler(cfg, "reasoner", aot._arch("tiny_qwen3"), mesh, chip)
    # 8 rows of n = 2 samples: the first prefill takes 4 prompts; 59 tokens go in the 128 bucket.
    assert prefill.name == "reasoner prefill 4x128" and prefill.tokens == 4 * 128
    text = aot._arch("tiny_qwen3")
    model = CausalLM(text, RuntimeConfig(dtype="float32", param_dtype="float32"), rngs=nnx.Rngs(0))
    leaves = [x for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
              if path[0].key != "embed"]  # untied: a step reads one embedding row per sequence
    # Matrices are split over the 2 tensor shards, vectors (norms) are not; float32 weights.
    weights = sum(x.size // 2 if x.ndim > 1 else x.size for x in leaves) * 4
    # A full pool: 16,384 tokens x 2 layers x (k, v) x 1 of 2 KV heads x 32 dims x 4 bytes, over 2 row shards.
    kv = 16384 * text.num_layers * 2 * (text.num_kv_heads // 2) * text.head_dim * 4 // 2
    assert decode.bandwidth_bound_seconds == pytest.approx((weights + kv) / chip.hbm_bandwidth, rel=1e-12)
    # Held between calls: the pool, its KV heads over tensor (not split by rows), and the weights,
    # split over tensor and (matrices) fsdp as well.
    pool = 16384 * text.num_layers * 2 * (text.num_kv_heads // 2) * text.head_dim * 4
    every_weight = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) * 4
    assert every_weight / 4 <= held - pool <= every_weight / 2
    assert decode.tokens == 8 and decode.seconds > decode.bandwidth_bound_seconds > 0
    # XLA counts one trip of the decode loop: at least one token per row through the matrices
    # (4 rows per chip, the matmuls halved by tensor), far from the call's 16.
    one_step = 2 * sum(x.size for x in leaves if x.ndim > 1) * 8 / mesh.size
    assert one_step <= decode.flops < 4 * one_step
    for report in (prefill, decode):
        assert report.fits and report.flops > 0 and report.seconds > 0 and "tok/s" in report.row()
    assert "HBM-bw bound" in decode.row()


def test_aot_dispatches_a_generate_config_to_the_sampler(capsys):
    assert aot.aot_main(["--config", "generate:runlocal", *GENERATE]) == 0
    out = capsys.readouterr().out
    for role in ("policy", "reasoner"):
        assert f"{role} decode step, 8 rows" in out and f"{role} prefill" in out
    # Generate keeps both models loaded: each role's totals count the other's weights and pool.
    held = out.split("held while")[1].splitlines()[0]
    assert re.search(r"policy [\d.]+ GiB, reasoner [\d.]+ GiB", held)
    assert "policy prefill 1x128 +16 tiles" in out  # 13-tile prompts: one fits the 16-tile budget


def test_a_step_estimated_below_its_model_flops_at_peak_is_raised_and_shows_no_mfu():
    chip = aot.CHIPS["v5p"]
    report = aot.ProgramReport(name="train step", argument_bytes=0, output_bytes=0, alias_bytes=0, temp_bytes=0,
                               code_bytes=0, flops=1e12, seconds=1.0, hbm_bytes=chip.hbm_bytes, estimate="roofline",
                               model_flops=8 * chip.peak_bf16_flops, chips=4, peak_flops=chip.peak_bf16_flops)
    assert report.mfu == pytest.approx(2.0)  # what XLA's undercount would claim
    raised = aot.at_least_model_flops(report)
    assert raised.seconds == pytest.approx(2.0) and raised.estimate == "peak" and raised.mfu is None
    assert "MFU n/a" in raised.row()
    slower = dataclasses.replace(report, seconds=4.0)
    assert aot.at_least_model_flops(slower) == slower and slower.mfu == pytest.approx(0.5)
