"""Benchmark answers judged by their declared type (evaluation; the outcome reward uses ``reward``).

Evaluation files say what kind of answer each question wants, and the benchmarks' own scorers
compare accordingly. :func:`score_answer` maps each type onto the one rule-based judge:

* ``choice``: the option letter (read with :func:`~.extract.extract_choice`, which also maps a
  spelt-out option text to its letter when the options are known) must equal the gold letter;
* ``integer``: the value must equal the gold integer exactly (``14.0`` is 14, ``14.2`` is not);
* ``float``: with ``precision`` decimals, the value must round to the gold one: it may differ
  by at most half a unit in the last stated decimal (MathVista's rule: round the prediction to
  the answer's precision and compare);
* ``list``: an ordered list / tuple, element by element (judge's tuple rules, default tolerance);
* ``free``: anything else (expressions, intervals, text), the full judge; ``tolerance`` sets an
  absolute tolerance (OlympiadBench's per-question ``error``).

``alternatives`` are further accepted golds (MMMU open questions list several). When a model
already extracted the answer (``extracted``), it is judged as given; otherwise the answer is read
from the text as for rewards. Runs in the verifier's worker processes
(``VerifierPool(scorer=EVAL_SCORER)``), so no jax/numpy here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from .extract import choice_letter, choice_options, extract_answer, extract_choice
from .judge import judge
from .reward import Reward

__all__ = ["ANSWER_TYPES", "EVAL_SCORER", "score_answer"]

ANSWER_TYPES = ("choice", "integer", "float", "list", "free")
EVAL_SCORER = "answer_types:score_answer"  # VerifierPool(scorer=EVAL_SCORER) runs score_answer in its workers


def _extract(text: str, answer_type: str, choices) -> str | None:
    if answer_type == "choice":
        return extract_choice(text, choices) or extract_answer(text)
    found = extract_answer(text)
    if found is None and choices:
        found = extract_choice(text, choices)
    return found


def _judge_one(gold: str, pred: str, answer_type: str, choices, precision: int | None,
               tolerance: float | None, judge_kwargs: Mapping) -> tuple[bool, str]:
    if answer_type == "choice":
        opts = choice_options(choices)
        valid = list(opts) or None
        letter = choice_letter(pred, valid)
        if letter is None and opts:  # an option spelt out instead of its letter
            verdict = judge(gold, pred, choices=choices, **judge_kwargs)
            return verdict.correct, verdict.reason
        gold_letter = choice_letter(gold, valid) or gold.strip()
        if letter is None:
            return False, f"not an option letter: {pred[:40]!r}"
        return letter == gold_letter, f"choice {'match' if letter == gold_letter else 'mismatch'}: {letter} vs {gold_letter}"
    kwargs = dict(judge_kwargs)
    if answer_type == "integer":
        kwargs.update(rel_tol=0.0, abs_tol=0.0)
    elif answer_type == "float" and precision is not None:
        kwargs.update(rel_tol=0.0, abs_tol=0.5 * 10.0 ** -int(precision))
    elif tolerance is not None:
        kwargs.update(rel_tol=0.0, abs_tol=float(tolerance))
    verdict = judge(gold, pred, choices=choices if answer_type == "free" else None, **kwargs)
    return verdict.correct, f"{answer_type}: {verdict.reason}"


def score_answer(
    gold: str,
    text: str | None,
    choices: Sequence[str] | Mapping[str, str] | None = None,
    *,
    answer_type: str = "free",
    precision: int | None = None,
    tolerance: float | None = None,
    alternatives: Sequence[str] = (),
    extracted: str | None = None,
    on_extracted: Callable[[str | None], None] | None = None,
    **judge_kwargs,
) -> Reward:
    """Extract (unless ``extracted`` is given) and judge one benchmark answer; see the module docstring.

    Returns ``Reward(1.0 | 0.0, extracted, reason)``; an unknown ``answer_type`` scores 0 with its reason.
    """
    if answer_type not in ANSWER_TYPES:
        return Reward(0.0, None, f"unknown answer type {answer_type!r}")
    if extracted is None:
        if text is None or not str(text).strip():
            return Reward(0.0, None, "empty prediction")
        extracted = _extract(str(text), answer_type, choices)
    if on_extracted is not None:
        on_extracted(extracted)
    if extracted is None or not str(extracted).strip():
        return Reward(0.0, None, "no answer found")
    reason = ""
    for candidate in (gold, *alternatives):
        correct, reason = _judge_one(str(candidate), str(extracted), answer_type, choices, precision, tolerance,
                                     judge_kwargs)
        if correct:
            return Reward(1.0, extracted, reason)
    return Reward(0.0, extracted, reason)
