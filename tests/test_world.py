"""The demo world: deterministic splits, pixels that show the scene, one grammar per kind of text,
solutions whose correctness follows the caption's, and a tokenizer that covers all of it."""

import dataclasses

import numpy as np

from sophia_jax.data import chat_templates
from sophia_jax.sophia import world
from sophia_jax.sophia.prompts import Prompts
from sophia_jax.verify import score_trajectory


def test_splits_are_deterministic_and_disjoint():
    assert world.split("train", 20, 2) == world.split("train", 20, 2)
    train = {q.scene for q in world.split("train", 200)}
    heldout = {q.scene for q in world.split("heldout", 200)}
    assert len(train & heldout) == 0  # sizes and offsets make a repeated scene practically impossible
    answers = [q.answer for q in world.split("heldout", 500)]
    assert max(np.bincount(np.asarray(answers) + 9)) / len(answers) < 0.15  # no answer dominates


def test_pixels_show_the_cells():
    for q in world.split("heldout", 30):
        pixels = np.asarray(world.draw(q.scene))
        assert pixels.shape == (56, 56, 3) and (pixels[0, 0] == 255).all()
        for i, obj in enumerate(q.scene.cells):
            cx = (i % 2) * world.CELL + world.CELL // 2 + obj.dx
            cy = (i // 2) * world.CELL + world.CELL // 2 + obj.dy
            if obj.shape:  # the centre of a filled shape has its colour
                assert tuple(pixels[cy + obj.size // 4, cx]) == world.COLOURS[obj.colour], (q.id, i, obj)
            else:  # a digit is dark strokes only
                cell = pixels[(i // 2) * 28:(i // 2) * 28 + 28, (i % 2) * 28:(i % 2) * 28 + 28]
                assert cell.min() < 40 and all(np.ptp(cell.reshape(-1, 3)[cell.reshape(-1, 3).min(1) < 200], 0) < 5)


def test_hand_computed_question():
    r, b = world.Obj(shape="circle", colour="red"), world.Obj(shape="square", colour="blue")
    scene = world.Scene((r, world.Obj(digit=7), b, world.Obj(digit=2)))
    assert world.describe(scene) == "1 red circle, 1 blue square and the digits 7 and 2."
    q = world.WorldQuestion("x", scene, 0, "red shapes", "squares", "the largest digit", 0)
    assert q.text == "Multiply the number of red shapes by the largest digit, then add the number of squares."
    assert world.answer(q) == 1 * 7 + 1
    q2 = dataclasses.replace(q, template=2, c1="circles", c2="blue shapes", d="the smallest digit")
    assert world.answer(q2) == 2 * 1 - 1
    solution = world.solve(q2, world.describe(scene))
    assert solution.endswith("**Final answer**: \\boxed{1}") and "2 * 1 = 2." in solution and "2 - 1 = 1." in solution


def test_caption_grammar_round_trips_and_rejects_other_text():
    for q in world.split("train", 100):
        caption = world.describe(q.scene)
        parsed = world.parse(caption)
        assert parsed is not None and world.describe(parsed) == caption
        assert world.answer(q, parsed) == q.answer
    for bad in ("1 red circle and the digit 7.", "1 red circle, 1 red circle, 1 blue square and the digit 7.",
                "2 red circle, 1 blue square and the digit 7.", "1 red circle, 2 blue squares and the digit 0.", ""):
        assert world.parse(bad) is None, bad


def test_solutions_are_right_exactly_when_the_caption_is_right_enough():
    rng = np.random.default_rng(0)
    right = wrong = 0
    for q in world.split("train", 150):
        true = world.solve(q, world.describe(q.scene), look_back=bool(rng.integers(2)))
        assert score_trajectory(str(q.answer), true).reward == 1.0
        # another scene's caption: the solution follows that caption, so it is judged by that scene's answer
        other = world.random_scene(rng)
        text = world.solve(q, world.describe(other))
        assert score_trajectory(str(world.answer(q, other)), text).reward == 1.0
        if world.answer(q, other) == q.answer:
            right += 1
        else:
            wrong += 1
        assert world.solve(q, "a blurry picture.") is None
    assert wrong > 4 * right  # a wrong description mostly gives a wrong answer


def test_look_back_only_makes_the_solution_longer():
    q = world.split("train", 1)[0]
    short, long = (world.solve(q, world.describe(q.scene), look_back=b) for b in (False, True))
    assert len(long) > len(short) and long.split("\n")[-1] == short.split("\n")[-1]


def test_tokenizer_covers_the_world_and_makes_the_fixed_prompts_short():
    tok = world.tokenizer()
    prompts = Prompts.load()
    rng = np.random.default_rng(1)
    texts = [prompts.caption, prompts.long_cot_system, *world.arithmetic(rng)]
    for q in world.split("train", 40):
        caption = world.describe(q.scene)
        texts += [q.text, caption, world.solve(q, caption, look_back=True), world.direct_answer(q.answer),
                  prompts.reasoning_prompt(q.text, caption)]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.decode(ids) == text, text
    ids = chat_templates.internvl_prompt_ids(tok, prompts.caption, num_tiles=[1], tokens_per_tile=4,
                                             system_message=prompts.default_system)
    assert len(ids) < 40  # the 960-word-piece caption prompt and the system message are phrases
    assert len(tok) < 1024


def test_questions_file_has_the_generate_layout(tmp_path):
    from sophia_jax.data.datasets import read_questions

    qs = world.split("heldout", 3, 2)
    path = world.write_questions(str(tmp_path), qs, "q", bad_records=True)
    read = read_questions(path)
    assert [q.id for q in read] == [q.id for q in qs] + ["bad-missing", "bad-broken"]
    assert len(list((tmp_path / "images").glob("heldout-*.png"))) == 3  # one image per scene
    assert read.__iter__().__next__().answer == str(qs[0].answer)


def test_shipped_demo_models_match_their_checksums():
    """``demo_models/CHECKSUMS.json`` holds what ``tools/make_demo_models.py`` printed for the shipped
    files (its sha256 over parameter names, dtypes, shapes and values)."""
    import importlib.util
    import json
    import os

    from sophia_jax import demo

    path = os.path.join(os.path.dirname(__file__), "..", "tools", "make_demo_models.py")
    spec = importlib.util.spec_from_file_location("make_demo_models", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    shipped = os.path.dirname(demo.shipped_model("policy"))
    with open(os.path.join(shipped, "CHECKSUMS.json")) as f:
        expected = json.load(f)
    assert sorted(expected) == ["policy", "reasoner"]
    for name, value in expected.items():
        assert tool.checksum(demo.shipped_model(name)) == value, name
