"""``sophia_jax.aot``: the real train step compiles for a small TPU slice on CPU (needs libtpu)."""

import pytest

from sophia_jax import aot, sharding
from sophia_jax.configs.loading import load
from sophia_jax.errors import UserError

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


def test_aot_exits_nonzero_when_a_program_does_not_fit(capsys):
    # The XLA attention's f32 scores of 4 rows x 32K x 32K tokens alone are 16 GiB per head.
    code = aot.aot_main(["--config", "train:runlocal", "--config.aot.topology=v5e:2x2", "--config.aot.model=tiny",
                         "--config.data.seq_len=32768", "--config.train.micro_rows=4"])
    assert code == 1
    assert "does not fit" in capsys.readouterr().err


def test_unknown_topology_is_a_user_error():
    with pytest.raises(UserError, match="v9x"):
        aot.chip_of("v9x:2x2")
