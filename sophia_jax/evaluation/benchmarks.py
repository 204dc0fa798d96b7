"""The eight benchmarks of the paper's evaluation, read from the files they publish.

Each benchmark is one :class:`Layout` in :data:`LAYOUTS`: which columns hold the id, question,
answer, options and images, how the answer type and hint are found, and which rows the paper
leaves out. :func:`load_benchmark` turns a published file (or a folder of them) into
:class:`EvalItem` records; bad records are skipped with their reason, never raised.

Field mappings (the column names of the published files; README "Evaluation" has the table):

========================  =====================================================================
mmmu                      MMMU/MMMU ``<Subject>/validation-*.parquet``: ``id``, ``question``,
                          ``options`` (a Python-literal list in a string), ``answer`` (a letter,
                          or the open answer), ``question_type`` (``multiple-choice`` | ``open``),
                          ``image_1`` .. ``image_7`` ({bytes, path}); ``<image k>`` in the text
                          names image k. Category: the subject, from the id.
mmmu_pro_vision           MMMU/MMMU_Pro ``vision/test-*.parquet``: ``id``, ``image`` (question and
                          options are inside it), ``options``, ``answer`` (letter), ``subject``.
mathvista                 AI4Math/MathVista ``testmini-*.parquet``: ``pid``, ``question``,
                          ``decoded_image`` (or ``image``, a path into images.zip), ``choices``,
                          ``answer`` (the option text for multiple choice), ``question_type``,
                          ``answer_type`` (integer | float | list | text), ``precision``,
                          ``query`` (its ``Hint:`` line is the hint), ``metadata.task``.
mathverse                 AI4Math/MathVerse ``testmini.parquet`` / ``.json``: ``sample_index``,
                          ``problem_version`` (only ``Vision Only`` is kept), ``query_wo`` (the
                          instruction; the question is in the image), ``image``, ``answer``,
                          ``question_type`` (``multi-choice`` | ``free-form``), ``metadata.subject``.
dynamath                  DynaMath/DynaMath_Sample ``sample<v>-*.parquet`` (one file set per
                          variant 1..10): ``id`` (the seed question), ``question``,
                          ``decoded_image``, ``ground_truth``, ``answer_type`` (``multiple
                          choice`` | ``float`` (3 decimals) | ``free form``), ``subject``.
mathvision                MathLLMs/MathVision ``test-*.parquet``: ``id``, ``question``,
                          ``options`` (empty for open questions), ``decoded_image`` (or
                          ``image`` into images.zip), ``answer``, ``subject``.
mv_math                   MV-MATH ``MV-MATH.json`` (a JSON array): ``problem_id``, ``question``
                          (``<image_k>`` names image k), ``input_image`` (file names, 2-8),
                          ``answer``, ``answer_type`` (``choice`` | ``single-step`` |
                          ``multi-step``), ``subject``.
olympiadbench             Hothan/OlympiadBench ``<config>/train-*.parquet``: ``id``, ``question``,
                          ``context`` (physics), ``final_answer`` (a list), ``answer_type``,
                          ``is_multiple_answer``, ``unit``, ``error`` (tolerance),
                          ``image_1`` .. ``image_9``. Config ``{OE,TP}_{MM,TO}_{subject}_{lang}_
                          {source}``: the theorem-proving ``TP_*`` configs are excluded by name.
========================  =====================================================================

Gold answers are normalised to what the judge compares: option texts become letters (MathVista),
a list of acceptable answers becomes the answer plus ``alternatives`` (MMMU open questions,
OlympiadBench). Item ids are unique per benchmark (DynaMath: ``<seed>-v<variant>``;
OlympiadBench: ``<config>/<id>``).
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import glob
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sophia_jax.data.datasets import (
    DatasetError,
    FieldMap,
    ImageRef,
    RecordProblem,
    Skipped,
    SkipReason,
    iter_records,
    parse_images,
    read_questions,
)
from sophia_jax.errors import UserError

__all__ = ["LAYOUTS", "BenchmarkSet", "EvalItem", "Layout", "load_benchmark", "items_from_questions"]

UNKNOWN_ANSWER_TYPE = "unknown_answer_type"


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One evaluation question, whatever file it came from.

    ``question`` is the text shown (image references already numbered), without hint or options;
    ``answer_type`` is one of :data:`sophia_jax.verify.ANSWER_TYPES`; ``group`` ties variants of
    one seed question together (DynaMath's worst-case accuracy).
    """

    id: str
    benchmark: str
    question: str
    answer: str
    answer_type: str
    images: tuple[ImageRef, ...] = ()
    choices: tuple[str, ...] | None = None
    hint: str | None = None
    precision: int | None = None  # decimals of a float answer
    tolerance: float | None = None  # absolute tolerance of a numeric answer
    alternatives: tuple[str, ...] = ()  # further accepted answers
    category: str = ""
    group: str = ""
    source: str = ""  # file:row, for messages


