"""Tiny benchmark files in each benchmark's published layout (column names, types, image encodings).

The schemas follow the files as published (Hugging Face ``datasets`` parquet: an image column is a
struct ``{bytes: binary, path: string}``; MV-MATH a JSON array with image file names). Each writer
returns the path to load and puts a few deliberately bad records among the good ones.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# A test policy's words: the toy's, InternVL's image labels, and boxed answers so that random weights are
# sometimes right (verdicts are a real mix).
POLICY_WORDS = ("the", "image", "shows", "a", "so", "answer", "is", "3", "4", "5", "A", "B", ".", ",", "Image-1:",
                "Image-2:", "Image-3:", "<Image-1>", "question", "?", *(f"\\boxed{{{a}}}" for a in ("3", "4", "A", "B")))

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(width: int = 20, height: int = 12, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def image(seed: int = 0, width: int = 20, height: int = 12) -> dict:
    return {"bytes": png(width, height, seed), "path": f"img{seed}.png"}


def _write(path: str, columns: dict[str, pa.DataType], rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    schema = pa.schema(list(columns.items()))
    table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows], schema=schema)
    pq.write_table(table, path)
    return path


def mmmu(root: str) -> str:
    """MMMU/MMMU: one folder per subject, ``validation-00000-of-00001.parquet``."""
    cols = {"id": pa.string(), "question": pa.string(), "options": pa.string(), "explanation": pa.string(),
            **{f"image_{k}": IMAGE for k in range(1, 8)}, "img_type": pa.string(), "answer": pa.string(),
            "topic_difficulty": pa.string(), "question_type": pa.string(), "subfield": pa.string()}
    rows = [
        {"id": "validation_Accounting_1", "question": "<image 1> What is the total?", "options": "['10', '12', '14']",
         "image_1": image(1), "answer": "B", "question_type": "multiple-choice", "img_type": "['Tables']"},
        {"id": "validation_Accounting_2", "question": "Compare <image 1> with <image 2>. Which is larger?",
         "options": "['<image 1>', 'the second']", "image_1": image(2), "image_2": image(3, 30, 10), "answer": "A",
         "question_type": "multiple-choice"},
        {"id": "validation_Accounting_3", "question": "What rate does <image 1> show?", "options": "[]",
         "image_1": image(4), "answer": "['1.5', '3/2']", "question_type": "open"},
        {"id": "validation_Accounting_4", "question": "No image here?", "options": "['a', 'b']", "answer": "A",
         "question_type": "multiple-choice"},  # missing_image
        {"id": "validation_Accounting_5", "question": "<image 1> ?", "options": "['a', 'b']", "image_1": image(5),
         "answer": "A", "question_type": "ranking"},  # unknown_answer_type
        {"id": "validation_Accounting_6", "question": "<image 1> ?", "options": "['a', 'b'", "image_1": image(6),
         "answer": "A", "question_type": "multiple-choice"},  # bad_field: options do not parse
    ]
    return _write(os.path.join(root, "MMMU", "Accounting", "validation-00000-of-00001.parquet"), cols, rows)


def mmmu_pro_vision(root: str) -> str:
    cols = {"id": pa.string(), "image": IMAGE, "options": pa.string(), "answer": pa.string(), "subject": pa.string()}
    rows = [
        {"id": "test_Art_1", "image": image(7, 40, 30), "options": "['red', 'blue', 'green', 'black']",
         "answer": "C", "subject": "Art"},
        {"id": "test_Math_2", "image": image(8), "options": "['1', '2']", "answer": "A", "subject": "Math"},
        {"id": "test_Math_3", "image": image(9), "options": "['1', '2']", "answer": None, "subject": "Math"},
    ]
    standard = {"id": pa.string(), "question": pa.string(), "options": pa.string(), "image_1": IMAGE,
                "answer": pa.string(), "subject": pa.string()}  # the other configs of the download
    _write(os.path.join(root, "MMMU_Pro", "standard (10 options)", "test-00000-of-00001.parquet"), standard,
           [{"id": "test_Art_1", "question": "<image 1> Which?", "options": "['a', 'b']", "image_1": image(7),
             "answer": "A", "subject": "Art"}])
    return _write(os.path.join(root, "MMMU_Pro", "vision", "test-00000-of-00001.parquet"), cols, rows)


METADATA = pa.struct([("category", pa.string()), ("context", pa.string()), ("grade", pa.string()),
                      ("img_height", pa.int64()), ("img_width", pa.int64()), ("language", pa.string()),
                      ("skills", pa.list_(pa.string())), ("source", pa.string()), ("split", pa.string()),
                      ("task", pa.string())])


def _meta(task: str) -> dict:
    return {"category": "math-targeted-vqa", "context": "chart", "grade": "high school", "img_height": 12,
            "img_width": 20, "language": "english", "skills": ["arithmetic reasoning"], "source": "x",
            "split": "testmini", "task": task}


def mathvista(root: str) -> tuple[str, str]:
    """AI4Math/MathVista ``data/testmini-*.parquet`` plus an ``images.zip`` for rows without decoded_image."""
    cols = {"pid": pa.string(), "question": pa.string(), "image": pa.string(), "decoded_image": IMAGE,
            "choices": pa.list_(pa.string()), "unit": pa.string(), "precision": pa.float64(), "answer": pa.string(),
            "question_type": pa.string(), "answer_type": pa.string(), "metadata": METADATA, "query": pa.string()}

    def row(pid, question, answer, qtype, atype, task, hint, choices=None, precision=None, decoded=True):
        query = f"Hint: {hint}\nQuestion: {question}"
        if choices:
            query += "\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
        return {"pid": pid, "question": question, "image": f"images/{pid}.png",
                "decoded_image": image(int(pid)) if decoded else None, "choices": choices, "precision": precision,
                "answer": answer, "question_type": qtype, "answer_type": atype, "metadata": _meta(task),
                "query": query}

    rows = [
        row("1", "Which angle is marked?", "45°", "multi_choice", "text", "geometry problem solving",
            "Give the letter of the correct option at the end.", choices=["30°", "45°", "60°"]),
        row("2", "How many bars are there?", "3", "free_form", "integer", "figure question answering",
            "Give an integer at the end."),
        row("3", "What fraction is shaded?", "0.6", "free_form", "float", "figure question answering",
            "Give a number with one decimal place at the end.", precision=1.0),
        row("4", "Between which years does it peak?", "[2007, 2008]", "free_form", "list", "textbook question answering",
            "Give a Python list at the end.", decoded=False),
        row("5", "Odd one?", "7", "free_form", "complex", "math word problem", "x"),  # unknown_answer_type
    ]
    path = _write(os.path.join(root, "MathVista", "data", "testmini-00000-of-00001.parquet"), cols, rows)
    archive = os.path.join(root, "MathVista", "images.zip")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/4.png", png(24, 16, seed=4))
    return path, archive


def mathverse(root: str) -> str:
    meta = pa.struct([("split", pa.string()), ("source", pa.string()), ("subject", pa.string()),
                      ("subfield", pa.string())])
    cols = {"sample_index": pa.string(), "problem_index": pa.string(), "problem_version": pa.string(),
            "question": pa.string(), "image": IMAGE, "answer": pa.string(), "question_type": pa.string(),
            "metadata": meta, "query_wo": pa.string(), "query_cot": pa.string(), "question_for_eval": pa.string()}
    m = lambda subject: {"split": "testmini", "source": "GeoQA", "subject": subject, "subfield": "Angle"}  # noqa: E731
    rows = [
        {"sample_index": "5", "problem_index": "1", "problem_version": "Vision Only", "question": "", "image": image(10),
         "answer": "B", "question_type": "multi-choice", "metadata": m("Plane Geometry"),
         "query_wo": "According to the question in the image, give the correct option letter.", "query_cot": "..."},
        {"sample_index": "11", "problem_index": "2", "problem_version": "Vision Only", "question": "",
         "image": image(11), "answer": "12", "question_type": "free-form", "metadata": m("Functions"),
         "query_wo": "According to the question in the image, give the final value.", "query_cot": "..."},
        {"sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant", "question": "Find x.",
         "image": image(12), "answer": "B", "question_type": "multi-choice", "metadata": m("Plane Geometry"),
         "query_wo": "Find x. Choices: ...", "query_cot": "..."},
    ]
    return _write(os.path.join(root, "MathVerse", "testmini.parquet"), cols, rows)


def dynamath(root: str) -> str:
    cols = {"id": pa.string(), "question": pa.string(), "image": pa.string(), "decoded_image": IMAGE,
            "ground_truth": pa.string(), "answer_type": pa.string(), "subject": pa.string(),
            "knowledge_level": pa.string()}
    folder = os.path.join(root, "DynaMath", "data")
    for variant in (1, 2):
        rows = [
            {"id": "1", "question": "What is the slope?", "image": f"images/1-{variant}.png",
             "decoded_image": image(20 + variant), "ground_truth": f"{0.125 * variant:.3f}", "answer_type": "float",
             "subject": "analytic geometry", "knowledge_level": "high school"},
            {"id": "2", "question": "Which graph is shown?\nA: sin\nB: cos", "image": "images/2.png",
             "decoded_image": image(30 + variant), "ground_truth": "A", "answer_type": "multiple choice",
             "subject": "graph theory", "knowledge_level": "undergraduate"},
        ]
        _write(os.path.join(folder, f"sample{variant}-00000-of-00001.parquet"), cols, rows)
    _write(os.path.join(folder, "sample_all-00000-of-00001.parquet"), cols, [])
    return os.path.join(root, "DynaMath")


def mathvision(root: str) -> str:
    cols = {"id": pa.string(), "question": pa.string(), "options": pa.list_(pa.string()), "image": pa.string(),
            "decoded_image": IMAGE, "answer": pa.string(), "solution": pa.string(), "level": pa.int64(),
            "subject": pa.string()}
    rows = [
        {"id": "1", "question": "<image1>\nWhich shape comes next?", "options": ["A", "B", "C", "D", "E"],
         "image": "images/1.jpg", "decoded_image": image(40), "answer": "C", "level": 3, "subject": "logic"},
        {"id": "2", "question": "<image1>\nHow many dots?", "options": [], "image": "images/2.jpg",
         "decoded_image": image(41), "answer": "17", "level": 1, "subject": "counting"},
        {"id": "2", "question": "dup", "options": [], "image": "images/2.jpg", "decoded_image": image(41),
         "answer": "17", "level": 1, "subject": "counting"},  # duplicate_id
    ]
    return _write(os.path.join(root, "MathVision", "data", "test-00000-of-00001.parquet"), cols, rows)


def mv_math(root: str, *, broken_image: bool = True) -> tuple[str, str]:
    """MV-MATH: ``data/MV-MATH.json`` (an array), image files by name in ``images/``."""
    images = os.path.join(root, "MV-MATH", "images")
    os.makedirs(images, exist_ok=True)
    for name, seed in (("p1_1.jpg", 50), ("p1_2.jpg", 51), ("p2_1.jpg", 52), ("p2_2.jpg", 53), ("p2_3.jpg", 54),
                       ("p3_1.jpg", 55), ("p3_2.jpg", 56)):
        Image.open(io.BytesIO(png(18 + seed % 7, 12, seed))).save(os.path.join(images, name), quality=95)
    if broken_image:
        with open(os.path.join(images, "p4_1.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff not really a jpeg")
    rows = [
        {"problem_id": 1, "question": "Which solid comes from rotating a figure?\nA.\n\n<image_1>\nB.\n\n<image_2>",
         "input_image": ["p1_1.jpg", "p1_2.jpg"], "is_multi_img": True, "answer": "B", "answer_type": "choice",
         "difficulty": "Low", "grade": "Junior", "subject": "Solid Geometry", "image_relavance": "0", "analysis": ""},
        {"problem_id": 2, "question": "Given <image_1>, <image_2> and <image_3>, what is the perimeter?",
         "input_image": ["p2_1.jpg", "p2_2.jpg", "p2_3.jpg"], "is_multi_img": True, "answer": "15.6",
         "answer_type": "single-step", "subject": "Combinatorial Geometry"},
        {"problem_id": 3, "question": "(1) Find B in <image_1>; (2) find D in <image_2>.",
         "input_image": ["p3_1.jpg", "p3_2.jpg"], "is_multi_img": True, "answer": "(1) (3, 5); (2) (3, 4)",
         "answer_type": "multi-step", "subject": "Analytic Geometry"},
        {"problem_id": 5, "question": "Which one? <image_1> <image_2>", "input_image": ["p1_1.jpg", "p1_2.jpg"],
         "answer": "A", "answer_type": "proof", "subject": "Algebra"},  # unknown_answer_type
    ]
    if broken_image:
        rows.append({"problem_id": 4, "question": "What is shown? <image_1> <image_2>",
                     "input_image": ["p4_1.jpg", "p1_2.jpg"], "answer": "3", "answer_type": "single-step",
                     "subject": "Algebra"})  # a corrupt image file: skipped when it is tiled
    path = os.path.join(root, "MV-MATH", "data", "MV-MATH.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(rows, f, indent=2)
    return path, images


def olympiadbench(root: str) -> str:
    cols = {"id": pa.int64(), "question": pa.string(), "solution": pa.list_(pa.string()),
            "final_answer": pa.list_(pa.string()), "context": pa.string(),
            **{f"image_{k}": IMAGE for k in range(1, 10)}, "modality": pa.string(), "difficulty": pa.string(),
            "is_multiple_answer": pa.bool_(), "unit": pa.string(), "answer_type": pa.string(), "error": pa.string(),
            "question_type": pa.string(), "subfield": pa.string(), "subject": pa.string(), "language": pa.string()}
    base = os.path.join(root, "OlympiadBench")
    _write(os.path.join(base, "OE_MM_maths_en_COMP", "train-00000-of-00001.parquet"), cols, [
        {"id": 1601, "question": "In the figure <image_1>, find the area.", "final_answer": ["$12$"],
         "image_1": image(60), "modality": "Multimodal", "is_multiple_answer": False, "answer_type": "Numerical",
         "question_type": "Open-ended", "subject": "Math", "language": "English"},
        {"id": 1602, "question": "Find all solutions.", "final_answer": ["$1$", "$2$"], "image_1": image(61),
         "is_multiple_answer": True, "answer_type": "Numerical", "question_type": "Open-ended",
         "subject": "Math", "language": "English"},
    ])
    _write(os.path.join(base, "OE_TO_physics_en_COMP", "train-00000-of-00001.parquet"), cols, [
        {"id": 900, "context": "A ball falls from rest.", "question": "How far does it fall in 2 s?",
         "final_answer": ["19.6"], "unit": "m", "error": "1e-1", "is_multiple_answer": False,
         "answer_type": "Numerical", "question_type": "Open-ended", "subject": "Physics", "language": "English",
         "modality": "Text-only"},
        {"id": 901, "question": "Explain.", "final_answer": ["x"], "answer_type": "Need_human_evaluate",
         "question_type": "Open-ended", "subject": "Physics", "language": "English"},  # excluded: needs a human
    ])
    _write(os.path.join(base, "TP_MM_maths_en_COMP", "train-00000-of-00001.parquet"), cols, [
        {"id": 1, "question": "Prove it.", "final_answer": None, "image_1": image(62), "answer_type": None,
         "question_type": "Theorem proof", "subject": "Math", "language": "English"},
    ])
    return base
