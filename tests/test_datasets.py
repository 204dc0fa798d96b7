"""Tests for sophia_jax.data.datasets (JSONL / parquet question datasets)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sophia_jax.data.datasets import (
    DatasetError,
    FieldMap,
    ImageRef,
    Question,
    Skipped,
    SkipReason,
    iter_questions,
    read_questions,
)
from sophia_jax.data.images import ImageError, TilingConfig, tile_image

CFG = TilingConfig(tile_size=14, max_tiles=4)


def _img(w: int = 30, h: int = 20, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def images(tmp_path):
    (tmp_path / "imgs").mkdir()
    a, b = _img(seed=1), _img(40, 10, seed=2)
    a.save(tmp_path / "imgs" / "a.png")
    b.save(tmp_path / "b.jpg", quality=95)
    return {"a": a, "b_path": tmp_path / "b.jpg"}


# ----------------------------------------------------------------------------------------------------------------
# JSONL
# ----------------------------------------------------------------------------------------------------------------


def test_jsonl_basic_parsing(tmp_path, images):
    inline = _img(25, 25, seed=3)
    b64 = base64.b64encode(_png(inline)).decode()
    path = _write_jsonl(
        tmp_path / "qs.jsonl",
        [
            {"id": "q1", "image": "imgs/a.png", "question": "What colour?", "answer": "red",
             "choices": ["red", "blue"], "hint": "look closely"},
            {"id": 2, "image": str(images["b_path"]), "question": "How many?", "answer": 3},
            {"id": "q3", "image": b64, "question": "Inline?", "answer": "yes"},
            {"id": "q4", "image": "data:image/png;base64," + b64, "question": "URI?", "answer": "yes", "hint": ""},
            {"id": "q5", "image": {"bytes": b64, "path": "ignored.png"}, "question": "HF dict?", "answer": "A"},
            {"id": "q6", "image": {"bytes": None, "path": "imgs/a.png"}, "question": "HF path?", "answer": "B"},
            {"id": "q7", "image": ["imgs/a.png"], "question": "list of one?", "answer": "C"},
        ],
    )  # fmt: skip
    result = read_questions(path)
    assert result.num_skipped == 0, [str(s) for s in result.skipped]
    assert [q.id for q in result] == ["q1", "2", "q3", "q4", "q5", "q6", "q7"]
    q1 = result[0]
    assert isinstance(q1, Question)
    assert q1.question == "What colour?" and q1.answer == "red"
    assert q1.choices == ("red", "blue") and q1.hint == "look closely"
    assert q1.image_ref.path == tmp_path / "imgs" / "a.png" and q1.image_ref.data is None
    assert q1.source == f"{path}:line 1"
    np.testing.assert_array_equal(q1.image_ref.load(CFG), tile_image(images["a"], CFG))
    q2 = result[1]
    assert q2.answer == "3" and q2.choices is None and q2.hint is None
    assert q2.image_ref.path == images["b_path"]
    want_inline = tile_image(inline, CFG)
    for q in result[2:5]:
        assert q.image_ref.path is None and q.image_ref.data == _png(inline)
        np.testing.assert_array_equal(q.image_ref.load(CFG), want_inline)
    assert result[3].hint is None  # empty hint -> None
    assert result[5].image_ref.path == tmp_path / "imgs" / "a.png"
    assert result[6].image_ref.path == tmp_path / "imgs" / "a.png"
    assert result.skip_counts() == {}
    assert "7 questions, 0 skipped" in result.summary()


def test_field_map_and_image_root(tmp_path, images):
    path = _write_jsonl(
        tmp_path / "mapped.ndjson",
        [{"pid": "x", "picture": "a.png", "problem": "Solve it", "solution": "42", "options": ["41", "42"],
          "context": "math", "question": "not this one"}],
    )  # fmt: skip
    fm = FieldMap(id="pid", image="picture", question="problem", answer="solution", choices="options", hint="context")
    (q,) = read_questions(path, fm, image_root=tmp_path / "imgs").questions
    assert (q.id, q.question, q.answer, q.choices, q.hint) == ("x", "Solve it", "42", ("41", "42"), "math")
    assert q.image_ref.path == tmp_path / "imgs" / "a.png"
    # optional fields can be switched off
    (q,) = read_questions(path, FieldMap(id="pid", image="picture", question="problem", answer="solution",
                                         choices=None, hint=None), image_root=tmp_path / "imgs").questions  # fmt: skip
    assert q.choices is None and q.hint is None


def test_missing_id_gets_synthetic_id(tmp_path, images):
    path = _write_jsonl(
        tmp_path / "noid.jsonl",
        [
            {"image": "imgs/a.png", "question": "q", "answer": "a"},
            {"image": "imgs/a.png", "question": "q", "answer": "b"},
        ],
    )
    assert [q.id for q in read_questions(path)] == ["noid-0", "noid-1"]


def test_jsonl_bad_records_are_skipped_with_reasons(tmp_path, images):
    path = _write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"id": "ok", "image": "imgs/a.png", "question": "fine", "answer": "1"},  # line 1
            "{not json",  # line 2
            {"id": "e", "image": "imgs/a.png", "question": "   ", "answer": "1"},  # line 3
            {"id": "m", "image": "imgs/a.png", "question": "no answer"},  # line 4
            {"id": "ok", "image": "imgs/a.png", "question": "dup", "answer": "1"},  # line 5
            {"id": "ni", "question": "no image", "answer": "1"},  # line 6
            {"id": "bc", "image": "imgs/a.png", "question": "q", "answer": "1", "choices": "A,B"},  # line 7
            "[1, 2, 3]",  # line 8
            "",  # line 9: blank, ignored
            {"id": "ea", "image": "imgs/a.png", "question": "q", "answer": " "},  # line 10
            {"id": "", "image": "imgs/a.png", "question": "q", "answer": "1"},  # line 11
            {"id": "bi", "image": 12, "question": "q", "answer": "1"},  # line 12
            {"id": "bq", "image": "imgs/a.png", "question": ["x"], "answer": "1"},  # line 13
            {"id": "mi", "image": [], "question": "q", "answer": "1"},  # line 14
            {"id": "bb", "image": "data:image/png;base64,@@@@", "question": "q", "answer": "1"},  # line 15
            {"id": "ok2", "image": "imgs/missing.png", "question": "lazy", "answer": "1"},  # line 16: kept (lazy)
        ],
    )  # fmt: skip
    result = read_questions(path)
    assert [q.id for q in result] == ["ok", "ok2"]
    got = {(s.location, s.reason) for s in result.skipped}
    assert got == {
        ("line 2", SkipReason.MALFORMED_RECORD),
        ("line 3", SkipReason.EMPTY_QUESTION),
        ("line 4", SkipReason.MISSING_ANSWER),
        ("line 5", SkipReason.DUPLICATE_ID),
        ("line 6", SkipReason.MISSING_IMAGE),
        ("line 7", SkipReason.BAD_FIELD),
        ("line 8", SkipReason.MALFORMED_RECORD),
        ("line 10", SkipReason.MISSING_ANSWER),
        ("line 11", SkipReason.MISSING_ID),
        ("line 12", SkipReason.BAD_IMAGE),
        ("line 13", SkipReason.BAD_FIELD),
        ("line 14", SkipReason.MISSING_IMAGE),
        ("line 15", SkipReason.BAD_IMAGE),
    }
    assert result.num_skipped == 13
    assert result.skip_counts()[SkipReason.MALFORMED_RECORD] == 2
    for s in result.skipped:
        assert isinstance(s, Skipped)
        assert str(path) in str(s) and s.location in str(s)
    dup = next(s for s in result.skipped if s.reason == SkipReason.DUPLICATE_ID)
    assert "first seen at line 1" in dup.message and dup.record_id == "ok"
    # the missing image is only noticed when loading, with a message naming file and line
    with pytest.raises(ImageError, match=r"missing\.png.*bad\.jsonl:line 16"):
        result[1].image_ref.load(CFG)


def test_invalid_utf8_line_is_skipped(tmp_path, images):
    path = tmp_path / "enc.jsonl"
    good = json.dumps({"id": "g", "image": "imgs/a.png", "question": "q", "answer": "a"}).encode()
    path.write_bytes(good + b"\n" + b'{"id": "\xff\xfe"}\n')
    result = read_questions(path)
    assert [q.id for q in result] == ["g"]
    assert [(s.location, s.reason) for s in result.skipped] == [("line 2", SkipReason.MALFORMED_RECORD)]


def test_validate_opens_images(tmp_path, images):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    png = _png(_img())
    (tmp_path / "trunc.png").write_bytes(png[: len(png) // 2])
    rows = [
        {"id": "good", "image": "imgs/a.png", "question": "q", "answer": "a"},
        {"id": "missing", "image": "imgs/nope.png", "question": "q", "answer": "a"},
        {"id": "corrupt", "image": "corrupt.png", "question": "q", "answer": "a"},
        {"id": "trunc", "image": "trunc.png", "question": "q", "answer": "a"},
        {"id": "inline_bad", "image": {"bytes": base64.b64encode(b"nope").decode()}, "question": "q", "answer": "a"},
        {"id": "missing", "image": "imgs/a.png", "question": "q", "answer": "a"},  # first 'missing' was dropped
    ]
    path = _write_jsonl(tmp_path / "v.jsonl", rows)
    lazy = read_questions(path)
    assert len(lazy) == 5 and lazy.skip_counts() == {SkipReason.DUPLICATE_ID: 1}
    strict = read_questions(path, validate=True)
    assert [q.id for q in strict] == ["good", "missing"]
    assert strict.skip_counts() == {SkipReason.BAD_IMAGE: 4}
    msgs = {s.location: s.message for s in strict.skipped}
    assert "not found" in msgs["line 2"] and "nope.png" in msgs["line 2"]
    assert "corrupt.png" in msgs["line 3"]
    assert "truncated" in msgs["line 4"]
    assert "v.jsonl:line 5" in msgs["line 5"]


def test_require_image_false(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"id": "t", "question": "text only", "answer": "a"}])
    (q,) = read_questions(path, require_image=False).questions
    assert q.image_ref is None


def test_iter_questions_streams_in_order(tmp_path, images):
    path = _write_jsonl(
        tmp_path / "s.jsonl",
        [{"id": "a", "image": "imgs/a.png", "question": "q", "answer": "1"}, "oops",
         {"id": "b", "image": "imgs/a.png", "question": "q", "answer": "2"}],
    )  # fmt: skip
    items = list(iter_questions(path))
    assert [type(x).__name__ for x in items] == ["Question", "Skipped", "Question"]


def test_dataset_level_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_questions(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="not found"):
        iter_questions(tmp_path / "missing.jsonl")  # eager, before iterating
    (tmp_path / "data.csv").write_text("id,question\n")
    with pytest.raises(DatasetError, match="unknown dataset extension"):
        read_questions(tmp_path / "data.csv")
    (tmp_path / "fake.parquet").write_bytes(b"not parquet")
    pytest.importorskip("pyarrow")
    with pytest.raises(DatasetError, match="fake.parquet"):
        read_questions(tmp_path / "fake.parquet")
    assert issubclass(DatasetError, ValueError)


def test_image_ref_requires_one_source():
    with pytest.raises(ValueError):
        ImageRef()
    with pytest.raises(ValueError):
        ImageRef(path=Path("a.png"), data=b"x")


# ----------------------------------------------------------------------------------------------------------------
# Parquet
# ----------------------------------------------------------------------------------------------------------------


def test_parquet_parsing_and_bad_rows(tmp_path, images):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    inline = _img(33, 11, seed=9)
    raw = _png(inline)
    hf_image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "id": ["p0", "p1", "p2", "p3", "p4", "p1", "p6"],
            "image": pa.array(
                [
                    {"bytes": raw, "path": None},
                    {"bytes": None, "path": "imgs/a.png"},
                    {"bytes": raw, "path": "x.png"},
                    {"bytes": None, "path": None},
                    {"bytes": raw, "path": None},
                    {"bytes": raw, "path": None},
                    {"bytes": b"\x89PNG\r\n\x1a\nbroken", "path": None},
                ],
                type=hf_image,
            ),
            "problem": ["q0", "q1", "", "q3", "q4", "q5", "q6"],
            "answer": ["a0", "a1", "a2", "a3", None, "a5", "a6"],
            "choices": pa.array([["x", "y"], None, None, None, None, None, None], type=pa.list_(pa.string())),
            "hint": [None, "h1", None, None, None, None, None],
        }
    )
    path = tmp_path / "qs.parquet"
    pq.write_table(table, path, row_group_size=3)
    result = read_questions(path, FieldMap(question="problem"))
    assert [q.id for q in result] == ["p0", "p1", "p6"]
    p0, p1, p6 = result
    assert p0.choices == ("x", "y") and p0.hint is None and p0.source == f"{path}:row 0"
    assert p0.image_ref.data == raw
    np.testing.assert_array_equal(p0.image_ref.load(CFG), tile_image(inline, CFG))
    assert p1.image_ref.path == tmp_path / "imgs" / "a.png" and p1.hint == "h1"
    assert {(s.location, s.reason) for s in result.skipped} == {
        ("row 2", SkipReason.EMPTY_QUESTION),
        ("row 3", SkipReason.MISSING_IMAGE),
        ("row 4", SkipReason.MISSING_ANSWER),
        ("row 5", SkipReason.DUPLICATE_ID),
    }
    with pytest.raises(ImageError, match="qs.parquet:row 6"):
        p6.image_ref.load(CFG)
    strict = read_questions(path, FieldMap(question="problem"), validate=True)
    assert [q.id for q in strict] == ["p0", "p1"]
    assert strict.skip_counts()[SkipReason.BAD_IMAGE] == 1


def test_parquet_plain_binary_and_path_columns(tmp_path, images):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    raw = _png(_img(seed=4))
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"id": [1, 2], "img_bytes": [raw, b""], "question": ["a", "b"], "answer": [1.5, 2]}), path)
    result = read_questions(path, FieldMap(image="img_bytes"))
    assert [q.id for q in result] == ["1"]
    assert result[0].answer == "1.5" and result[0].image_ref.data == raw
    assert [(s.location, s.reason) for s in result.skipped] == [("row 1", SkipReason.BAD_IMAGE)]
    path2 = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"id": ["a"], "image": ["imgs/a.png"], "question": ["q"], "answer": ["x"]}), path2)
    (q,) = read_questions(path2).questions
    np.testing.assert_array_equal(q.image_ref.load(CFG), tile_image(images["a"], CFG))


def test_multi_image_lists_json_arrays_and_zipped_images(tmp_path, images):
    import zipfile

    with zipfile.ZipFile(tmp_path / "pics.zip", "w") as zf:
        zf.writestr("pics/z.png", _png(_img(seed=3)))
    rows = [{"id": "m1", "image": ["imgs/a.png", "b.jpg"], "question": "Image-1 vs Image-2?", "answer": "A"},
            {"id": "m2", "image": [], "question": "none?", "answer": "B"},
            {"id": "m3", "image": ["imgs/a.png", None], "question": "half?", "answer": "C"}]
    path = tmp_path / "qs.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    qs = read_questions(path)
    (m1,) = qs.questions
    assert len(m1.images) == 2 and m1.image_ref == m1.images[0]
    assert m1.images[1].load(CFG).shape == tile_image(Image.open(images["b_path"]), CFG).shape
    assert {s.record_id: s.reason for s in qs.skipped} == {"m2": SkipReason.MISSING_IMAGE, "m3": SkipReason.MISSING_IMAGE}
    assert qs.skipped[0].location == "item 1"

    zipped = read_questions(_write_jsonl(tmp_path / "z.jsonl", [
        {"id": "z", "image": "z.png", "question": "zipped?", "answer": "1"},
        {"id": "gone", "image": "nowhere.png", "question": "?", "answer": "1"}]), image_root=tmp_path / "pics.zip")
    z, gone = zipped.questions
    assert z.image_ref.archive == tmp_path / "pics.zip" and z.image_ref.load(CFG).ndim == 4  # found as pics/z.png
    with pytest.raises(ImageError, match="not in the archive"):
        gone.image_ref.load(CFG)

    (tmp_path / "bad.json").write_text('{"id": 1}', encoding="utf-8")
    with pytest.raises(DatasetError, match="array"):
        read_questions(tmp_path / "bad.json")
