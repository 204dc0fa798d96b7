"""The demo's visual-math world: generated images, multi-step questions, exact answers.

Each image is a 56-pixel tile (the tiny InternVL's one tile) cut into a 2 x 2 grid. Every cell
holds one object: a shape (circle, square or triangle in red, green or blue) or a digit 1-9
drawn as a seven-segment figure (polygons only, no fonts, so the pixels are the same on every
machine with the same Pillow). An image has one or two digits and two or three shapes.

A question combines two counts with a digit in two arithmetic steps, e.g. "Multiply the number
of red shapes by the largest digit, then add the number of squares." Answering needs perception
(which shapes of which colour, which digits) and arithmetic; the answer is an exact integer.

Three kinds of text describe the world, each with one canonical grammar:

* ``describe(scene)``: the caption, e.g. ``1 red circle, 2 blue squares and the digit 5.``
  (groups in a fixed colour and shape order, digits in reading order);
* ``solve(question, caption)``: the step-by-step solution a reasoner writes from a caption
  alone: it restates the caption as what "the image" shows, counts each quantity from the
  groups, does the arithmetic one step per line and ends with ``**Final answer**: \\boxed{n}``,
  optionally after a redundant look back at the image (so solutions differ in length);
* ``direct_answer``: ``\\boxed{n}``, how the base policy answers before SOPHIA.

Everything is a pure function of a seed: ``split(name, count)`` gives the same scenes and
questions every time, and the train and held-out splits use disjoint seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 56  # one tile of the tiny InternVL
CELL = IMAGE_SIZE // 2
COLOURS = {"red": (215, 40, 40), "green": (35, 160, 60), "blue": (40, 75, 215)}
SHAPES = ("circle", "square", "triangle")
DIGITS = tuple(range(1, 10))
COUNTS = {  # count name in a question -> which shapes it counts
    **{f"{c} shapes": (lambda o, c=c: o.colour == c) for c in COLOURS},
    **{f"{s}s": (lambda o, s=s: o.shape == s) for s in SHAPES},
}
DIGIT_FEATURES = {"the largest digit": max, "the smallest digit": min}
# (question text, the two steps as (operator, left, right)); c1, c2 are counts, d a digit feature.
TEMPLATES = (
    ("Multiply the number of {c1} by {d}, then add the number of {c2}.", (("*", "c1", "d"), ("+", "r", "c2"))),
    ("Add the number of {c1} and the number of {c2}, then multiply by {d}.", (("+", "c1", "c2"), ("*", "r", "d"))),
    ("Multiply {d} by the number of {c1}, then subtract the number of {c2}.", (("*", "d", "c1"), ("-", "r", "c2"))),
)
FINAL_MARKER = "**Final answer**:"  # what the simulate-reasoning prompt asks the answer to follow
SPLIT_SEEDS = {"warmup": 1, "warmup-text": 5, "reasoner": 2, "train": 3, "heldout": 4}  # disjoint streams of scenes

# Seven-segment layout: segment -> (x0, y0, x1, y1) in a 0..1 box; digits -> lit segments.
_SEGMENTS = {"a": (0, 0, 1, 0), "b": (1, 0, 1, .5), "c": (1, .5, 1, 1), "d": (0, 1, 1, 1), "e": (0, .5, 0, 1),
             "f": (0, 0, 0, .5), "g": (0, .5, 1, .5)}
_LIT = {1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc", 7: "abc", 8: "abcdefg", 9: "abcdfg"}


@dataclasses.dataclass(frozen=True)
class Obj:
    """One cell's content: a shape with a colour, or a digit."""

    shape: str = ""  # circle | square | triangle ('' for a digit)
    colour: str = ""
    digit: int = 0  # 1-9 for a digit, 0 for a shape
    size: int = 18  # pixels
    dx: int = 0  # offset of the centre within the cell
    dy: int = 0


@dataclasses.dataclass(frozen=True)
class Scene:
    cells: tuple[Obj, Obj, Obj, Obj]  # reading order: top left, top right, bottom left, bottom right

    @property
    def shapes(self) -> list[Obj]:
        return [o for o in self.cells if o.shape]

    @property
    def digits(self) -> list[int]:
        return [o.digit for o in self.cells if o.digit]


