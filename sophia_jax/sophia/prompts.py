"""SOPHIA prompts: the caption prompt, the simulated-visual-reasoning prompt, system prompts.

The texts live in ``prompt_templates/*.txt`` (our own wording of the paper's Appendix E
structure) and any of them can be replaced by a file of the user's. Templates use ``{question}``
and ``{caption}`` placeholders; other braces (``\\boxed{}``) are left alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
from importlib import resources
from typing import Mapping, Sequence

from sophia_jax.data.chat_templates import INTERNVL_SYSTEM_MESSAGE

_FILES = {
    "caption": "caption.txt",
    "simulate_reasoning": "simulate_reasoning.txt",
    "long_cot_system": "long_cot_system.txt",
    "default_system": None,  # InternVL's own system message (chat_templates), not a file of ours
}
# Placeholders each template must contain.
_REQUIRED = {"simulate_reasoning": ("question", "caption")}
_PLACEHOLDER = re.compile(r"\{(question|caption)\}")


def _builtin(name: str) -> str:
    if _FILES[name] is None:
        return INTERNVL_SYSTEM_MESSAGE
    return resources.files("sophia_jax.sophia").joinpath("prompt_templates", _FILES[name]).read_text("utf-8").strip()


def format_question(question: str, choices: Sequence[str] | None = None, hint: str | None = None) -> str:
    """The question as the reasoner and the trained policy see it: hint, question, lettered choices."""
    parts = []
    if hint:
        parts.append(f"Hint: {hint.strip()}")
    parts.append(question.strip())
    if choices:
        parts.append("Choices: " + " ".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices)))
    return "\n".join(parts)


@dataclasses.dataclass(frozen=True)
class Prompts:
    caption: str  # sent to the policy with the image; the question is deliberately not shown
    simulate_reasoning: str  # sent to the text reasoner with {question} and {caption}
    long_cot_system: str  # system prompt for <think>-style trajectories and at evaluation
    default_system: str  # InternVL's own system message, for other trajectories

    def __post_init__(self):
        for name, fields in _REQUIRED.items():
            missing = [f for f in fields if "{" + f + "}" not in getattr(self, name)]
            if missing:
                raise ValueError(f"prompt {name!r} lacks placeholders {missing}")

    @classmethod
    def load(cls, overrides: Mapping[str, str | os.PathLike | None] | None = None) -> "Prompts":
        """Built-in prompts, with any entry replaced by the text of a file given in ``overrides``."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(_FILES)
        if unknown:
            raise ValueError(f"unknown prompts {sorted(unknown)}; known: {sorted(_FILES)}")
        texts = {}
        for name in _FILES:
            path = overrides.get(name)
            if path:
                try:
                    with open(path, encoding="utf-8") as f:
                        texts[name] = f.read().strip()
                except OSError as e:
                    raise ValueError(f"prompt {name!r}: cannot read {path}: {e}") from None
            else:
                texts[name] = _builtin(name)
        return cls(**texts)

    def reasoning_prompt(self, question: str, caption: str, choices=None, hint=None) -> str:
        values = {"question": format_question(question, choices, hint), "caption": caption.strip()}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.simulate_reasoning)

    def training_system_prompt(self, trajectory: str) -> str:
        """Long-CoT system prompt for R1-style (<think>) trajectories, InternVL's default otherwise."""
        return self.long_cot_system if "<think>" in trajectory else self.default_system