@dataclasses.dataclass
class BenchmarkSet:
    """What :func:`load_benchmark` read: the items, the skipped records, the rows left out by design."""

    name: str
    items: list[EvalItem]
    skipped: list[Skipped]
    excluded: collections.Counter  # reason -> rows (the paper's splits and exclusions)
    files: list[str]


# ---------------------------------------------------------------------------------------------- fields
def field(row: Mapping, name: str) -> Any:
    """``row[name]``, where a dotted name reads into nested structs (``metadata.task``); None if absent."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str:
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def as_list(value: Any) -> list | None:
    """A list field, also when published as a Python-literal string (MMMU's ``options``); None if absent."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if _missing(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return [text]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise RecordProblem(SkipReason.BAD_FIELD, f"cannot parse the list {text[:60]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise RecordProblem(SkipReason.BAD_FIELD, f"expected a list, got {type(value).__name__}")
    return list(value)


_IMAGE_REF = re.compile(r"<\s*image[\s_-]*(\d+)\s*>", re.IGNORECASE)


def number_image_references(text: str, num_images: int) -> str:
    """``<image 2>`` / ``<image_2>`` / ``<image2>`` in a question -> ``<Image-2>`` (InternVL's multi-image
    naming, VLMEvalKit's form); with a single image the reference is dropped (the image comes first)."""
    if num_images <= 1:
        return re.sub(r"[ \t]*" + _IMAGE_REF.pattern + r"[ \t]*", " ", text, flags=re.IGNORECASE).strip()
    return _IMAGE_REF.sub(lambda m: f"<Image-{m.group(1)}>", text)


# ------------------------------------------------------------------------------- per-benchmark rules
# Each rule reads one row (a dict); RecordProblem skips the row with its reason.
def _letter(index: int) -> str:
    return chr(ord("A") + index)


def _mmmu_type(row) -> str:
    return {"multiple-choice": "choice", "open": "free"}.get(str(row.get("question_type")), "")


def _mathvista_type(row) -> str:
    if row.get("question_type") == "multi_choice":
        return "choice"
    return {"integer": "integer", "float": "float", "list": "list", "text": "free"}.get(str(row.get("answer_type")), "")


def _mathvista_hint(row) -> str | None:
    query = row.get("query")
    if isinstance(query, str):
        first = query.strip().splitlines()[0] if query.strip() else ""
        if first.startswith("Hint:"):
            return first[len("Hint:"):].strip() or None
    return None


def _mathvista_precision(row) -> int | None:
    value = row.get("precision")
    return None if _missing(value) else int(value)


def _mathverse_type(row) -> str:
    return {"multi-choice": "choice", "free-form": "free"}.get(str(row.get("question_type")), "")


def _dynamath_type(row) -> str:
    return {"multiple choice": "choice", "float": "float", "free form": "free"}.get(str(row.get("answer_type")), "")


def _mathvision_type(row) -> str:
    return "choice" if as_list(row.get("options")) else "free"


def _mv_math_type(row) -> str:
    return {"choice": "choice", "single-step": "free", "multi-step": "free"}.get(str(row.get("answer_type")), "")


_OLYMPIAD_TYPES = ("Numerical", "Expression", "Equation", "Interval", "Tuple")


def _olympiad_type(row) -> str:
    kinds = [k.strip() for k in str(row.get("answer_type") or "").split(",") if k.strip()]
    return "free" if kinds and all(k.split("-")[0] in _OLYMPIAD_TYPES for k in kinds) else ""


def _olympiad_hint(row) -> str | None:
    chinese = row.get("language") == "Chinese"
    several = bool(row.get("is_multiple_answer"))
    unit = row.get("unit")
    parts = []
    if chinese:
        parts.append("本题有多个答案，请用英文逗号分隔写在\\boxed{}中。" if several else "请把最终答案写在\\boxed{}中。")
        if not _missing(unit):
            parts.append("单位写在\\boxed{}之外。")
    else:
        parts.append("The problem has several answers; put them in \\boxed{}, separated by commas." if several
                     else "Put the final answer in \\boxed{}.")
        if not _missing(unit):
            parts.append("Write the unit outside the \\boxed{}.")
    return " ".join(parts)


def _olympiad_tolerance(row) -> float | None:
    value = row.get("error")
    if _missing(value):
        return None
    try:
        return float(str(value).split(",")[0])
    except ValueError:
        raise RecordProblem(SkipReason.BAD_FIELD, f"error (tolerance) {value!r} is not a number") from None


def _olympiad_question(row) -> str:
    context, question = row.get("context"), row.get("question")
    return f"{context.strip()}\n{question}" if isinstance(context, str) and context.strip() else question


def _olympiad_exclude(row, path: Path) -> str | None:
    if _olympiad_config(path).startswith("TP_") or row.get("question_type") == "Theorem proof":
        return "theorem_proving"
    if "Need_human_evaluate" in str(row.get("answer_type")):
        return "theorem_proving"
    return None


def _olympiad_config(path: Path) -> str:
    for part in (path.parent.name, path.parent.parent.name, path.stem):
        m = re.search(r"(?:OE|TP)_(?:MM|TO)_[A-Za-z]+_[a-z]+_[A-Z]+", part)
        if m:
            return m.group(0)
    return path.stem


def _mathverse_exclude(row, path: Path) -> str | None:
    return None if row.get("problem_version") == "Vision Only" else "not_vision_only"


def _dynamath_variant(path: Path) -> str:
    m = re.search(r"sample(?:_variant)?(\d+)", path.name)
    return m.group(1) if m else path.stem


MMMU_PRO_VISION_QUESTION = ("The question and its options are shown in the image. Answer with the letter of the "
                            "correct option.")


# --------------------------------------------------------------------------------------------- layouts
@dataclasses.dataclass(frozen=True)
class Layout:
    """How one benchmark's published file maps onto :class:`EvalItem`.

    ``images`` are columns each holding one image (None where a question has fewer) or, with a
    single entry, one column holding a list. ``question`` is a column name or a rule; the rules
    take the row dict and raise :class:`RecordProblem` to skip it.
    """

    name: str
    title: str  # as the paper's tables name it
    pattern: str  # glob of the data files inside a downloaded folder
    id: str
    question: str | Callable[[Mapping], str]
    answer: str
    answer_type: Callable[[Mapping], str]  # "" = unknown (the record is skipped)
    images: tuple[str, ...]
    choices: str | None = None
    hint: Callable[[Mapping], str | None] | None = None
    category: str | Callable[[Mapping, Path], str] | None = None
    precision: Callable[[Mapping], int | None] | None = None
    tolerance: Callable[[Mapping], float | None] | None = None
    exclude: Callable[[Mapping, Path], str | None] | None = None  # a reason the paper leaves the row out
    id_of: Callable[[str, Mapping, Path], str] | None = None  # make ids unique across the benchmark's files
    group_of: Callable[[str, Mapping, Path], str] | None = None
    require_image: bool = True
    # The answer field may hold several accepted answers (a list, or a list literal in a string): the first is
    # the gold, the others alternatives; with the row's ``is_multiple_answer`` set they are one answer's parts.
    answer_list: bool = False
    skip_files: str | None = None  # paths matching this regex are not part of the split (DynaMath's sample_all)
    only_files: str | None = None  # only paths matching this regex are (MMMU-Pro's vision config, not standard)


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("mmmu", "MMMU", "**/validation-*.parquet", id="id", question="question", answer="answer",
           answer_type=_mmmu_type, images=tuple(f"image_{k}" for k in range(1, 8)), choices="options", answer_list=True,
           category=lambda row, path: re.sub(r"^[a-z]+_|_\d+$", "", str(row.get("id", "")))),
    Layout("mmmu_pro_vision", "MMMU Pro", "**/test-*.parquet", id="id",
           question=lambda row: MMMU_PRO_VISION_QUESTION, answer="answer", answer_type=lambda row: "choice",
           images=("image",), category="subject", only_files=r"(^|/)vision/[^/]*$"),
    Layout("mathvista", "MathVista", "**/testmini-*.parquet", id="pid", question="question", answer="answer",
           answer_type=_mathvista_type, images=("decoded_image", "image"), choices="choices", hint=_mathvista_hint,
           category="metadata.task", precision=_mathvista_precision),
    Layout("mathverse", "MathVerse", "**/testmini.parquet", id="sample_index", question="query_wo",
           answer="answer", answer_type=_mathverse_type, images=("image",), category="metadata.subject",
           exclude=_mathverse_exclude),
    Layout("dynamath", "DynaMath", "**/sample*.parquet", id="id", question="question", answer="ground_truth",
           answer_type=_dynamath_type, images=("decoded_image", "image"), category="subject",
           precision=lambda row: 3 if row.get("answer_type") == "float" else None,
           id_of=lambda rid, row, path: f"{rid}-v{_dynamath_variant(path)}", group_of=lambda rid, row, path: rid,
           skip_files=r"sample_all[^/]*$"),
    Layout("mathvision", "MathVision", "**/test-*.parquet", id="id", question="question", answer="answer",
           answer_type=_mathvision_type, images=("decoded_image", "image"), choices="options", category="subject"),
    Layout("mv_math", "MV-MATH", "**/MV-MATH.json", id="problem_id", question="question", answer="answer",
           answer_type=_mv_math_type, images=("input_image",), category="subject"),
    Layout("olympiadbench", "OlympiadBench", "**/*.parquet", id="id", question=_olympiad_question,
           answer="final_answer", answer_type=_olympiad_type, images=tuple(f"image_{k}" for k in range(1, 10)),
           hint=_olympiad_hint, category=lambda row, path: _olympiad_config(path), tolerance=_olympiad_tolerance,
           exclude=_olympiad_exclude, id_of=lambda rid, row, path: f"{_olympiad_config(path)}/{rid}",
           require_image=False, answer_list=True),
)}



