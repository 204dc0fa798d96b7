"""Our checkpoint directory: Orbax parameters plus everything a later command needs.

Layout of a checkpoint directory::

    sophia_checkpoint.json   format version, model kind, our model config, parameter dtype
    params/                  Orbax checkpoint of {module: {...: array}} by NNX parameter path
    config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja, ...
                             copied verbatim from the Hugging Face source, when there was one

A directory is written under a hidden temporary sibling and renamed into place at the end, so a
failed or killed write never leaves something that looks like a checkpoint. ``load`` restores
straight into arrays sharded on a mesh: Orbax reads, on each host, only the slices its devices
own. Parameters are stored uncompressed (bf16 weights barely compress and zstd would dominate
conversion time) in chunks of at most ``CHUNK_BYTES``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Iterable, Mapping

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
from flax import nnx
from jax.experimental import multihost_utils

from sophia_jax import sharding
from sophia_jax.checkpoint.errors import CheckpointError
from sophia_jax.checkpoint.hf_source import iter_params, open_hf
from sophia_jax.checkpoint.tokenizer_assets import Assets, plan_assets
from sophia_jax.checkpoint.params import flat_params
from sophia_jax.models import config as model_config
from sophia_jax.models.config import InternVLConfig, RuntimeConfig, TextConfig
from sophia_jax.models.decoder import CausalLM, set_scan_layers
from sophia_jax.models.internvl import InternVL

try:  # Orbax's abstract numpy leaf (not exported publicly); without it we restore via jax
    from orbax.checkpoint.experimental.v1._src.serialization.numpy_leaf_handler import (
        NumpyShapeDtype as _NumpyShapeDtype,
    )
except ImportError:  # pragma: no cover
    _NumpyShapeDtype = None

FORMAT, VERSION = "sophia_jax.checkpoint", 1
META_FILE, PARAMS_DIR = "sophia_checkpoint.json", "params"
GROUP_BYTES = 256 << 20  # tensors buffered per Orbax partial save while streaming a conversion
CHUNK_BYTES = 64 << 20  # largest stored chunk: the unit a host reads when restoring its slices


# ------------------------------------------------------------------------------------------------
# Models and their parameter trees


def kind_of(model: nnx.Module) -> str:
    if isinstance(model, InternVL):
        return "internvl"
    if isinstance(model, CausalLM):
        return "causal_lm"
    raise CheckpointError(f"cannot checkpoint a {type(model).__name__}; expected InternVL or CausalLM")


def abstract_model(kind: str, config: InternVLConfig | TextConfig, runtime: RuntimeConfig) -> nnx.Module:
    """The model's structure with ShapeDtypeStruct parameters; nothing is initialised."""
    cls = InternVL if kind == "internvl" else CausalLM
    model = nnx.eval_shape(lambda: cls(config, runtime, rngs=nnx.Rngs(0)))
    _, _, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise CheckpointError(f"{cls.__name__} holds non-parameter state, which checkpoints do not cover")
    return model


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    return {path: tuple(var.get_value().shape) for path, var in flat_params(model).items()}


def param_shardings(model: nnx.Module, mesh: jax.sharding.Mesh | None) -> dict[str, jax.sharding.Sharding]:
    """Target sharding per parameter path: by logical axes on ``mesh``, else the first device."""
    if mesh is None:
        device = jax.local_devices()[0]
        return {path: jax.sharding.SingleDeviceSharding(device) for path in flat_params(model)}
    _, state = nnx.split(model, nnx.Param)
    specs = sharding.state_shardings(state, mesh)
    return {".".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(specs)}


