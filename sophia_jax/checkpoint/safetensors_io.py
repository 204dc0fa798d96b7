"""Safetensors files read and written one tensor at a time, without torch.

The format is an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets count from the end of the
header), then the raw little-endian data. bfloat16 is read and written through ``ml_dtypes``
(``safe_open(framework="numpy")`` cannot return it).

Every header is checked against the file size when it is opened, so a truncated or corrupt
file fails before any conversion starts, with the file and tensor named.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np

from sophia_jax.checkpoint.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_MAX_HEADER_BYTES = 100 << 20

DTYPES: Mapping[str, np.dtype] = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I8": np.dtype(np.int8),
    "I16": np.dtype(np.int16),
    "I32": np.dtype(np.int32),
    "I64": np.dtype(np.int64),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: ``offset`` is absolute within ``file``."""

    name: str
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """{tensor name: TensorInfo} of one safetensors file, validated against the file size."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            header_len = int.from_bytes(prefix, "little")
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors file (header claims {header_len} bytes, "
                    f"file has {size})"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    infos = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}") from None
        if dtype_name not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name!r}")
        dtype = DTYPES[dtype_name]
        nbytes = math.prod(shape) * dtype.itemsize
        if begin < 0 or end - begin != nbytes:
            raise CheckpointError(
                f"{path}: corrupt header entry for tensor {name!r} (offsets {begin}..{end} do not hold "
                f"{dtype_name}{list(shape)})"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{path}: truncated file: tensor {name!r} needs bytes up to {data_start + end}, "
                f"the file has {size}"
            )
        infos[name] = TensorInfo(name, path, dtype, shape, data_start + begin, nbytes)
    return infos


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Reads one tensor into a fresh array (no mmap, so nothing stays resident afterwards)."""
    buffer = np.empty(info.nbytes, np.uint8)
    view = memoryview(buffer)
    try:
        with open(info.file, "rb", buffering=0) as f:
            f.seek(info.offset)
            done = 0
            while done < info.nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise CheckpointError(f"{info.file}: truncated while reading tensor {info.name!r}")
                done += got
    except OSError as e:
        raise CheckpointError(f"{info.file}: cannot read tensor {info.name!r} ({e.strerror or e})") from None
    return buffer.view(info.dtype).reshape(info.shape)


def index_directory(directory: str | os.PathLike) -> dict[str, TensorInfo]:
    """All tensors of a Hugging Face checkpoint directory (sharded with an index, or not)."""
    directory = os.fspath(directory)
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({e})") from None
        for name in files:
            if not os.path.exists(os.path.join(directory, name)):
                raise CheckpointError(f"{index_path}: lists shard {name!r}, which does not exist")
    else:
        files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
        weight_map = None
        if not files:
            others = [n for n in os.listdir(directory) if n.endswith((".bin", ".pt", ".pth"))]
            hint = f" (found {others[:3]}; only safetensors is supported)" if others else ""
            raise CheckpointError(f"{directory}: no safetensors weights{hint}")
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        for key, info in read_header(os.path.join(directory, name)).items():
            if key in tensors:
                raise CheckpointError(f"{info.file}: tensor {key!r} also appears in {tensors[key].file}")
            tensors[key] = info
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in tensors or os.path.basename(tensors[key].file) != name:
                raise CheckpointError(f"{os.path.join(directory, name)}: index lists tensor {key!r}, not in the file")
    return tensors


# ------------------------------------------------------------------------------------------------
# Writing


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Splits tensors, in order, into files of at most ``max_shard_bytes`` (a larger tensor gets
    a file to itself)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _header_bytes(specs: Sequence[TensorSpec]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype not in _DTYPE_NAMES:
            raise CheckpointError(f"tensor {spec.name!r}: dtype {dtype} cannot be stored in safetensors")
        header[spec.name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
    return len(raw).to_bytes(8, "little") + raw


_WRITE_BLOCK_BYTES = 64 << 20


def _write_array(f, array: np.ndarray) -> None:
    """Writes C-order bytes; a strided view (a transposed weight) goes out in row blocks, so it
    never needs a second full-size copy."""
    if array.ndim == 0 or array.flags.c_contiguous:
        f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        return
    rows = max(1, _WRITE_BLOCK_BYTES // max(1, array[0].nbytes))
    for start in range(0, array.shape[0], rows):
        f.write(np.ascontiguousarray(array[start:start + rows]).reshape(-1).view(np.uint8).data)


def write_shards(
    directory: str | os.PathLike,
    shards: Sequence[Sequence[TensorSpec]],
    get: Callable[[TensorSpec], np.ndarray],
    on_tensor: Callable[[TensorSpec], None] | None = None,
) -> list[str]:
    """Writes the planned files, asking ``get`` for each tensor's data in order.

    One file is ``model.safetensors``; several are ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json``. Returns the file names.
    """
    directory = os.fspath(directory)
    count = len(shards)
    names = [SINGLE_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    weight_map = {}
    for name, specs in zip(names, shards):
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(_header_bytes(specs))
            for spec in specs:
                array = np.asarray(get(spec))
                if tuple(array.shape) != tuple(spec.shape) or array.dtype != np.dtype(spec.dtype):
                    raise CheckpointError(
                        f"{path}: tensor {spec.name!r} is {array.dtype}{list(array.shape)}, planned "
                        f"{np.dtype(spec.dtype)}{list(spec.shape)}"
                    )
                _write_array(f, array)
                weight_map[spec.name] = name
                if on_tensor is not None:
                    on_tensor(spec)
    if count > 1:
        total = sum(spec.nbytes for specs in shards for spec in specs)
        with open(os.path.join(directory, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names


def write_tensors(
    directory: str | os.PathLike, tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    max_shard_bytes: int = 5 << 30,
) -> list[str]:
    """Writes in-memory arrays as a (possibly sharded) safetensors checkpoint."""
    items = dict(tensors.items() if isinstance(tensors, Mapping) else tensors)
    specs = [TensorSpec(k, np.asarray(v).dtype, tuple(np.shape(v))) for k, v in items.items()]
    return write_shards(directory, plan_shards(specs, max_shard_bytes), lambda s: items[s.name])
