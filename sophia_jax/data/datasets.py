"""Question datasets for the SOPHIA behaviour model (JSONL and parquet).

Each record describes one visual question::

    {"id": "q1", "image": "imgs/q1.png", "question": "...", "answer": "B",
     "choices": ["...", "..."], "hint": "..."}

Supported files: ``.jsonl`` / ``.ndjson`` (one JSON object per line, blank lines ignored), ``.json`` (one JSON
array of objects, as MathVerse and MV-MATH publish) and ``.parquet`` (read with pyarrow, in record batches). Field names are remapped with :class:`FieldMap`, e.g.
``FieldMap(question="problem", answer="solution")``.

The ``image`` field may hold

* a path, relative to the dataset file's folder (or ``image_root``) or absolute;
* inline bytes: a base64 string in JSONL (plain, or a ``data:image/...;base64,`` URI; plain base64 is recognised by
  decoding to a known image signature -- PNG, JPEG, GIF, BMP, WEBP, TIFF), raw ``bytes`` in parquet;
* a dict ``{"bytes": ..., "path": ...}`` as Hugging Face ``datasets`` stores images (bytes win when present;
  in JSONL the bytes are base64);
* a list of any of the above: a multi-image question (``Question.images``; ``image_ref`` is the first).

Relative paths resolve against the dataset file's folder or ``image_root``; when ``image_root`` is a ``.zip`` file
the paths name members of that archive (the zipped image folders MathVista and MathVision publish).

A record without the id field gets the synthetic id ``"<file stem>-<n>"`` (``n``: 0-based record index); ids are
compared as strings and a repeated id skips the later record (``duplicate_id``).

Images are referenced lazily by an :class:`ImageRef`; nothing is decoded unless ``validate=True`` or the caller
loads the image (``question.image_ref.load(config)``).

Why one file of ~600 lines: every image encoding and field rule above decides which records are usable,
and they are read together here; the benchmark layouts (``sophia_jax.evaluation.benchmarks``) reuse
:func:`iter_records` and :func:`parse_images` instead of repeating them.

Bad records never raise: each becomes a :class:`Skipped` with a machine-readable ``reason`` code, a message
naming the file and the line (JSONL, 1-based) or row (parquet, 0-based), and is counted. Only a dataset-level
problem raises :class:`DatasetError`: missing file, unknown extension, an unreadable parquet file, or pyarrow
missing for a parquet file.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from sophia_jax.errors import UserError
from sophia_jax.data.images import ImageError, TilingConfig, load_image, open_image, read_archive_member

__all__ = [
    "DatasetError",
    "FieldMap",
    "ImageRef",
    "Question",
    "QuestionSet",
    "Skipped",
    "SkipReason",
    "RecordProblem",
    "iter_questions",
    "iter_records",
    "parse_images",
    "read_questions",
]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet",)


class DatasetError(UserError, ValueError):
    """The dataset file as a whole cannot be read (missing, unknown extension, unreadable container)."""


class SkipReason:
    """Reason codes carried by :class:`Skipped` (plain strings, so they compare and count easily)."""

    MALFORMED_RECORD = "malformed_record"  # invalid JSON / not an object / undecodable line
    MISSING_ID = "missing_id"  # id field present but null/empty (absent id fields get a synthetic id)
    DUPLICATE_ID = "duplicate_id"
    EMPTY_QUESTION = "empty_question"
    MISSING_ANSWER = "missing_answer"
    MISSING_IMAGE = "missing_image"  # no usable image value in the record
    BAD_IMAGE = "bad_image"  # image value unusable, or (validate=True) the image cannot be opened
    BAD_FIELD = "bad_field"  # a field has the wrong type (e.g. choices not a list of strings)


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Names of the record fields. Set an optional field (``choices``, ``hint``) to ``None`` to ignore it."""

    id: str = "id"
    image: str = "image"
    question: str = "question"
    answer: str = "answer"
    choices: str | None = "choices"
    hint: str | None = "hint"


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """A lazily loaded image: a filesystem ``path`` or inline encoded ``data`` (exactly one is set).

    With ``archive`` set, ``path`` names a member of that ``.zip`` file instead of a file on disk.
    ``origin`` says where the reference came from (``file:line``) and is used in error messages.
    """

    path: Path | PurePosixPath | None = None
    data: bytes | None = dataclasses.field(default=None, repr=False)
    origin: str = ""
    archive: Path | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("ImageRef needs exactly one of path or data")
        if self.archive is not None and self.path is None:
            raise ValueError("an archive ImageRef needs the member path")

    @property
    def source(self) -> str | bytes | os.PathLike:
        """What ``images.open_image`` reads: the path, the inline bytes, or the archive member's bytes."""
        if self.archive is not None:
            return read_archive_member(self.archive, str(self.path), name=self.describe())
        return self.path if self.path is not None else self.data  # type: ignore[return-value]

    def describe(self) -> str:
        if self.archive is not None:
            where = f"{self.archive}!{self.path}"
        elif self.path is not None:
            where = str(self.path)
        else:
            where = f"<inline image, {len(self.data or b'')} bytes>"
        return f"{where} (from {self.origin})" if self.origin else where

    def open(self) -> Image.Image:
        """Decode and check the image; returns an RGB PIL image or raises :class:`ImageError`."""
        return open_image(self.source, name=self.describe())

    def load(self, config: TilingConfig = TilingConfig()) -> np.ndarray:
        """Tile the image: ``float32[n_tiles, 3, tile, tile]``; raises :class:`ImageError` naming the source."""
        return load_image(self.source, config, name=self.describe())