def _nest(flat: Mapping[str, object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _fill(model: nnx.Module, values: Iterable[tuple[str, jax.Array]], source: str) -> nnx.Module:
    params = flat_params(model)
    seen = set()
    for path, value in values:
        if path not in params:
            raise CheckpointError(f"{source}: parameter {path!r} is not part of the model")
        params[path].set_value(value)
        seen.add(path)
    missing = sorted(set(params) - seen)
    if missing:
        raise CheckpointError(f"{source}: missing parameter {missing[0]!r} ({len(missing)} in all)")
    return model


def _context(partial_load: bool = False) -> ocp.Context:
    ctx = ocp.Context()
    ctx.array.saving.use_compression = False
    ctx.array.saving.storage_options.chunk_byte_size = CHUNK_BYTES
    ctx.pytree.loading.partial_load = partial_load
    return ctx


def release_memory() -> None:
    """Hands freed heap back to the OS (glibc only; a no-op elsewhere).

    TensorStore's writer threads free their buffers into per-thread malloc arenas, which glibc
    keeps; without this, resident memory creeps up by a few hundred MB per write group.
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def _sync(tag: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"sophia_jax.checkpoint.{tag}")


# ------------------------------------------------------------------------------------------------
# Writing


class CheckpointWriter:
    """Builds a checkpoint directory in a temporary sibling; ``commit`` renames it into place.

    Use as a context manager: an exception removes the temporary directory. Parameters come
    either streamed as numpy arrays (``add``, flushed to Orbax every ``group_bytes``) or as one
    tree of (sharded) jax arrays (``save_tree``).
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, group_bytes: int = GROUP_BYTES):
        self.final = os.path.abspath(os.fspath(path))
        if os.path.exists(self.final) and not overwrite:
            raise CheckpointError(f"{self.final}: already exists (pass overwrite to replace it)")
        self.overwrite = overwrite
        parent, name = os.path.split(self.final)
        os.makedirs(parent, exist_ok=True)
        if jax.process_count() == 1:
            self.tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
        else:  # every host must agree on the directory
            self.tmp = os.path.join(parent, f".{name}.tmp-sophia")
            if jax.process_index() == 0:
                shutil.rmtree(self.tmp, ignore_errors=True)
                os.makedirs(self.tmp)
            _sync("mkdir")
        self.params_dir = os.path.join(self.tmp, PARAMS_DIR)
        self.group_bytes = group_bytes
        self._group: dict[str, np.ndarray] = {}
        self._pending = 0
        self._partial = False

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
        return False

    def add(self, path: str, value: np.ndarray) -> None:
        if self._pending and self._pending + value.nbytes > self.group_bytes:
            self._flush()  # a group never exceeds group_bytes unless one tensor does alone
        self._group[path] = value
        self._pending += value.nbytes
        if self._pending >= self.group_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._group:
            with _context():
                ocp.partial.save(self.params_dir, _nest(self._group))
            self._partial = True
            self._group, self._pending = {}, 0
            release_memory()

    def save_tree(self, params: Mapping[str, jax.Array]) -> None:
        with _context():
            ocp.save(self.params_dir, _nest(params))

    def copy_assets(self, assets: Assets) -> list[str]:
        """Writes planned asset files (``tokenizer_assets.plan_assets``, on every process) from process 0."""
        return assets.write(self.tmp) if jax.process_index() == 0 else []

    def commit(self, kind: str, config, param_dtype, source: str | None = None) -> str:
        self._flush()
        if self._partial:
            with _context():
                ocp.partial.finalize(self.params_dir)
        _sync("saved")
        if jax.process_index() == 0:
            meta = {"format": FORMAT, "version": VERSION, "kind": kind, "param_dtype": np.dtype(param_dtype).name,
                    "config": model_config.to_dict(config), "source": source}
            with open(os.path.join(self.tmp, META_FILE), "w") as f:
                json.dump(meta, f, indent=2)
            if os.path.exists(self.final) and self.overwrite:
                old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.final)}.old-", dir=os.path.dirname(self.final))
                os.rename(self.final, os.path.join(old, "previous"))
                os.rename(self.tmp, self.final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.tmp, self.final)
        _sync("committed")
        return self.final

    def abort(self) -> None:
        if jax.process_index() == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.params_dir + ".partial_save", ignore_errors=True)


