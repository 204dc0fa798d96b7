"""A Hugging Face checkpoint directory, read lazily as our parameters.

``open_hf`` works out the layout from ``config.json`` (original OpenGVLab ``internvl_chat``,
transformers-native ``internvl``, or a text-only Qwen2 / Qwen3 / Llama / InternLM2 causal LM),
builds our model config, and plans every on-disk tensor under its canonical transformers name
without reading any data. ``iter_params`` then checks the plan against the rule table (every
tensor expected, known and of the right shape) before it reads anything, and yields our
parameters one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator, Mapping

import jax
import numpy as np

from sophia_jax.checkpoint import original_layout
from sophia_jax.checkpoint.errors import CheckpointError
from sophia_jax.checkpoint.keymap import Rule, canonical_hf_name, causal_lm_rules, internvl_rules
from sophia_jax.checkpoint.safetensors_io import INDEX_FILE, TensorInfo, index_directory, read_tensor
from sophia_jax.models.config import InternVLConfig, TextConfig
from sophia_jax.models.hf_config import internvl_config_from_hf, load_hf_config, text_config_from_hf

ORIGINAL, NATIVE, CAUSAL_LM = "internvl_chat", "internvl", "causal_lm"
IMAGE_CONTEXT_TOKEN = "<IMG_CONTEXT>"
# Files that hold weights; everything else at the top level (config, tokenizer, chat template,
# generation and preprocessor configs, remote tokenizer code) is an asset we carry along.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".index.json")
# Buffers some older checkpoints store that are not parameters.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_FLOAT_DTYPES = {np.dtype(n) for n in ("bfloat16", "float16", "float32", "float64")}


@dataclasses.dataclass(frozen=True)
class Planned:
    """One canonical tensor: cut by ``piece`` (or taken whole) from ``source``."""

    name: str
    shape: tuple[int, ...]
    source: TensorInfo
    piece: original_layout.Piece


@dataclasses.dataclass
class HFCheckpoint:
    directory: str
    layout: str  # ORIGINAL, NATIVE or CAUSAL_LM
    hf_config: dict
    config: InternVLConfig | TextConfig
    tensors: list[Planned]
    # The last fused source tensor, so q, k and v cut from it are read once.
    _cache: tuple[str, str, np.ndarray] | None = dataclasses.field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "internvl" if isinstance(self.config, InternVLConfig) else "causal_lm"

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the floating-point weights on disk (the first one found)."""
        for planned in self.tensors:
            if planned.source.dtype in _FLOAT_DTYPES:
                return planned.source.dtype
        return np.dtype(np.float32)

    def read(self, planned: Planned) -> np.ndarray:
        info = planned.source
        if self._cache is not None and self._cache[:2] == (info.file, info.name):
            value = self._cache[2]
        else:
            self._cache = None  # drop the previous tensor before reading the next
            value = read_tensor(info)
            if planned.piece is not None:
                self._cache = (info.file, info.name, value)
        return value if planned.piece is None else planned.piece(value)


def rules_for(config: InternVLConfig | TextConfig) -> list[Rule]:
    return internvl_rules(config) if isinstance(config, InternVLConfig) else causal_lm_rules(config)


def read_json(path: str) -> dict | None:
    """A JSON file's content, None when the file does not exist; bad JSON names the file."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def token_id(directory: str, token: str) -> int | None:
    """The id of ``token`` from whichever tokenizer files exist (JSON only; no tokenizer class)."""

    def load(name):
        return read_json(os.path.join(directory, name))

    tok = load("tokenizer.json") or {}
    for entry in tok.get("added_tokens") or []:
        if entry.get("content") == token:
            return int(entry["id"])
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and token in vocab:
        return int(vocab[token])
    for key, entry in ((load("tokenizer_config.json") or {}).get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and entry.get("content") == token:
            return int(key)
    added = load("added_tokens.json") or {}
    if token in added:
        return int(added[token])
    return None


def asset_files(directory: str) -> list[str]:
    """Top-level non-weight files of a checkpoint directory (config, tokenizer, templates...)."""
    return sorted(
        name for name in os.listdir(directory)
        if not name.startswith(".") and os.path.isfile(os.path.join(directory, name))
        and not name.endswith(_WEIGHT_SUFFIXES)
    )


def _config(directory: str, hf: dict) -> tuple[str, InternVLConfig | TextConfig]:
    source = os.path.join(directory, "config.json")
    model_type = hf.get("model_type")
    try:
        if model_type == ORIGINAL:
            # The original config does not carry the image-context id; the tokenizer does.
            token = token_id(directory, IMAGE_CONTEXT_TOKEN)
            return ORIGINAL, internvl_config_from_hf(hf, source, image_token_id=token)
        if model_type == NATIVE:
            return NATIVE, internvl_config_from_hf(hf, source)
        return CAUSAL_LM, text_config_from_hf(hf, source)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        message = str(e)
        raise CheckpointError(message if source in message else f"{source}: {message}") from None


def _plan(layout: str, config, infos: Mapping[str, TensorInfo]) -> list[Planned]:
    planned = []
    for info in sorted(infos.values(), key=lambda i: (i.file, i.offset)):
        if info.name.endswith(_IGNORED_SUFFIXES):
            continue
        try:
            if layout == NATIVE:
                mapped = [(canonical_hf_name(info.name), info.shape, None)]
            elif layout == ORIGINAL:
                mapped = original_layout.internvl_tensor(info.name, info.shape, config)
            else:
                mapped = original_layout.causal_lm_tensor(info.name, info.shape, config)
        except ValueError as e:
            raise CheckpointError(f"{info.file}: tensor {info.name!r}: {e}") from None
        planned.extend(Planned(name, shape, info, piece) for name, shape, piece in mapped)
    return planned


def open_hf(directory: str | os.PathLike) -> HFCheckpoint:
    """Reads config and tensor headers of a Hugging Face checkpoint directory (no weights)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory")
    try:
        hf = load_hf_config(directory)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{directory}/config.json: not a JSON object")
    layout, config = _config(directory, hf)
    tensors = _plan(layout, config, index_directory(directory))
    return HFCheckpoint(directory, layout, hf, config, tensors)