@dataclasses.dataclass(frozen=True)
class Question:
    """One visual question. ``choices`` is ``None`` when the record has none; ``hint`` is ``None`` when absent.

    ``images`` holds every image of the question in order; ``image_ref`` is its first (or None). Either may be
    given: the other is filled in.
    """

    id: str
    image_ref: ImageRef | None
    question: str
    answer: str
    choices: tuple[str, ...] | None = None
    hint: str | None = None
    source: str = ""  # "file:line N" / "file:row N", for diagnostics
    images: tuple[ImageRef, ...] = ()

    def __post_init__(self) -> None:
        if not self.images and self.image_ref is not None:
            object.__setattr__(self, "images", (self.image_ref,))
        elif self.images and self.image_ref is None:
            object.__setattr__(self, "image_ref", self.images[0])
        elif self.images and self.images[0] != self.image_ref:
            raise ValueError("Question.image_ref must be the first of Question.images")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A record that was not turned into a :class:`Question`."""

    file: str
    location: str  # "line N" (JSONL, 1-based) or "row N" (parquet, 0-based)
    reason: str  # one of the SkipReason codes
    message: str
    record_id: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.location}: {self.reason}: {self.message}"


@dataclasses.dataclass
class QuestionSet:
    """Result of :func:`read_questions`: the good questions and the skipped records."""

    path: Path
    questions: list[Question]
    skipped: list[Skipped]

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self) -> Iterator[Question]:
        return iter(self.questions)

    def __getitem__(self, index: int) -> Question:
        return self.questions[index]

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def skip_counts(self) -> dict[str, int]:
        """Number of skipped records per reason code."""
        return dict(collections.Counter(s.reason for s in self.skipped))

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.skip_counts().items()))
        return f"{self.path}: {len(self.questions)} questions, {self.num_skipped} skipped" + (
            f" ({counts})" if counts else ""
        )


# ----------------------------------------------------------------------------------------------------------------
# Record parsing
# ----------------------------------------------------------------------------------------------------------------

_DATA_URI = re.compile(r"^data:[^,;]*(;[^,]*)?;base64,", re.IGNORECASE)
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/=\s]+$")
_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


def _looks_like_image(data: bytes) -> bool:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return any(data.startswith(m) for m in _IMAGE_MAGIC)


class RecordProblem(Exception):
    """A record that cannot be used; ``reason`` is a :class:`SkipReason` code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordProblem(SkipReason.BAD_IMAGE, f"{what} is not valid base64: {exc}") from exc


