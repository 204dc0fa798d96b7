"""``sophia-jax forward``: builds a model preset, runs one jitted forward pass, prints shapes and times.

Settings are the ``forward`` config (``sophia_jax/configs/forward.py``; ``--show-config`` lists
them). The default is the tiny preset on whatever devices JAX sees, so it runs on a laptop CPU. The
batch mixes an image of several tiles, a one-tile image and a text-only row, padded to a fixed
tile budget, which exercises every part of the InternVL forward.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sophia_jax import sharding
from sophia_jax.configs import models
from sophia_jax.configs.loading import ConfigFileError, command_config


def demo_batch(cfg, seq: int, tile_budget: int = 4):
    """input_ids [3, seq] with a 2-tile image, a 1-tile image and a text-only row."""
    tokens = cfg.tokens_per_tile
    if seq < 3 * tokens + 4:
        raise ConfigFileError(f"config field 'seq' must be at least {3 * tokens + 4} for this preset, got {seq}")
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


def check(cfg) -> None:
    """Names the config field of a value the forward pass cannot take."""
    if cfg.preset not in models.PRESETS:
        raise ConfigFileError(f"config field 'preset': unknown model preset {cfg.preset!r}; known: {sorted(models.PRESETS)}")
    for field, allowed in (("dtype", ("float32", "bfloat16")), ("attention", ("xla", "fused"))):
        if cfg[field] not in allowed:
            raise ConfigFileError(f"config field {field!r} is {cfg[field]!r}; choose one of {allowed}")
    if cfg.steps < 1:
        raise ConfigFileError(f"config field 'steps' must be >= 1, got {cfg.steps}")
    try:
        sharding.MeshConfig(**cfg.mesh).shape(jax.device_count())
    except ValueError as e:
        raise ConfigFileError(f"config field 'mesh': {e}") from None


def run(args) -> None:
    """Builds ``args.preset`` on ``args.mesh`` and prints shapes and timings of ``args.steps`` passes."""
    check(args)
    cfg = models.get_config(args.preset)
    if cfg.kind != "internvl":
        raise ConfigFileError(f"config field 'preset': forward needs an InternVL preset, {args.preset!r} is text-only")
    cfg.runtime.dtype = args.dtype
    cfg.runtime.attention = args.attention
    mesh = sharding.make_mesh(sharding.MeshConfig(**args.mesh))
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


def main(argv=None) -> int:
    run(command_config("forward", __doc__, "forward", argv))
    return 0