# ---------------------------------------------------------------------------------------------- reading
def data_files(layout: Layout, path: str) -> list[str]:
    """A file, a glob, or a downloaded folder (searched with the layout's pattern), sorted."""
    if os.path.isdir(path):
        files = glob.glob(os.path.join(path, layout.pattern), recursive=True)
        if layout.pattern.endswith(".parquet"):  # MathVerse/MathVision also publish JSON twins
            files += glob.glob(os.path.join(path, layout.pattern[: -len(".parquet")] + ".json"), recursive=True)
    else:
        files = glob.glob(path) if any(c in path for c in "*?[") else [path]
    if layout.skip_files:
        files = [f for f in files if not re.search(layout.skip_files, os.path.abspath(f))]
    if layout.only_files:
        files = [f for f in files if re.search(layout.only_files, os.path.abspath(f))]
    files = sorted(set(files))
    if not files:
        raise DatasetError(f"benchmark {layout.name!r}: no data files at {path!r} (looked for {layout.pattern})")
    for f in files:
        if not os.path.isfile(f):
            raise DatasetError(f"benchmark {layout.name!r}: data file not found: {f}")
    return files


def _images(layout: Layout, row: Mapping, base: Path, origin: str) -> tuple[ImageRef, ...]:
    if len(layout.images) == 1:
        value = row.get(layout.images[0])
        return () if _missing(value) else parse_images(value, base, origin)
    refs: list[ImageRef] = []
    columns = [c for c in layout.images if c in row]
    if layout.images[0] in ("decoded_image",):  # an embedded copy and a path to the same image: the first present
        for column in columns:
            if not _missing(row.get(column)):
                return parse_images(row[column], base, origin)
        return ()
    for column in columns:
        if not _missing(row.get(column)):
            refs.extend(parse_images(row[column], base, f"{origin} {column}"))
    return tuple(refs)


