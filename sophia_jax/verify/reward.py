"""Trajectory -> binary outcome reward (extract, then judge).

:func:`score_trajectory` is the in-process version, with no time limit;
:class:`~sophia_jax.verify.pool.VerifierPool` runs this same function in
worker processes with a per-item timeout, which is what training should
use on model output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from .extract import extract_answer, extract_choice
from .judge import judge

__all__ = ["Reward", "score_trajectory"]


@dataclass(frozen=True)
class Reward:
    """Outcome reward of one trajectory.

    ``reward`` is 1.0 or 0.0; ``extracted`` is the answer read from the
    trajectory (None if none was found or the worker died before
    extracting); ``reason`` says why, e.g. "numeric match", "no answer
    found", "timeout after 5.0s", "crash: worker exited with code -9".
    """

    reward: float
    extracted: str | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Reward:
        return cls(float(d["reward"]), d.get("extracted"), str(d["reason"]))


def score_trajectory(
    gold: str,
    text: str | None,
    choices: Sequence[str] | Mapping[str, str] | None = None,
    *,
    on_extracted: Callable[[str | None], None] | None = None,
    **judge_kwargs,
) -> Reward:
    """Extract the final answer from ``text`` and judge it against ``gold``.

    ``on_extracted`` is called with the extracted answer before judging;
    the pool worker uses it so that a later timeout can still report
    which answer hung the judge.  ``judge_kwargs`` go to
    :func:`~sophia_jax.verify.judge.judge` (``rel_tol``, ``abs_tol``,
    ``lenient_percent``).
    """
    if text is None or not str(text).strip():
        return Reward(0.0, None, "empty prediction")
    text = str(text)
    extracted = extract_answer(text)
    if extracted is None and choices:
        extracted = extract_choice(text, choices)
    if on_extracted is not None:
        on_extracted(extracted)
    if extracted is None:
        return Reward(0.0, None, "no answer found")
    verdict = judge(gold, extracted, choices=choices, **judge_kwargs)
    return Reward(1.0 if verdict.correct else 0.0, extracted, verdict.reason)
