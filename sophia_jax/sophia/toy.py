"""A toy SOPHIA world: tiny random policy and reasoner checkpoints plus synthetic image questions.

It exercises the whole behaviour model on a CPU in seconds (``sophia-jax demo``, end-to-end
tests). The reasoner's word-level vocabulary is small and contains ``\\boxed{3}``-style tokens,
so even random weights sometimes end with a boxed answer that the verifier can judge: rewards
are a real mix of 0 and 1 and selection has something to do.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from flax import nnx
from PIL import Image

from sophia_jax import checkpoint
from sophia_jax.models import CausalLM, InternVL, InternVLConfig, TextConfig, VisionConfig
from sophia_jax.sampling.testing import tiny_tokenizer

ANSWERS = ("3", "4", "5")
POLICY_WORDS = (
    "the", "image", "shows", "a", "an", "red", "green", "blue", "square", "circle", "line", "label", "number",
    "on", "left", "right", "top", "bottom", "of", "and", "with", "background", "white", "black", *ANSWERS, ".", ",",
)
REASONER_WORDS = (
    "the", "image", "shows", "so", "answer", "is", "count", "look", "back", "at", "therefore", "Final", "answer:",
    *(f"\\boxed{{{a}}}" for a in ANSWERS), *ANSWERS, ".", ",",
)


def _text_config(vocab: int) -> TextConfig:
    return TextConfig(vocab_size=vocab, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                      intermediate_size=128, max_position_embeddings=8192, architecture="qwen2")


def _save(model, tokenizer, directory: str) -> str:
    assets = directory + ".assets"
    tokenizer.save_pretrained(assets)
    checkpoint.save(model, directory, assets=assets)
    return directory


def write_policy(directory: str, seed: int = 0, words: tuple[str, ...] = POLICY_WORDS) -> str:
    """A tiny InternVL (56-pixel tiles, 4 tokens per tile) with an InternVL-style chat tokenizer over ``words``."""
    tok = tiny_tokenizer(image_token_id=None, words=words)
    config = InternVLConfig(
        vision=VisionConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, image_size=56),
        text=_text_config(len(tok)), image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
    )
    return _save(InternVL(config, rngs=nnx.Rngs(seed)), tok, directory)


def write_reasoner(directory: str, seed: int = 1) -> str:
    """A tiny text decoder whose vocabulary includes boxed answers."""
    tok = tiny_tokenizer(image_token_id=None, words=REASONER_WORDS)
    return _save(CausalLM(_text_config(len(tok)), rngs=nnx.Rngs(seed)), tok, directory)


def write_questions(directory: str, count: int = 6, seed: int = 0, bad_records: bool = True) -> str:
    """Images of coloured shapes with counting questions; returns the JSONL path.

    With ``bad_records`` it appends one question whose image is missing and one whose image file
    is corrupt, which the behaviour model must skip and report.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    rows = []
    for i in range(count):
        width, height = [(120, 60), (60, 120), (80, 80), (200, 70)][i % 4]
        pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        name = f"images/shape-{i}.png"
        Image.fromarray(pixels).save(os.path.join(directory, name))
        answer = ANSWERS[i % len(ANSWERS)]
        row = {"id": f"toy-{i}", "image": name, "question": "How many squares are in the image?", "answer": answer}
        if i % 2:
            row["choices"] = list(ANSWERS)
            row["answer"] = "ABC"[ANSWERS.index(answer)]
        rows.append(row)
    if bad_records:
        rows.append({"id": "toy-missing", "image": "images/nowhere.png", "question": "What is shown?", "answer": "3"})
        with open(os.path.join(directory, "images", "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n not really a png")
        rows.append({"id": "toy-broken", "image": "images/broken.png", "question": "What is shown?", "answer": "4"})
    path = os.path.join(directory, "questions.jsonl")
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@dataclasses.dataclass(frozen=True)
class ToyWorld:
    policy: str
    reasoner: str
    questions: str


def build(root: str, num_questions: int = 6, seed: int = 0) -> ToyWorld:
    os.makedirs(root, exist_ok=True)
    return ToyWorld(
        policy=write_policy(os.path.join(root, "policy"), seed),
        reasoner=write_reasoner(os.path.join(root, "reasoner"), seed + 1),
        questions=write_questions(os.path.join(root, "data"), num_questions, seed),
    )