@dataclasses.dataclass(frozen=True)
class WorldQuestion:
    """One question about one scene: the template, its counts and digit feature, the answer."""

    id: str
    scene: Scene
    template: int
    c1: str
    c2: str
    d: str
    answer: int

    @property
    def text(self) -> str:
        return TEMPLATES[self.template][0].format(c1=self.c1, c2=self.c2, d=self.d)


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little"))


def random_scene(rng: np.random.Generator) -> Scene:
    num_digits = int(rng.integers(1, 3))
    kinds = ["digit"] * num_digits + ["shape"] * (4 - num_digits)
    rng.shuffle(kinds)
    cells = []
    for kind in kinds:
        size = int(rng.integers(14, 21))
        room = (CELL - size) // 2 - 2
        dx, dy = (int(v) for v in rng.integers(-room, room + 1, size=2))
        if kind == "digit":
            cells.append(Obj(digit=int(rng.choice(DIGITS)), size=size, dx=dx, dy=dy))
        else:
            cells.append(Obj(shape=str(rng.choice(SHAPES)), colour=str(rng.choice(list(COLOURS))), size=size,
                             dx=dx, dy=dy))
    return Scene(tuple(cells))


# ------------------------------------------------------------------------------------------ pixels
def draw(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    for i, obj in enumerate(scene.cells):
        cx = (i % 2) * CELL + CELL // 2 + obj.dx
        cy = (i // 2) * CELL + CELL // 2 + obj.dy
        h = obj.size // 2
        if obj.digit:
            w = max(3, obj.size * 3 // 10)  # half width: digits are narrower than tall
            for seg in _LIT[obj.digit]:
                x0, y0, x1, y1 = _SEGMENTS[seg]
                pen.line([(cx - w + 2 * w * x0, cy - h + 2 * h * y0), (cx - w + 2 * w * x1, cy - h + 2 * h * y1)],
                         fill=(20, 20, 20), width=2)
        elif obj.shape == "circle":
            pen.ellipse([cx - h, cy - h, cx + h, cy + h], fill=COLOURS[obj.colour])
        elif obj.shape == "square":
            pen.rectangle([cx - h, cy - h, cx + h, cy + h], fill=COLOURS[obj.colour])
        else:
            pen.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=COLOURS[obj.colour])
    return image


# ------------------------------------------------------------------------------------------ text
def _noun(shape: str, count: int) -> str:
    return shape if count == 1 else shape + "s"


def _groups(shapes: Sequence[Obj]) -> list[tuple[int, str, str]]:
    """(count, colour, shape) in the canonical order: colours, then shapes, as listed above."""
    out = []
    for colour in COLOURS:
        for shape in SHAPES:
            n = sum(1 for o in shapes if o.colour == colour and o.shape == shape)
            if n:
                out.append((n, colour, shape))
    return out


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _group_text(n: int, colour: str, shape: str) -> str:
    return f"{n} {colour} {_noun(shape, n)}"


def describe(scene: Scene) -> str:
    """The canonical caption: ``1 red circle, 2 blue squares and the digit 5.``"""
    digits = scene.digits
    digit_text = f"the digit {digits[0]}" if len(digits) == 1 else "the digits " + _and([str(d) for d in digits])
    return _and([_group_text(*g) for g in _groups(scene.shapes)] + [digit_text]) + "."


_GROUP = re.compile(r"(\d+) (red|green|blue) (circle|square|triangle)s?")
_DIGITS = re.compile(r"the digits? ([\d ,and]+)\.?$")


def parse(caption: str) -> Scene | None:
    """The scene a caption states (shapes and digits; sizes and places unknown), or None if malformed.

    Only captions in the canonical grammar parse, so a garbled caption has no scene.
    """
    caption = caption.strip()
    m = _DIGITS.search(caption)
    if not m:
        return None
    digits = [int(x) for x in re.findall(r"\d+", m.group(1))]
    groups = [(int(n), c, s) for n, c, s in _GROUP.findall(caption[:m.start()])]
    shapes = [Obj(shape=s, colour=c) for n, c, s in groups for _ in range(n)]
    cells = shapes + [Obj(digit=d) for d in digits]
    if len(cells) != 4 or not all(d in DIGITS for d in digits):
        return None
    scene = Scene(tuple(cells))
    return scene if describe(scene) == caption else None


def count(scene: Scene, name: str) -> int:
    return sum(1 for o in scene.shapes if COUNTS[name](o))


def digit_feature(scene: Scene, name: str) -> int:
    return DIGIT_FEATURES[name](scene.digits)


def _apply(op: str, a: int, b: int) -> int:
    return {"*": a * b, "+": a + b, "-": a - b}[op]


def evaluate(template: int, c1: int, c2: int, d: int) -> int:
    values = {"c1": c1, "c2": c2, "d": d}
    for op, left, right in TEMPLATES[template][1]:
        values["r"] = _apply(op, values[left], values[right])
    return values["r"]


def answer(question: WorldQuestion, scene: Scene | None = None) -> int:
    """The exact answer for ``scene`` (default: the question's own)."""
    s = scene or question.scene
    return evaluate(question.template, count(s, question.c1), count(s, question.c2), digit_feature(s, question.d))


def solve(question: WorldQuestion, caption: str, look_back: bool = False) -> str | None:
    """The reasoner's step-by-step solution from ``caption`` alone (None when it does not parse).

    Correct exactly when the caption states the counts and digits the question needs correctly.
    """
    scene = parse(caption)
    if scene is None:
        return None
    lines = [f"Looking at the image, I see {caption}"]
    values = {}
    for key in ("c1", "c2", "d"):
        name = getattr(question, key)
        if key == "d":
            values[key] = digit_feature(scene, name)
            lines.append(f"{name.removeprefix('the ').capitalize()}: {values[key]}.")
            continue
        groups = [g for g in _groups([o for o in scene.shapes if COUNTS[name](o)])]
        values[key] = sum(n for n, _, _ in groups)
        if not groups:
            tally = "none, 0"
        elif len(groups) == 1:
            tally = f"{_group_text(*groups[0])}, {values[key]}"
        else:
            tally = _and([_group_text(*g) for g in groups]) + ", " + " + ".join(str(n) for n, _, _ in groups) \
                + f" = {values[key]}"
        lines.append(f"{name.capitalize()}: {tally}.")
    for op, left, right in TEMPLATES[question.template][1]:
        a, b = values[left], values[right]
        values["r"] = _apply(op, a, b)
        lines.append(f"{a} {op} {b} = {values['r']}.")
    if look_back:
        lines.append(f"Let me look back at the image: {caption} The result stays {values['r']}.")
    lines.append(f"{FINAL_MARKER} \\boxed{{{values['r']}}}")
    return "\n".join(lines)


def direct_answer(value: int) -> str:
    return f"\\boxed{{{value}}}"


_OP_WORDS = {"*": "multiply by", "+": "add", "-": "subtract"}


def arithmetic(rng: np.random.Generator) -> tuple[str, str]:
    """A text-only (question, solution) pair with the two steps of a random template, in the
    solutions' line format: the arithmetic a language model knows before it sees this world."""
    template = int(rng.integers(len(TEMPLATES)))
    values = {"c1": int(rng.integers(0, 4)), "c2": int(rng.integers(0, 4)), "d": int(rng.choice(DIGITS))}
    (op1, left, right), (op2, _, last) = TEMPLATES[template][1]
    question = f"Compute {values[left]} {op1} {values[right]}, then {_OP_WORDS[op2]} {values[last]}."
    lines = []
    for op, a, b in TEMPLATES[template][1]:
        x, y = values[a], values[b]
        values["r"] = _apply(op, x, y)
        lines.append(f"{x} {op} {y} = {values['r']}.")
    return question, "\n".join([*lines, f"{FINAL_MARKER} {direct_answer(values['r'])}"])


# ------------------------------------------------------------------------------------------ splits
def random_question(rng: np.random.Generator, scene: Scene, qid: str) -> WorldQuestion:
    # Mostly quantities the image has, so that few answers are a trivial 0.
    present = [n for n in COUNTS if count(scene, n)]
    c1 = str(rng.choice(present if rng.random() < 0.8 else list(COUNTS)))
    rest = [n for n in COUNTS if n != c1]
    c2 = str(rng.choice([n for n in rest if n in present] or rest) if rng.random() < 0.6 else rng.choice(rest))
    d = str(rng.choice(list(DIGIT_FEATURES)))
    template = int(rng.integers(len(TEMPLATES)))
    q = WorldQuestion(qid, scene, template, c1, c2, d, 0)
    return dataclasses.replace(q, answer=answer(q))


def split(name: str, num_images: int, questions_per_image: int = 1) -> list[WorldQuestion]:
    """The first ``num_images`` scenes of a split, each with its questions (a pure function of the name)."""
    seed = SPLIT_SEEDS[name]
    out = []
    for i in range(num_images):
        rng = _rng("world", seed, i)
        scene = random_scene(rng)
        out += [random_question(rng, scene, f"{name}-{i:05d}-{j}") for j in range(questions_per_image)]
    return out


def words() -> list[str]:
    """Every word and symbol the world's text uses (for the tokenizer).

    Read off the text the world writes: every question form, caption and solution (with and
    without the look back) over a fixed set of scenes, and the arithmetic drills, split the way
    the tokenizer splits (so ``shapes:`` is a word of its own), plus every number in range.
    """
    numbers = [str(n) for n in range(-9, 100)]
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng) for _ in range(40)]
    corpus = [arithmetic(rng)[k] for _ in range(20) for k in (0, 1)]
    for i, scene in enumerate(scenes):
        for template in range(len(TEMPLATES)):
            for c1 in COUNTS:
                c2 = list(COUNTS)[(list(COUNTS).index(c1) + 1 + i) % len(COUNTS)]
                q = WorldQuestion("w", scene, template, c1, c2, list(DIGIT_FEATURES)[i % 2], 0)
                caption = describe(scene)
                corpus += [q.text, solve(q, caption, look_back=True)]
    found = re.findall(r"\\[A-Za-z]+\{[^{}\s]*\}|[A-Za-z0-9\-]+:?|[^\sA-Za-z0-9\-]", "\n".join(corpus))
    return list(dict.fromkeys([*(w for w in found if not w.startswith("\\")), *numbers,
                               *(direct_answer(int(n)) for n in numbers)]))