def _item(layout: Layout, row: Any, path: Path, base: Path, origin: str) -> EvalItem | str:
    """One row as an item, or the reason the paper excludes it (a str); raises RecordProblem for bad rows."""
    if not isinstance(row, Mapping):
        raise RecordProblem(SkipReason.MALFORMED_RECORD, f"record is a {type(row).__name__}, not an object")
    if layout.exclude is not None:
        reason = layout.exclude(row, path)
        if reason:
            return reason
    raw_id = field(row, layout.id)
    if _missing(raw_id):
        raise RecordProblem(SkipReason.MISSING_ID, f"id field {layout.id!r} is missing")
    rid = _text(raw_id)
    item_id = layout.id_of(rid, row, path) if layout.id_of else rid

    question = layout.question(row) if callable(layout.question) else field(row, layout.question)
    if not isinstance(question, str) or not question.strip():
        raise RecordProblem(SkipReason.EMPTY_QUESTION, "the question text is missing")

    raw_answer = field(row, layout.answer)
    golds = as_list(raw_answer) if layout.answer_list else (None if _missing(raw_answer) else [raw_answer])
    if not golds or any(_missing(g) for g in golds):
        raise RecordProblem(SkipReason.MISSING_ANSWER, f"answer field {layout.answer!r} is missing")
    golds = [_text(g) for g in golds]
    if len(golds) > 1 and row.get("is_multiple_answer"):
        golds = [", ".join(golds)]

    answer_type = layout.answer_type(row)
    if not answer_type:
        raise RecordProblem(UNKNOWN_ANSWER_TYPE, f"unknown answer type for {layout.name}: "
                                                 f"{row.get('answer_type', row.get('question_type'))!r}")
    choices = None
    if layout.choices is not None:
        options = as_list(field(row, layout.choices))
        choices = tuple(_text(c) for c in options) if options else None
    if answer_type == "choice" and choices and golds[0] in choices and not re.fullmatch(r"[A-Z]", golds[0]):
        golds[0] = _letter(choices.index(golds[0]))  # an option's text as gold -> its letter
    if answer_type == "choice" and not re.fullmatch(r"\(?[A-Za-z]\)?", golds[0]):
        raise RecordProblem(SkipReason.BAD_FIELD, f"multiple-choice answer {golds[0]!r} is not an option letter")

    images = _images(layout, row, base, origin)
    if not images and layout.require_image:
        raise RecordProblem(SkipReason.MISSING_IMAGE, f"no image in {', '.join(layout.images)}")
    if choices and len(images) > 1:  # MMMU options may be images themselves ("<image 3>")
        choices = tuple(number_image_references(c, len(images)) for c in choices)
    if callable(layout.category):
        category = layout.category(row, path)
    else:
        category = _text(field(row, layout.category)) if layout.category and field(row, layout.category) else ""
    return EvalItem(
        id=item_id, benchmark=layout.name, question=number_image_references(question.strip(), len(images)),
        answer=golds[0], alternatives=tuple(golds[1:]), answer_type=answer_type, images=images, choices=choices,
        hint=layout.hint(row) if layout.hint else None,
        precision=layout.precision(row) if layout.precision else None,
        tolerance=layout.tolerance(row) if layout.tolerance else None,
        category=category, group=layout.group_of(rid, row, path) if layout.group_of else "", source=origin,
    )