def save(model: nnx.Module, path: str | os.PathLike, *, assets: str | None = None, overwrite: bool = False) -> str:
    """Writes ``model`` (an InternVL or CausalLM, sharded or not) as a checkpoint directory.

    ``assets`` is a directory whose config, tokenizer and template files are copied along
    (e.g. the checkpoint the model was loaded from). Each host writes the shards it holds.
    """
    kind = kind_of(model)
    if model.text_model.runtime.scan_layers:  # checkpoints hold per-layer parameters
        model = nnx.merge(*nnx.split(model))  # a new module graph over the same arrays
        set_scan_layers(model, False)
    values = {path_: var.get_value() for path_, var in flat_params(model).items()}
    dtypes = {np.dtype(v.dtype) for v in values.values()}
    planned = plan_assets(assets, exclude=(META_FILE,)) if assets is not None else None
    with CheckpointWriter(path, overwrite=overwrite) as writer:
        writer.save_tree(values)
        if planned is not None:
            writer.copy_assets(planned)
        return writer.commit(kind, model.config, dtypes.pop() if len(dtypes) == 1 else np.float32, source=None)


# ------------------------------------------------------------------------------------------------
# Reading


def is_checkpoint(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), META_FILE))


def read_metadata(path: str | os.PathLike) -> tuple[dict, str, InternVLConfig | TextConfig]:
    """(metadata, kind, our model config) of a checkpoint directory."""
    meta_path = os.path.join(os.fspath(path), META_FILE)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: cannot read ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a {FORMAT} metadata file")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path}: format version {meta.get('version')!r}, this code reads {VERSION}")
    kind = meta.get("kind")
    try:
        if kind == "internvl":
            config = model_config.internvl_config(meta["config"])
        elif kind == "causal_lm":
            config = model_config.text_config(meta["config"])
        else:
            raise CheckpointError(f"{meta_path}: unknown model kind {kind!r}")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{meta_path}: bad model config ({e})") from None
    return meta, kind, config