def expected_hf_shapes(rules: list[Rule], our_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Canonical HF shape of every rule, from our parameter shapes (abstractly, no data)."""
    shapes = {}
    for rule in rules:
        if rule.ours is None:
            continue
        if rule.ours not in our_shapes:
            raise CheckpointError(f"rule table names parameter {rule.ours!r}, which the model does not have")
        out = jax.eval_shape(rule.to_hf, jax.ShapeDtypeStruct(tuple(our_shapes[rule.ours]), np.float32))
        shapes[rule.hf] = tuple(out.shape)
    return shapes


def _where(planned: Planned) -> str:
    return f"{planned.source.file}: tensor {planned.source.name!r}"


def check_plan(checkpoint: HFCheckpoint, rules: list[Rule], our_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every expected tensor present once, nothing unexpected, every shape right."""
    by_name = {rule.hf: rule for rule in rules}
    expected = expected_hf_shapes(rules, our_shapes)
    seen: dict[str, Planned] = {}
    for planned in checkpoint.tensors:
        if planned.name not in by_name:
            kind = "InternVL" if checkpoint.kind == "internvl" else checkpoint.config.architecture
            alias = f" (read as {planned.name!r})" if planned.name != planned.source.name else ""
            raise CheckpointError(f"{_where(planned)}{alias}: unexpected tensor for this {kind} config")
        if planned.name in seen:
            raise CheckpointError(f"{_where(planned)}: duplicates {_where(seen[planned.name])} (both are {planned.name!r})")
        seen[planned.name] = planned
        want = expected.get(planned.name)
        if want is not None and tuple(planned.shape) != want:
            alias = f" ({planned.name!r})" if planned.name != planned.source.name else ""
            raise CheckpointError(
                f"{_where(planned)}{alias}: shape {list(planned.shape)} does not match {list(want)} "
                f"implied by {checkpoint.directory}/config.json"
            )
    missing = [name for name in expected if name not in seen]
    if missing:
        index = os.path.join(checkpoint.directory, INDEX_FILE)
        where = index if os.path.exists(index) else f"{checkpoint.directory}/*.safetensors"
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: missing tensor {missing[0]!r}{more} (transformers name)")


def iter_params(
    checkpoint: HFCheckpoint, our_shapes: Mapping[str, tuple[int, ...]], dtype=None
) -> Iterator[tuple[str, np.ndarray]]:
    """Checks the whole plan now, then yields (our parameter path, array) one tensor at a time.

    Arrays come out in our layout (transposed, heads split, vocabulary padded) and in ``dtype``
    when given (else the on-disk dtype).
    """
    rules = rules_for(checkpoint.config)
    check_plan(checkpoint, rules, our_shapes)
    return _stream(checkpoint, {rule.hf: rule for rule in rules}, dtype)


def _stream(checkpoint: HFCheckpoint, by_name: Mapping[str, Rule], dtype) -> Iterator[tuple[str, np.ndarray]]:
    for planned in checkpoint.tensors:
        rule = by_name[planned.name]
        if rule.ours is None:  # transformers' copy of a tied lm_head
            continue
        value = rule.to_ours(checkpoint.read(planned))
        if dtype is not None:
            value = value.astype(dtype, copy=False)
        # Contiguous here, so the source (or the transposed view's base) is freed before the
        # consumer runs; handed a strided view, TensorStore would make its own extra copy.
        value = np.ascontiguousarray(value)
        yield rule.ours, value
    checkpoint._cache = None