def _rows(layout: Layout, path: Path, base: Path) -> Iterator[EvalItem | str | Skipped]:
    for loc, row in iter_records(path):
        origin = f"{path}:{loc}"
        if isinstance(row, RecordProblem):
            yield Skipped(str(path), loc, row.reason, row.message)
            continue
        try:
            yield _item(layout, row, path, base, origin)
        except RecordProblem as problem:
            rid = field(row, layout.id) if isinstance(row, Mapping) else None
            yield Skipped(str(path), loc, problem.reason, problem.message, None if _missing(rid) else _text(rid))


def load_benchmark(name: str, path: str, *, image_root: str | None = None, limit: int = 0) -> BenchmarkSet:
    """Read benchmark ``name`` (a key of :data:`LAYOUTS`) from ``path``: a file, a glob or its downloaded folder.

    Relative image paths resolve against ``image_root`` (a folder or a ``.zip``; default: each data file's
    folder). ``limit`` keeps the first N items (0 = all). Raises :class:`UserError` for an unknown benchmark
    and :class:`DatasetError` for missing or unreadable files; bad records are skipped with their reason.
    """
    if name not in LAYOUTS:
        raise UserError(f"unknown benchmark {name!r}; known: {', '.join(LAYOUTS)} (and 'questions' for a "
                        f"question dataset in the generate format)")
    layout = LAYOUTS[name]
    files = data_files(layout, path)
    items: list[EvalItem] = []
    skipped: list[Skipped] = []
    excluded: collections.Counter = collections.Counter()
    seen: dict[str, str] = {}
    for file in files:
        p = Path(file)
        base = Path(image_root) if image_root else p.resolve().parent
        for entry in _rows(layout, p, base):
            if isinstance(entry, str):
                excluded[entry] += 1
            elif isinstance(entry, Skipped):
                skipped.append(entry)
            elif entry.id in seen:
                skipped.append(Skipped(file, entry.source.rsplit(":", 1)[-1], SkipReason.DUPLICATE_ID,
                                       f"duplicate id {entry.id!r} (first at {seen[entry.id]})", entry.id))
            elif not limit or len(items) < limit:
                seen[entry.id] = entry.source
                items.append(entry)
    return BenchmarkSet(name, items, skipped, excluded, files)


def items_from_questions(path: str, *, benchmark: str = "questions", image_root: str | None = None,
                         fields: FieldMap = FieldMap(), limit: int = 0) -> BenchmarkSet:
    """A question dataset in the ``generate`` format (``datasets.read_questions``) as evaluation items.

    The answer type is ``choice`` for a single-letter answer, else ``free`` (an option's text as the answer is
    still matched against the options by the judge).
    """
    qs = read_questions(path, fields, image_root=image_root)
    items = []
    for q in qs.questions[: limit or None]:
        letter = bool(re.fullmatch(r"\(?[A-H]\)?", q.answer.strip()))
        items.append(EvalItem(
            id=q.id, benchmark=benchmark, question=number_image_references(q.question.strip(), len(q.images)),
            answer=q.answer.strip(), answer_type="choice" if letter else "free",
            images=q.images, choices=q.choices, hint=q.hint, source=q.source,
        ))
    return BenchmarkSet(benchmark, items, list(qs.skipped), collections.Counter(), [str(path)])
