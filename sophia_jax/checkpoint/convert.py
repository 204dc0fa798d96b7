"""``sophia-jax convert``: a Hugging Face checkpoint directory -> our checkpoint directory.

Reads the original OpenGVLab InternVL layout (Qwen2 or InternLM2 language model), the
transformers-native InternVL layout (legacy or ``model.*`` prefixes) and text-only Qwen2 / Qwen3 /
Llama causal LMs. Tensors stream one at a time from the safetensors shards into Orbax, so host
memory stays near one write group (``store.GROUP_BYTES``) above the process baseline, whatever
the model size. The tokenizer, chat template and configs are copied next to the parameters, made
loadable without the checkpoint's own code (``tokenizer_assets``: ``auto_map`` dropped, an
InternLM2 sentencepiece tokenizer written as ``tokenizer.json``).

    sophia-jax convert --config.hf_dir=/ckpt/InternVL3-8B --config.out=/ckpt/internvl3-8b-orbax

Settings: the ``convert`` config (``sophia-jax convert --show-config``).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from sophia_jax.checkpoint.errors import CheckpointError
from sophia_jax.configs.loading import command_config, require
from sophia_jax.checkpoint.hf_source import iter_params, open_hf
from sophia_jax.checkpoint.progress import Progress
from sophia_jax.checkpoint.store import GROUP_BYTES, CheckpointWriter, abstract_model, param_shapes
from sophia_jax.checkpoint.tokenizer_assets import plan_assets
from sophia_jax.models.config import RuntimeConfig

DTYPES = ("bfloat16", "float32")
MAX_GROUPS = 64  # Orbax partial saves per conversion; finalising merges their metadata


def convert_hf(
    hf_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "bfloat16",
    overwrite: bool = False,
    progress: bool = True,
    group_bytes: int | None = None,
) -> str:
    """Converts ``hf_dir`` into a checkpoint directory at ``out``; returns its absolute path.

    Everything is checked (config, every tensor name and shape, file integrity) before the
    first tensor is read. Raises ``CheckpointError`` naming the file and tensor at fault.
    ``group_bytes`` (default: 256 MB, or 1/64 of the model when larger, which bounds the number
    of Orbax partial saves) is how much is buffered between writes.
    """
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r}: choose one of {DTYPES}")
    source = open_hf(hf_dir)
    dtype = np.dtype(dtype)
    runtime = RuntimeConfig(dtype=dtype.name, param_dtype=dtype.name)
    shapes = param_shapes(abstract_model(source.kind, source.config, runtime))
    params = iter_params(source, shapes, dtype)  # checks the plan before anything is written
    assets = plan_assets(source.directory)  # converts the tokenizer (or fails) before any weight moves
    total = sum(math.prod(shape) for shape in shapes.values()) * dtype.itemsize
    report = Progress("convert", len(shapes), total, enabled=progress)
    group_bytes = group_bytes or max(GROUP_BYTES, total // MAX_GROUPS)
    with CheckpointWriter(out, overwrite=overwrite, group_bytes=group_bytes) as writer:
        for name, value in params:
            writer.add(name, value)
            report.update(value.nbytes)
        writer.copy_assets(assets)
        path = writer.commit(source.kind, source.config, dtype,
                             source={"directory": os.path.abspath(source.directory), "layout": source.layout})
    report.done()
    return path


def use_host_cpu() -> None:
    """Keeps JAX off an accelerator that a training job may hold (unless JAX_PLATFORMS says otherwise).

    Conversion and export need no accelerator.
    """
    import jax

    if "JAX_PLATFORMS" not in os.environ:
        try:
            jax.config.update("jax_platforms", "cpu")
        except Exception:  # backends already initialised by the caller: use what is there
            pass


def main(argv: list[str] | None = None) -> int:
    cfg = command_config("convert", __doc__, "convert", argv)
    require(cfg, "hf_dir", "out")
    use_host_cpu()
    print(convert_hf(cfg.hf_dir, cfg.out, dtype=cfg.dtype, overwrite=cfg.overwrite, progress=cfg.progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