def check_stored(params_dir: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The stored parameter tree (Orbax metadata only) must match the model, name for name and
    shape for shape; checked before any restore so that a mismatch gets a clear error."""
    try:
        stored = _flatten(ocp.metadata(params_dir).metadata)
    except Exception as e:  # Orbax raises many types; name the directory and keep the cause
        raise CheckpointError(f"{params_dir}: cannot read the Orbax metadata ({type(e).__name__}: {e})") from e
    for path, shape in shapes.items():
        if path not in stored:
            raise CheckpointError(f"{params_dir}: missing parameter {path!r}")
        got = tuple(getattr(stored[path], "shape", None) or ())
        if got != tuple(shape):
            raise CheckpointError(f"{params_dir}: parameter {path!r} is stored as {list(got)}, the model config in "
                                  f"{META_FILE} implies {list(shape)}")
    extra = sorted(set(stored) - set(shapes))
    if extra:
        raise CheckpointError(f"{params_dir}: unexpected parameter {extra[0]!r} ({len(extra)} in all)")


def _runtime(dtype, runtime: RuntimeConfig | None) -> RuntimeConfig:
    if runtime is not None:
        if dtype is not None:
            raise ValueError("pass dtype or runtime, not both")
        return runtime
    name = np.dtype(dtype).name
    return RuntimeConfig(dtype=name, param_dtype=name)


def _place(value: np.ndarray, target: jax.sharding.Sharding) -> jax.Array:
    # Each host builds only the shards its devices hold (works across processes too).
    return jax.make_array_from_callback(value.shape, target, lambda index: value[index])


def load(
    path: str | os.PathLike,
    mesh: jax.sharding.Mesh | None = None,
    dtype=None,
    *,
    runtime: RuntimeConfig | None = None,
) -> nnx.Module:
    """An ``InternVL`` or ``CausalLM`` with its weights, from our checkpoint or a HF directory.

    The model is built abstractly (``nnx.eval_shape``) and every parameter is created directly
    with its final sharding on ``mesh`` (the first device when no mesh is given), so no full
    random init and no unsharded copy of a large model ever exists on a device. ``dtype``
    (default: the stored dtype) sets parameter and compute dtype; ``runtime`` sets both and more
    (with ``scan_layers`` the per-layer parameters read are stacked after loading).

    A Hugging Face directory is read tensor by tensor (no conversion step); our Orbax checkpoint
    is restored by each host reading only its own slices.
    """
    scan = runtime is not None and runtime.scan_layers
    if scan:
        runtime = dataclasses.replace(runtime, scan_layers=False)
    model = _load_per_layer(path, mesh, dtype, runtime)
    set_scan_layers(model, scan, mesh)
    return model


def _load_per_layer(path, mesh, dtype, runtime: RuntimeConfig | None) -> nnx.Module:
    path = os.fspath(path)
    if is_checkpoint(path):
        meta, kind, config = read_metadata(path)
        runtime = _runtime(dtype if dtype is not None or runtime is not None else meta["param_dtype"], runtime)
        model = abstract_model(kind, config, runtime)
        shapes, targets = param_shapes(model), param_shardings(model, mesh)
        abstract = {p: jax.ShapeDtypeStruct(shapes[p], runtime.weight_dtype, sharding=targets[p]) for p in shapes}
        params_dir = os.path.join(path, PARAMS_DIR)
        check_stored(params_dir, shapes)
        try:
            with _context():
                restored = ocp.load(params_dir, _nest(abstract))
        except Exception as e:  # Orbax raises many types; name the directory and keep the cause
            raise CheckpointError(f"{params_dir}: cannot restore parameters ({type(e).__name__}: {e})") from e
        return _fill(model, _flatten(restored).items(), params_dir)
    if os.path.isfile(os.path.join(path, "config.json")):
        hf = open_hf(path)
        runtime = _runtime(dtype if dtype is not None or runtime is not None else hf.dtype, runtime)
        model = abstract_model(hf.kind, hf.config, runtime)
        targets = param_shardings(model, mesh)
        values = ((p, _place(v, targets[p])) for p, v in iter_params(hf, param_shapes(model), runtime.weight_dtype))
        return _fill(model, values, path)
    raise CheckpointError(
        f"{path}: neither a sophia_jax checkpoint ({META_FILE}) nor a Hugging Face directory (config.json)"
    )


class ParamReader:
    """Reads stored parameters one at a time into host memory, in the stored dtype (for export)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.meta, self.kind, self.config = read_metadata(self.path)
        self.dtype = np.dtype(self.meta["param_dtype"])
        runtime = RuntimeConfig(dtype=self.dtype.name, param_dtype=self.dtype.name)
        self.shapes = param_shapes(abstract_model(self.kind, self.config, runtime))
        self.params_dir = os.path.join(self.path, PARAMS_DIR)
        check_stored(self.params_dir, self.shapes)
        self._device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])

    def _abstract(self, name: str):
        if _NumpyShapeDtype is not None:  # restores straight into numpy: no device copy
            return _NumpyShapeDtype(self.shapes[name], self.dtype)
        return jax.ShapeDtypeStruct(self.shapes[name], self.dtype, sharding=self._device)

    def read(self, name: str) -> np.ndarray:
        target = {name: self._abstract(name)}
        try:
            with _context(partial_load=True):
                value = _flatten(ocp.load(self.params_dir, _nest(target)))[name]
        except Exception as e:  # Orbax raises many types; name the directory and keep the cause
            raise CheckpointError(f"{self.params_dir}: cannot read parameter {name!r} ({type(e).__name__}: {e})") from e
        release_memory()
        return np.asarray(value)