def _image_from_string(text: str, base_dir: Path, origin: str, inline_strings: bool = True) -> ImageRef:
    stripped = text.strip()
    if not stripped:
        raise RecordProblem(SkipReason.MISSING_IMAGE, "image field is empty")
    m = _DATA_URI.match(stripped)
    if m:
        data = _decode_base64(stripped[m.end() :], "image data URI")
        if not data:
            raise RecordProblem(SkipReason.BAD_IMAGE, "image data URI holds no bytes")
        return ImageRef(data=data, origin=origin)
    # Plain base64 is told apart from a path by decoding to a known image signature; a path practically never
    # decodes (strictly) to e.g. b"\x89PNG\r\n\x1a\n".
    if inline_strings and len(stripped) >= 16 and _B64_CHARS.match(stripped):
        try:
            data = base64.b64decode("".join(stripped.split()), validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if data and _looks_like_image(data):
            return ImageRef(data=data, origin=origin)
    path = Path(os.path.expanduser(stripped))
    if not path.is_absolute() and base_dir.suffix.lower() == ".zip" and base_dir.is_file():
        return ImageRef(path=PurePosixPath(stripped), archive=base_dir, origin=origin)
    if not path.is_absolute():
        path = base_dir / path
    return ImageRef(path=path, origin=origin)


def parse_images(value: Any, base_dir: Path, origin: str) -> tuple[ImageRef, ...]:
    """The images of one record field: a single image value or a list of them (see the module docstring).

    Relative paths resolve against ``base_dir`` (a folder, or a ``.zip`` whose members they name). Raises
    :class:`RecordProblem` (``missing_image`` / ``bad_image``) for a value that names no usable image.
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if not value:
            raise RecordProblem(SkipReason.MISSING_IMAGE, "image field is an empty list")
        return tuple(_image_ref(v, base_dir, f"{origin} image {i + 1}") for i, v in enumerate(value))
    return (_image_ref(value, base_dir, origin),)


def _image_ref(value: Any, base_dir: Path, origin: str) -> ImageRef:
    if value is None:
        raise RecordProblem(SkipReason.MISSING_IMAGE, "image field is null")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            raise RecordProblem(SkipReason.BAD_IMAGE, "inline image holds no bytes")
        return ImageRef(data=data, origin=origin)
    if isinstance(value, str):
        return _image_from_string(value, base_dir, origin)
    if isinstance(value, Mapping):
        raw = value.get("bytes")
        if raw is not None:
            if isinstance(raw, str):
                data = _decode_base64(raw, "image 'bytes' entry")
            elif isinstance(raw, (bytes, bytearray, memoryview)):
                data = bytes(raw)
            else:
                raise RecordProblem(SkipReason.BAD_IMAGE, f"image 'bytes' entry has type {type(raw).__name__}")
            if not data:
                raise RecordProblem(SkipReason.BAD_IMAGE, "image 'bytes' entry holds no bytes")
            return ImageRef(data=data, origin=origin)
        path = value.get("path")
        if isinstance(path, str) and path.strip():
            return _image_from_string(path, base_dir, origin, inline_strings=False)
        raise RecordProblem(SkipReason.MISSING_IMAGE, "image dict has neither 'bytes' nor 'path'")
    raise RecordProblem(SkipReason.BAD_IMAGE, f"image field has unsupported type {type(value).__name__}")


def _text(value: Any) -> str | None:
    """Scalars (str, int, float, bool) as text; None for missing; raises for containers."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return str(value)
    raise TypeError(type(value).__name__)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None or NaN (pandas-made parquet)


def _parse_record(
    record: Any,
    *,
    fields: FieldMap,
    base_dir: Path,
    origin: str,
    default_id: str,
    require_image: bool,
) -> Question:
    if not isinstance(record, Mapping):
        raise RecordProblem(SkipReason.MALFORMED_RECORD, f"record is a JSON {type(record).__name__}, not an object")

    # id: an absent field gets a synthetic id; a present but empty one is an error.
    if fields.id in record:
        raw_id = record[fields.id]
        try:
            qid = None if _missing(raw_id) else _text(raw_id)
        except TypeError:
            raise RecordProblem(SkipReason.BAD_FIELD, f"id {fields.id!r} has type {type(raw_id).__name__}")
        if qid is None or not qid.strip():
            raise RecordProblem(SkipReason.MISSING_ID, f"id field {fields.id!r} is empty")
        qid = qid.strip()
    else:
        qid = default_id

    raw_q = record.get(fields.question)
    if not isinstance(raw_q, str):
        if _missing(raw_q):
            raise RecordProblem(SkipReason.EMPTY_QUESTION, f"question field {fields.question!r} is missing")
        raise RecordProblem(
            SkipReason.BAD_FIELD, f"question field {fields.question!r} has type {type(raw_q).__name__}"
        )
    if not raw_q.strip():
        raise RecordProblem(SkipReason.EMPTY_QUESTION, f"question field {fields.question!r} is empty")

    raw_a = record.get(fields.answer)
    if _missing(raw_a):
        raise RecordProblem(SkipReason.MISSING_ANSWER, f"answer field {fields.answer!r} is missing")
    try:
        answer = _text(raw_a)
    except TypeError:
        raise RecordProblem(SkipReason.BAD_FIELD, f"answer field {fields.answer!r} has type {type(raw_a).__name__}")
    if answer is None or not answer.strip():
        raise RecordProblem(SkipReason.MISSING_ANSWER, f"answer field {fields.answer!r} is empty")

    choices: tuple[str, ...] | None = None
    if fields.choices is not None and not _missing(record.get(fields.choices)):
        raw_c = record[fields.choices]
        if isinstance(raw_c, np.ndarray):
            raw_c = raw_c.tolist()
        if not isinstance(raw_c, (list, tuple)):
            raise RecordProblem(
                SkipReason.BAD_FIELD, f"choices field {fields.choices!r} must be a list, got {type(raw_c).__name__}"
            )
        try:
            items = [_text(c) for c in raw_c]
        except TypeError as exc:
            raise RecordProblem(SkipReason.BAD_FIELD, f"choices field {fields.choices!r} holds a {exc}")
        if any(c is None for c in items):
            raise RecordProblem(SkipReason.BAD_FIELD, f"choices field {fields.choices!r} holds null entries")
        choices = tuple(items)  # type: ignore[arg-type]

    hint: str | None = None
    if fields.hint is not None and not _missing(record.get(fields.hint)):
        try:
            hint = _text(record[fields.hint])
        except TypeError:
            raise RecordProblem(SkipReason.BAD_FIELD, f"hint field {fields.hint!r} is not text")
        if hint is not None and not hint.strip():
            hint = None

    images: tuple[ImageRef, ...] = ()
    raw_img = record.get(fields.image)
    if _missing(raw_img):
        if require_image:
            raise RecordProblem(SkipReason.MISSING_IMAGE, f"image field {fields.image!r} is missing")
    else:
        images = parse_images(raw_img, base_dir, origin)

    return Question(
        id=qid, image_ref=images[0] if images else None, question=raw_q, answer=answer, choices=choices, hint=hint,
        source=origin, images=images,
    )


# ----------------------------------------------------------------------------------------------------------------
# File readers: yield (location, record-or-problem)
# ----------------------------------------------------------------------------------------------------------------


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            loc = f"line {lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield loc, RecordProblem(SkipReason.MALFORMED_RECORD, f"line is not valid UTF-8: {exc}")
                continue
            if not line.strip():
                continue
            try:
                yield loc, json.loads(line)
            except json.JSONDecodeError as exc:
                yield loc, RecordProblem(SkipReason.MALFORMED_RECORD, f"invalid JSON: {exc}")


def _parquet_records(path: Path, batch_size: int = 256) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DatasetError(f"reading {path} needs pyarrow (pip install pyarrow)") from exc
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for non-parquet data
        raise DatasetError(f"cannot read parquet file {path}: {exc}") from exc
    row = 0
    try:
        batches = pf.iter_batches(batch_size=batch_size)
        for batch in batches:
            for record in batch.to_pylist():
                yield f"row {row}", record
                row += 1
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot read parquet file {path} after row {row}: {exc}") from exc


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """A ``.json`` file holding one array of records ("item N", 0-based); the array itself must parse."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            rows = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read JSON dataset {path}: {exc}") from exc
    if not isinstance(rows, list):
        raise DatasetError(f"JSON dataset {path} must hold an array of records, not a {type(rows).__name__}")
    for index, row in enumerate(rows):
        yield f"item {index}", row


def iter_records(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """The raw records of a dataset file as ``(location, record)``, in file order.

    A record that cannot even be decoded (invalid JSON line) comes as a :class:`RecordProblem` in place of the
    record. Raises :class:`DatasetError` for an unknown extension (now) or an unreadable container (when read).
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return _jsonl_records(path)
    if name.endswith(JSON_SUFFIXES):
        return _json_records(path)
    if name.endswith(PARQUET_SUFFIXES):
        return _parquet_records(path)
    raise DatasetError(
        f"unknown dataset extension for {path}: expected one of "
        f"{', '.join(JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES)}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------------


def iter_questions(
    path: str | os.PathLike,
    field_map: FieldMap = FieldMap(),
    *,
    validate: bool = False,
    require_image: bool = True,
    image_root: str | os.PathLike | None = None,
) -> Iterator[Question | Skipped]:
    """Stream a dataset file, yielding a :class:`Question` or a :class:`Skipped` per record, in file order.

    Args:
      path: a ``.jsonl`` / ``.ndjson`` or ``.parquet`` file.
      field_map: record field names.
      validate: open (decode and check) every image now; unreadable ones are skipped as ``bad_image``.
        Otherwise images are only referenced and errors surface when they are loaded.
      require_image: skip records without an image (``missing_image``); when False they get ``image_ref=None``.
      image_root: folder that relative image paths are resolved against (default: the dataset file's folder).

    Raises:
      DatasetError: missing dataset file or unknown extension (raised by this call, before iterating);
        unreadable parquet container or missing pyarrow (raised while iterating).
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"dataset file not found: {p}")
    if p.is_dir():
        raise DatasetError(f"dataset path is a directory, not a file: {p}")
    records = iter_records(p)
    base_dir = Path(image_root) if image_root is not None else p.resolve().parent
    return _iter_parsed(p, records, field_map, base_dir, validate=validate, require_image=require_image)


def _iter_parsed(
    p: Path,
    records: Iterator[tuple[str, Any]],
    field_map: FieldMap,
    base_dir: Path,
    *,
    validate: bool,
    require_image: bool,
) -> Iterator[Question | Skipped]:
    seen: dict[str, str] = {}
    for index, (loc, record) in enumerate(records):
        origin = f"{p}:{loc}"
        if isinstance(record, RecordProblem):
            yield Skipped(str(p), loc, record.reason, record.message)
            continue
        try:
            q = _parse_record(
                record,
                fields=field_map,
                base_dir=base_dir,
                origin=origin,
                default_id=f"{p.stem}-{index}",
                require_image=require_image,
            )
        except RecordProblem as prob:
            rid = None
            if isinstance(record, Mapping):
                raw_id = record.get(field_map.id)
                rid = raw_id if isinstance(raw_id, str) else (None if raw_id is None else str(raw_id))
            yield Skipped(str(p), loc, prob.reason, prob.message, rid)
            continue
        if q.id in seen:
            yield Skipped(
                str(p), loc, SkipReason.DUPLICATE_ID, f"duplicate id {q.id!r} (first seen at {seen[q.id]})", q.id
            )
            continue
        if validate and q.images:
            try:
                for ref in q.images:
                    ref.open()
            except ImageError as exc:
                yield Skipped(str(p), loc, SkipReason.BAD_IMAGE, str(exc), q.id)
                continue
        seen[q.id] = loc
        yield q


def read_questions(
    path: str | os.PathLike,
    field_map: FieldMap = FieldMap(),
    *,
    validate: bool = False,
    require_image: bool = True,
    image_root: str | os.PathLike | None = None,
) -> QuestionSet:
    """Read a whole dataset file into a :class:`QuestionSet` (good questions + skipped records with reasons).

    Same arguments and errors as :func:`iter_questions`; never raises for a single bad record.
    """
    questions: list[Question] = []
    skipped: list[Skipped] = []
    for item in iter_questions(
        path, field_map, validate=validate, require_image=require_image, image_root=image_root
    ):
        (questions if isinstance(item, Question) else skipped).append(item)
    return QuestionSet(Path(path), questions, skipped)
