"""One SOPHIA trajectory as stored on disk, and its versioned byte format.

The behaviour model writes one :class:`TrajectoryRecord` per reasoning trajectory, correct or not,
so that selection can be rerun with other thresholds without generating again. A record carries
the question, the caption it was written from (with the caption's propagated reward), the
trajectory and its outcome reward, provenance (which policy and reasoner), token counts, and the
behaviour log-probs an off-policy loss with importance sampling needs.

Byte format, version 1 (all integers little-endian)::

    offset  size  field
    0       4     magic b"SJTR"
    4       2     format version (uint16)
    6       2     reserved, 0
    8       4     header length H in bytes (uint32, a multiple of 4)
    12      4     CRC-32 of bytes [16, end)
    16      H     UTF-8 JSON object with every scalar and text field, padded with spaces
    16+H    ...   float32 arrays, raw little-endian, in this order:
                  caption_logprobs[caption_tokens], caption_raw_logprobs[caption_tokens],
                  trajectory_logprobs[trajectory_tokens], trajectory_raw_logprobs[trajectory_tokens]

Arrays go in as raw bytes, not JSON numbers: the bits come back exactly (NaN payloads, -0.0) and
a 4k-token trajectory costs 32 KiB instead of ~150 KiB of decimal text. The header is padded so
the arrays start 4-byte aligned and :func:`decode` can view them without copying. Text is stored
with ``surrogatepass`` so any Python string, even one holding a lone surrogate from a bad
detokenization, round-trips.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from typing import Any

import numpy as np

from sophia_jax.errors import UserError

__all__ = [
    "FORMAT_VERSION",
    "RecordFormatError",
    "RecordKey",
    "TrajectoryRecord",
    "decode",
    "encode",
    "record_key",
]

FORMAT_VERSION = 1
_MAGIC = b"SJTR"
_PREFIX = struct.Struct("<4sHHII")  # magic, version, reserved, header length, crc32
_F32 = np.dtype("<f4")
_ARRAY_FIELDS = (
    ("caption_logprobs", "caption_tokens"),
    ("caption_raw_logprobs", "caption_tokens"),
    ("trajectory_logprobs", "trajectory_tokens"),
    ("trajectory_raw_logprobs", "trajectory_tokens"),
)
_ARRAY_NAMES = frozenset(name for name, _ in _ARRAY_FIELDS)

RecordKey = tuple[str, int, int]  # (question_id, caption_index, trajectory_index)


class RecordFormatError(UserError, ValueError):
    """A payload is not a trajectory record this code can read (corrupt, truncated, unknown version)."""


def _frozen_f32(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.flags.writeable:  # our own read-only copy, so the frozen record really is immutable
        arr = arr.copy()
        arr.setflags(write=False)
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class TrajectoryRecord:
    """One reasoning trajectory of one caption of one (image, question).

    Attributes:
        question_id: id of the question (also decides its shard).
        image_ref: image path, or ``"inline:<sha256 hex>"`` for an image embedded in the dataset.
        question, answer: the question text and the gold answer.
        choices: multiple-choice options, or ``None``.
        caption_index: k in [0, K) among the captions of this question.
        caption: the caption the policy LVLM wrote (without the question).
        caption_reward: R(c), the mean outcome reward of this caption's trajectories.
        trajectory_index: n in [0, N) among the trajectories of this caption.
        trajectory: the reasoner's full output.
        outcome_reward: R(y) from the verifier, 0 or 1.
        extracted_answer: answer the verifier extracted, ``None`` if none was found.
        judge_reason: why the verifier gave that reward (for audits).
        selected: whether the behaviour run's own selection kept this trajectory.
        policy_name, reasoner_name: which models produced the caption and the trajectory.
        caption_tokens: caption length in policy tokens.
        trajectory_tokens: trajectory length in reasoner tokens.
        trajectory_policy_tokens: trajectory length in policy tokens (Keep-N picks the shortest).
        caption_logprobs: float32[caption_tokens], policy log-probs of the sampled caption tokens
            under the distribution they were sampled from (after temperature / top-p).
        caption_raw_logprobs: float32[caption_tokens], the same under the temperature-1 full vocab.
        trajectory_logprobs, trajectory_raw_logprobs: float32[trajectory_tokens], the reasoner's.

    Arrays are stored read-only. Equality compares arrays bit for bit (so NaN equals the same NaN).
    """

    question_id: str
    image_ref: str
    question: str
    answer: str
    choices: tuple[str, ...] | None
    caption_index: int
    caption: str
    caption_reward: float
    trajectory_index: int
    trajectory: str
    outcome_reward: float
    extracted_answer: str | None
    judge_reason: str
    selected: bool
    policy_name: str
    reasoner_name: str
    caption_tokens: int
    trajectory_tokens: int
    trajectory_policy_tokens: int
    caption_logprobs: np.ndarray
    caption_raw_logprobs: np.ndarray
    trajectory_logprobs: np.ndarray
    trajectory_raw_logprobs: np.ndarray

    def __post_init__(self) -> None:
        for name in ("question_id", "image_ref", "question", "answer", "caption", "trajectory",
                     "judge_reason", "policy_name", "reasoner_name"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be str, got {type(getattr(self, name)).__name__}")
        if self.extracted_answer is not None and not isinstance(self.extracted_answer, str):
            raise TypeError("extracted_answer must be str or None")
        if self.choices is not None:
            choices = tuple(self.choices)
            if not all(isinstance(c, str) for c in choices):
                raise TypeError("choices must be strings")
            object.__setattr__(self, "choices", choices)
        for name in ("caption_index", "trajectory_index", "caption_tokens", "trajectory_tokens",
                     "trajectory_policy_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("caption_reward", "outcome_reward"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not isinstance(self.selected, (bool, np.bool_)):
            raise TypeError(f"selected must be bool, got {self.selected!r}")
        object.__setattr__(self, "selected", bool(self.selected))
        for name, length_field in _ARRAY_FIELDS:
            arr = _frozen_f32(getattr(self, name), name)
            if arr.shape[0] != getattr(self, length_field):
                raise ValueError(f"{name} has {arr.shape[0]} entries but {length_field} = "
                                 f"{getattr(self, length_field)}")
            object.__setattr__(self, name, arr)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrajectoryRecord):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in _ARRAY_NAMES:
                if a.shape != b.shape or a.tobytes() != b.tobytes():
                    return False
            elif a != b and not (isinstance(a, float) and a != a and b != b):  # NaN == NaN
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # holds arrays: not hashable


def record_key(record: TrajectoryRecord) -> RecordKey:
    """``(question_id, caption_index, trajectory_index)``: unique within a store."""
    return (record.question_id, record.caption_index, record.trajectory_index)


def encode(record: TrajectoryRecord) -> bytes:
    """Serialise a record into the version-1 byte format (see the module docstring)."""
    header = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
              if f.name not in _ARRAY_NAMES}
    if header["choices"] is not None:
        header["choices"] = list(header["choices"])
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":"))
    head = text.encode("utf-8", "surrogatepass")
    head += b" " * (-len(head) % 4)
    body = head + b"".join(getattr(record, name).astype(_F32, copy=False).tobytes()
                           for name, _ in _ARRAY_FIELDS)
    return _PREFIX.pack(_MAGIC, FORMAT_VERSION, 0, len(head), zlib.crc32(body)) + body


def decode(payload: bytes) -> TrajectoryRecord:
    """Parse bytes written by :func:`encode`; raises :class:`RecordFormatError` on anything else.

    The returned arrays are read-only views into ``payload`` (no copy).
    """
    payload = bytes(payload)
    if len(payload) < _PREFIX.size:
        raise RecordFormatError(f"trajectory record too short ({len(payload)} bytes)")
    magic, version, _, head_len, crc = _PREFIX.unpack_from(payload)
    if magic != _MAGIC:
        raise RecordFormatError(f"not a trajectory record (magic {magic!r}, expected {_MAGIC!r})")
    if version != FORMAT_VERSION:
        raise RecordFormatError(f"trajectory record format version {version} is not supported "
                                f"(this code reads version {FORMAT_VERSION})")
    if zlib.crc32(memoryview(payload)[_PREFIX.size:]) != crc:
        raise RecordFormatError(f"trajectory record is corrupt: CRC-32 mismatch ({len(payload)} bytes)")
    try:
        fields = json.loads(payload[_PREFIX.size:_PREFIX.size + head_len].decode("utf-8", "surrogatepass"))
        lengths = {n: fields[n] for n in ("caption_tokens", "trajectory_tokens")}
        expected = _PREFIX.size + head_len + 4 * 2 * sum(lengths.values())
        if expected != len(payload):
            raise RecordFormatError(f"trajectory record has {len(payload)} bytes, header implies {expected}")
        offset = _PREFIX.size + head_len
        for name, length_field in _ARRAY_FIELDS:
            count = lengths[length_field]
            fields[name] = np.frombuffer(payload, dtype=_F32, count=count, offset=offset)
            offset += 4 * count
        return TrajectoryRecord(**fields)
    except RecordFormatError:
        raise
    except (ValueError, TypeError, KeyError) as e:  # CRC matched, so this is a writer bug or a bad version
        raise RecordFormatError(f"trajectory record header is invalid: {type(e).__name__}: {e}") from e