def prompt_phrases() -> list[str]:
    """The fixed lines of the built-in prompts (and InternVL's system message), one token each."""
    from sophia_jax.sophia.prompts import Prompts

    p = Prompts.load()
    out = []
    for text in (p.caption, p.simulate_reasoning, p.long_cot_system, p.default_system):
        for line in text.split("\n"):
            out += [piece.strip() for piece in re.split(r"\{(?:question|caption)\}", line) if piece.strip()]
    return out


def tokenizer():
    """The world's tokenizer, shared by the policy and the reasoner: a word-level tokenizer built
    offline (``tiny_tokenizer``) over the world's words, with the prompts' fixed lines as phrases."""
    from sophia_jax.sampling.testing import tiny_tokenizer

    return tiny_tokenizer(image_token_id=None, words=("system", "user", "assistant", *words()),
                          phrases=(*prompt_phrases(), FINAL_MARKER), space_words=True)


# ------------------------------------------------------------------------------------------ files
def _scene_key(question: WorldQuestion) -> str:
    return question.id.rsplit("-", 1)[0]  # '<split>-<image index>'


def write_images(directory: str, questions: Sequence[WorldQuestion]) -> dict[str, str]:
    """One PNG per scene under ``directory/images``; returns question id -> path relative to ``directory``."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    paths = {}
    for q in questions:
        rel = f"images/{_scene_key(q)}.png"
        if not os.path.exists(os.path.join(directory, rel)):
            draw(q.scene).save(os.path.join(directory, rel))
        paths[q.id] = rel
    return paths


def write_jsonl(path: str, rows: Sequence[dict]) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_questions(directory: str, questions: Sequence[WorldQuestion], name: str = "questions",
                    bad_records: bool = False) -> str:
    """A question dataset as ``sophia-jax generate`` reads it (id, image, question, answer); returns its path.

    With ``bad_records`` two more questions follow, one whose image is missing and one whose
    image file is corrupt, which the behaviour model must skip and report.
    """
    images = write_images(directory, questions)
    rows = [{"id": q.id, "image": images[q.id], "question": q.text, "answer": str(q.answer)} for q in questions]
    if bad_records:
        with open(os.path.join(directory, "images", "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n not really a png")
        text = questions[0].text if questions else TEMPLATES[0][0]
        rows += [{"id": "bad-missing", "image": "images/nowhere.png", "question": text, "answer": "0"},
                 {"id": "bad-broken", "image": "images/broken.png", "question": text, "answer": "0"}]
    return write_jsonl(os.path.join(directory, f"{name}.jsonl"), rows)
