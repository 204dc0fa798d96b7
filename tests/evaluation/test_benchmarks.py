"""Loaders of the eight benchmarks on tiny files written in each published layout."""

import collections

import numpy as np
import pytest
from PIL import Image

import layouts
from sophia_jax.data.datasets import DatasetError
from sophia_jax.data.images import TilingConfig
from sophia_jax.errors import UserError
from sophia_jax.evaluation.benchmarks import LAYOUTS, load_benchmark, number_image_references

TILING = TilingConfig(tile_size=14, max_tiles=4)


def by_id(bench):
    return {item.id: item for item in bench.items}


def reasons(bench):
    return collections.Counter(s.reason for s in bench.skipped)


def test_every_paper_benchmark_has_a_layout():
    assert list(LAYOUTS) == ["mmmu", "mmmu_pro_vision", "mathvista", "mathverse", "dynamath", "mathvision",
                             "mv_math", "olympiadbench"]


def test_mmmu_options_literal_images_and_open_answers(tmp_path):
    layouts.mmmu(str(tmp_path))
    bench = load_benchmark("mmmu", str(tmp_path / "MMMU"))  # the downloaded folder: one dir per subject
    items = by_id(bench)
    one = items["validation_Accounting_1"]
    assert one.answer_type == "choice" and one.answer == "B" and one.choices == ("10", "12", "14")
    assert one.question == "What is the total?" and len(one.images) == 1 and one.category == "Accounting"
    two = items["validation_Accounting_2"]
    assert len(two.images) == 2 and two.question == "Compare <Image-1> with <Image-2>. Which is larger?"
    assert two.choices == ("<Image-1>", "the second")
    assert np.asarray(Image.open(__import__("io").BytesIO(two.images[1].data))).shape == (10, 30, 3)
    three = items["validation_Accounting_3"]
    assert three.answer_type == "free" and three.answer == "1.5" and three.alternatives == ("3/2",)
    assert three.choices is None
    assert reasons(bench) == {"missing_image": 1, "unknown_answer_type": 1, "bad_field": 1}
    assert {s.record_id for s in bench.skipped} == {"validation_Accounting_4", "validation_Accounting_5",
                                                    "validation_Accounting_6"}


def test_mmmu_pro_vision_question_is_in_the_image(tmp_path):
    path = layouts.mmmu_pro_vision(str(tmp_path))
    bench = load_benchmark("mmmu_pro_vision", str(tmp_path / "MMMU_Pro"))  # the whole download: vision only
    assert bench.files == [path]
    items = by_id(bench)
    art = items["test_Art_1"]
    assert art.answer_type == "choice" and art.answer == "C" and art.category == "Art"
    assert "image" in art.question and art.images[0].load(TILING).shape[1:] == (3, 14, 14)
    assert reasons(bench) == {"missing_answer": 1}


def test_mathvista_types_precision_hint_and_zipped_images(tmp_path):
    path, archive = layouts.mathvista(str(tmp_path))
    bench = load_benchmark("mathvista", path, image_root=archive)
    items = by_id(bench)
    mc = items["1"]
    assert mc.answer_type == "choice" and mc.answer == "B"  # the option text 45° became its letter
    assert mc.choices == ("30°", "45°", "60°") and mc.hint == "Give the letter of the correct option at the end."
    assert mc.category == "geometry problem solving"
    assert items["2"].answer_type == "integer" and items["2"].precision is None
    assert items["3"].answer_type == "float" and items["3"].precision == 1
    lst = items["4"]
    assert lst.answer_type == "list" and lst.answer == "[2007, 2008]" and lst.alternatives == ()
    assert lst.images[0].archive is not None  # no decoded_image: the path into images.zip
    assert lst.images[0].load(TILING).shape[1:] == (3, 14, 14)
    assert reasons(bench) == {"unknown_answer_type": 1}


def test_mathverse_keeps_only_vision_only(tmp_path):
    path = layouts.mathverse(str(tmp_path))
    bench = load_benchmark("mathverse", str(tmp_path / "MathVerse"))
    items = by_id(bench)
    assert set(items) == {"5", "11"} and bench.excluded == {"not_vision_only": 1}
    assert items["5"].answer_type == "choice" and items["5"].question.startswith("According to the question")
    assert items["11"].answer_type == "free" and items["11"].category == "Functions"
    assert bench.files == [path]


def test_dynamath_variants_are_separate_items_of_one_group(tmp_path):
    bench = load_benchmark("dynamath", layouts.dynamath(str(tmp_path)))
    items = by_id(bench)
    assert set(items) == {"1-v1", "1-v2", "2-v1", "2-v2"}  # sample_all is not part of the split
    assert items["1-v2"].answer == "0.250" and items["1-v2"].answer_type == "float" and items["1-v2"].precision == 3
    assert items["1-v1"].group == items["1-v2"].group == "1"
    assert items["2-v1"].answer_type == "choice" and items["2-v1"].category == "graph theory"


def test_mathvision_choice_and_open_questions(tmp_path):
    bench = load_benchmark("mathvision", layouts.mathvision(str(tmp_path)))
    items = by_id(bench)
    assert items["1"].answer_type == "choice" and items["1"].choices == tuple("ABCDE")
    assert items["1"].question == "Which shape comes next?"  # the <image1> reference of a one-image question
    assert items["2"].answer_type == "free" and items["2"].choices is None
    assert reasons(bench) == {"duplicate_id": 1}


def test_mv_math_multi_image_json(tmp_path):
    path, images = layouts.mv_math(str(tmp_path))
    bench = load_benchmark("mv_math", path, image_root=images)
    items = by_id(bench)
    assert set(items) == {"1", "2", "3", "4"}
    assert len(items["2"].images) == 3 and "<Image-3>" in items["2"].question
    assert items["1"].answer_type == "choice" and items["3"].answer_type == "free"
    assert items["1"].images[0].load(TILING).ndim == 4
    assert reasons(bench) == {"unknown_answer_type": 1}


def test_olympiadbench_configs_without_proofs(tmp_path):
    bench = load_benchmark("olympiadbench", layouts.olympiadbench(str(tmp_path)))
    items = by_id(bench)
    assert set(items) == {"OE_MM_maths_en_COMP/1601", "OE_MM_maths_en_COMP/1602", "OE_TO_physics_en_COMP/900"}
    assert bench.excluded == {"theorem_proving": 2}
    area = items["OE_MM_maths_en_COMP/1601"]
    assert area.answer == "$12$" and area.answer_type == "free" and area.category == "OE_MM_maths_en_COMP"
    assert "\\boxed{}" in area.hint and len(area.images) == 1
    assert items["OE_MM_maths_en_COMP/1602"].answer == "$1$, $2$"  # several answers are one answer's parts
    phys = items["OE_TO_physics_en_COMP/900"]
    assert phys.images == () and phys.tolerance == pytest.approx(0.1) and phys.question.startswith("A ball falls")
    assert "unit" in phys.hint


def test_limit_unknown_benchmark_and_missing_files(tmp_path):
    path = layouts.mathvision(str(tmp_path))
    assert len(load_benchmark("mathvision", path, limit=1).items) == 1
    with pytest.raises(UserError, match="mathvist"):
        load_benchmark("mathvist", path)
    with pytest.raises(DatasetError, match="no data files"):
        load_benchmark("mmmu", str(tmp_path / "MathVision"))


def test_image_references():
    assert number_image_references("see <image 1> and <image_2>", 2) == "see <Image-1> and <Image-2>"
    assert number_image_references("<image1>\nHow many?", 1) == "How many?"
