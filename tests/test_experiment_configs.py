"""Every experiment config in configs/ loads through the normal loader and fits its slice."""

import glob
import math
import os

import pytest

from sophia_jax.configs.loading import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not os.path.basename(f).startswith("_"))


def _chips(topology: str) -> int:
    """Chips of a named TPU topology: v6e:2x4 -> 8."""
    return math.prod(int(d) for d in topology.split(":")[1].split("x"))


def test_every_stage_model_slice_is_there():
    names = {os.path.basename(f) for f in FILES}
    for model in ("internvl2_5_8b", "internvl2_5_38b", "internvl3_8b", "internvl3_38b"):
        for slice_name in ("v5p", "v6e"):
            for stage in ("generate", "train", "warmup", "eval"):
                assert f"{stage}_{model}_{slice_name}.py" in names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_config_loads_and_mesh_fits_one_host(path):
    cfg = load(path)
    if os.path.basename(path).startswith("generate_"):
        m, host = cfg.mesh, cfg.aot.topology  # one host's chips: v5p:2x2x1, v6e:2x2 or v6e:2x4 (v6e-8)
        chips = _chips(host)
        assert m.data * m.fsdp * m.tensor == chips and chips in (4, 8), "generate samples on one host's chips"
        assert cfg.sampler.tile_budget >= cfg.policy.max_tiles + 1
        assert cfg.distributed.mode == "auto"
        # `sophia-jax aot` compiles the sampler for one host's 4 chips, this policy and the QwQ-32B-size reasoner.
        assert host in ("v5p:2x2x1", "v6e:2x2", "v6e:2x4") and cfg.aot.policy in os.path.basename(path)
        assert cfg.aot.reasoner == "qwq_32b"
    elif os.path.basename(path).startswith("eval_"):  # the policy alone on one host's 4 chips, all tensor
        m = cfg.mesh
        assert (m.data, m.fsdp, m.tensor) == (1, 1, 4) and cfg.attention == "fused"
        assert cfg.images.total_tiles <= cfg.sampler.tile_budget and cfg.images.max_tiles + 1 <= cfg.sampler.tile_budget
        # One sample of the longest kind must fit the pool (the sampler refuses to start otherwise).
        assert cfg.sampler.kv_budget >= max(cfg.sampler.buckets) + cfg.sampling.max_new_tokens
        assert cfg.distributed.mode == "auto" and cfg.model == ""  # the checkpoint is the user's flag
    else:  # train / warmup: FSDP over the whole slice, a row per chip, the paper's global batch
        m, chips = cfg.mesh, _chips(cfg.aot.topology)
        assert m.data * m.fsdp * m.tensor == chips and cfg.train.micro_rows % (m.data * m.fsdp) == 0
        # The paper's step: 512 rows of 32,768 tokens (38B on v6e: 2,048 rows of 8,192, the same tokens).
        assert cfg.train.global_rows * cfg.data.seq_len == 512 * 32768
        assert cfg.train.global_rows % cfg.train.micro_rows == 0
        assert cfg.data.seq_len == (8192 if "38b_v6e" in path else 32768)
        assert cfg.model.scan_layers and cfg.model.attention == "splash"
        assert cfg.aot.topology.split(":")[0] in ("v5p", "v6e") and cfg.aot.model in os.path.basename(path)
        assert cfg.distributed.mode == "auto"
