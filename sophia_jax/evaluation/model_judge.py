"""Model-based answer extraction (the paper's Fig. A5) and judging (Fig. A6), with any model our sampler runs.

The paper reads every answer with Qwen2.5-72B-Instruct (greedy) and lets the same model judge
MMMU, MathVerse and MV-MATH; the other benchmarks are judged by rule. :class:`ModelJudge` does
both with whatever checkpoint it is given (a text model through its tokenizer's chat template,
or an InternVL with a text-only prompt). The prompts are ours, following the figures'
structure (three worked examples, then the live case) in ``prompt_templates/``.

Long responses are cut to their last ``response_chars`` characters for the extraction prompt:
the final answer is at the end, and a 16K-token response would not fit a judge's buckets.
An extraction that comes back empty falls back to the rule-based reading; a judgement without a
0 or 1 counts as wrong, with that reason.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Sequence

from sophia_jax.data import chat_templates
from sophia_jax.evaluation.benchmarks import EvalItem
from sophia_jax.sampling import Prompt, SamplingParams
from sophia_jax.sampling.load import LoadedModel
from sophia_jax.sophia.prompts import format_question
from sophia_jax.verify import Reward

__all__ = ["ModelJudge", "extraction_prompt", "judgement_prompt", "parse_judgement"]

# The answer form each type asks for, when the benchmark gives no hint of its own.
_TYPE_HINTS = {
    "choice": "Answer with the letter of the correct option.",
    "integer": "Answer with an integer.",
    "float": "Answer with a number with {precision} decimal places.",
    "list": "Answer with a Python list.",
    "free": "Answer with the final value or expression.",
}


def _template(name: str) -> str:
    return resources.files("sophia_jax.evaluation").joinpath("prompt_templates", name).read_text("utf-8").strip()


def _fill(template: str, **values: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def extraction_prompt(item: EvalItem, response: str, response_chars: int = 4000) -> str:
    hint = item.hint or _TYPE_HINTS[item.answer_type].format(precision=item.precision or 1)
    tail = response if len(response) <= response_chars else "..." + response[-response_chars:]
    return _fill(_template("answer_extraction.txt"), hint=hint,
                 question=format_question(item.question, item.choices), response=tail.strip())


def judgement_prompt(item: EvalItem, answer: str) -> str:
    return _fill(_template("answer_judgement.txt"), question=format_question(item.question, item.choices),
                 gold=item.answer, answer=answer)


def parse_judgement(text: str) -> bool | None:
    """The last 0 or 1 the judge wrote (None: neither)."""
    found = re.findall(r"(?<![\d.])[01](?![\d.])", text or "")
    return None if not found else found[-1] == "1"


class ModelJudge:
    """Extracts answers with a model and judges the benchmarks in ``judge_benchmarks`` with it.

    Args:
      model: the judge with its sampler (``sampling.load.load_sampler``).
      extract: read every answer with the model (Fig. A5); otherwise the rule-based reading is used.
      judge_benchmarks: benchmarks whose verdicts the model gives (Fig. A6); the rest stay rule-based.
      max_new_tokens: generation cap of one extraction or judgement (greedy).
    """

    def __init__(self, model: LoadedModel, *, extract: bool = True,
                 judge_benchmarks: Sequence[str] = ("mmmu", "mathverse", "mv_math"), max_new_tokens: int = 64,
                 response_chars: int = 4000):
        self.model = model
        self.do_extract = extract
        self.judge_benchmarks = set(judge_benchmarks)
        self.response_chars = response_chars
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, n=1,
                                     stop_token_ids=model.stop_token_ids)

    def _ids(self, text: str) -> list[int]:
        if self.model.multimodal:
            return chat_templates.internvl_prompt_ids(self.model.tokenizer, text, system_message=None)
        return chat_templates.chat_prompt_ids(self.model.tokenizer, [{"role": "user", "content": text}])

    def _complete(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        largest = max(self.model.sampler.config.buckets)
        prompts = [Prompt(tokens=self._ids(t)[-(largest + 1):]) for t in texts]  # keep the live case at the end
        return [g.samples[0].text or "" for g in self.model.sampler.generate(prompts, self.params)]

    def extract(self, pairs: list[tuple[EvalItem, str | None]]) -> list[str | None]:
        """The model's reading of each (item, response); None where it gave nothing (rules read it then)."""
        if not self.do_extract:
            return [None] * len(pairs)
        answers = self._complete([extraction_prompt(item, text or "", self.response_chars) for item, text in pairs])
        return [(a.strip().splitlines() or [""])[0].strip() or None for a in answers]

    def judge(self, pairs: list[tuple[EvalItem, str | None]], verdicts: list[Reward]) -> list[Reward]:
        """``verdicts`` with the model's judgement in place of the rule's for the benchmarks it judges."""
        todo = [i for i, (item, answer) in enumerate(pairs) if item.benchmark in self.judge_benchmarks and answer]
        outputs = self._complete([judgement_prompt(pairs[i][0], pairs[i][1]) for i in todo])
        out = list(verdicts)
        for i, text in zip(todo, outputs):
            correct = parse_judgement(text)
            reason = "model judge: " + ("no 0/1 in its reply" if correct is None else f"judgement {int(correct)}")
            out[i] = Reward(1.0 if correct else 0.0, pairs[i][1], reason)
        return out
