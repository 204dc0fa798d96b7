"""``sophia-jax forward``: builds a model preset, runs one jitted forward pass, prints shapes and times.

The default is the tiny preset on whatever devices JAX sees, so it runs on a laptop CPU. The
batch mixes an image of several tiles, a one-tile image and a text-only row, padded to a fixed
tile budget, which exercises every part of the InternVL forward.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sophia_jax import sharding
from sophia_jax.configs import models


def parse_args(argv):
    p = argparse.ArgumentParser(prog="sophia-jax forward", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", help=f"model preset, one of {sorted(models.PRESETS)}")
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1 = remaining devices)")
    p.add_argument("--seq", type=int, default=64, help="tokens per row")
    p.add_argument("--dtype", default="float32", help="compute dtype (float32 or bfloat16)")
    p.add_argument("--attention", default="xla", choices=["xla", "fused"])
    p.add_argument("--steps", type=int, default=3, help="timed forward passes after compilation")
    return p.parse_args(argv)


def demo_batch(cfg, seq: int, tile_budget: int = 4):
    """input_ids [3, seq] with a 2-tile image, a 1-tile image and a text-only row."""
    tokens = cfg.tokens_per_tile
    if seq < 3 * tokens + 4:
        raise SystemExit(f"--seq must be at least {3 * tokens + 4} for this preset")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, min(cfg.text.vocab_size, cfg.image_token_id), size=(3, seq)).astype(np.int32)
    ids[0, 1 : 1 + 2 * tokens] = cfg.image_token_id
    ids[1, 1 : 1 + tokens] = cfg.image_token_id
    mask = np.ones((3, seq), np.int32)
    mask[1, seq - 5 :] = 0  # right padding
    size = cfg.vision.image_size
    pixels = np.zeros((tile_budget, 3, size, size), np.float32)
    pixels[:3] = rng.standard_normal((3, 3, size, size))
    tile_mask = np.arange(tile_budget) < 3
    return ids, mask, pixels, tile_mask


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = models.get_config(args.preset)
    if cfg.kind != "internvl":
        raise SystemExit(f"forward needs an InternVL preset, {args.preset!r} is a text-only model")
    cfg.runtime.dtype = args.dtype
    cfg.runtime.attention = args.attention
    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    mesh = sharding.make_mesh(sharding.MeshConfig(data, fsdp, tensor))
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, mesh {dict(mesh.shape)}")

    start = time.perf_counter()
    model = models.build_model(cfg, mesh)
    arch = models.model_config(cfg)
    n_params = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Param))
    print(f"model {args.preset}: {n_params / 1e6:.2f}M parameters, built in {time.perf_counter() - start:.2f}s")

    ids, mask, pixels, tile_mask = (jnp.asarray(x) for x in demo_batch(arch, args.seq))
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, pixels, mask, tile_mask):
        with sharding.use_mesh(mesh):
            return nnx.merge(graphdef, state)(ids, pixels, mask, tile_mask=tile_mask)

    start = time.perf_counter()
    logits = forward(state, ids, pixels, mask, tile_mask).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        forward(state, ids, pixels, mask, tile_mask).block_until_ready()
        times.append(time.perf_counter() - start)
    print(f"input_ids {tuple(ids.shape)}  pixel_values {tuple(pixels.shape)} ({int(tile_mask.sum())} real tiles)")
    print(f"logits {tuple(logits.shape)} {logits.dtype}, finite: {bool(jnp.isfinite(logits).all())}")
    print(f"first call (compile + run) {compile_s:.2f}s, then {1e3 * np.median(times):.1f} ms per forward")
    return 0
