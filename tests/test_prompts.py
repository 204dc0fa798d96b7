"""SOPHIA prompt templates: placeholders, overrides and the system-prompt rule."""

import pytest

from sophia_jax.sophia.prompts import Prompts, format_question


def test_builtin_prompts_render():
    prompts = Prompts.load()
    text = prompts.reasoning_prompt("What is x?", "A line labelled x = 3.", choices=["3", "4"], hint="integer")
    assert text.rstrip().endswith("Response:")
    assert "Hint: integer\nWhat is x?\nChoices: (A) 3 (B) 4" in text
    assert "Visual information: A line labelled x = 3." in text
    assert "\\boxed{}" in text and "{question}" not in text
    assert "question" not in prompts.caption.lower()  # the caption prompt never shows the question


def test_system_prompt_follows_trajectory_style():
    prompts = Prompts.load()
    assert prompts.training_system_prompt("<think>hmm</think> 4") == prompts.long_cot_system
    assert prompts.training_system_prompt("Alright ... \\boxed{4}") == prompts.default_system
    assert prompts.default_system.startswith("你是书生·万象")


def test_overrides_and_errors(tmp_path):
    mine = tmp_path / "caption.txt"
    mine.write_text("Describe it.\n")
    assert Prompts.load({"caption": mine}).caption == "Describe it."
    bad = tmp_path / "sim.txt"
    bad.write_text("Question: {question}")
    with pytest.raises(ValueError, match="lacks placeholders \\['caption'\\]"):
        Prompts.load({"simulate_reasoning": bad})
    with pytest.raises(ValueError, match="unknown prompts"):
        Prompts.load({"captoin": mine})
    with pytest.raises(ValueError, match="cannot read"):
        Prompts.load({"caption": tmp_path / "missing.txt"})


def test_format_question_without_extras():
    assert format_question("  Why?  ") == "Why?"
