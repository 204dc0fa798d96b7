"""Answer verification: SOPHIA's binary outcome reward.

Typical use in training::

    from sophia_jax.verify import VerifierPool

    with VerifierPool(num_workers=4, timeout=5.0) as pool:
        rewards = pool.score([(gold, trajectory_text, choices), ...])
        # rewards[i].reward in {0.0, 1.0}; .extracted; .reason

:func:`score_trajectory` and :func:`judge` are the same logic in-process,
without a timeout (fine for trusted strings and tests).

This package must stay free of jax/numpy imports: pool workers load it
in fresh interpreters.  sympy and math-verify (the second equivalence
engine, its LaTeX parser only) are imported lazily, on first symbolic use;
workers import them before taking items.
"""

from .answer_types import ANSWER_TYPES, EVAL_SCORER, score_answer
from .extract import answer_region, choice_letter, choice_options, extract_answer, extract_choice, find_boxed
from .judge import DEFAULT_ABS_TOL, DEFAULT_REL_TOL, MAX_ANSWER_CHARS, Verdict, judge
from .normalize import clean_latex, normalize_part, split_top_level
from .pool import VerifierPool, WorkerStartupError
from .reward import Reward, score_trajectory

__all__ = [
    "ANSWER_TYPES",
    "DEFAULT_ABS_TOL",
    "EVAL_SCORER",
    "DEFAULT_REL_TOL",
    "MAX_ANSWER_CHARS",
    "Reward",
    "Verdict",
    "VerifierPool",
    "WorkerStartupError",
    "answer_region",
    "choice_letter",
    "choice_options",
    "clean_latex",
    "extract_answer",
    "extract_choice",
    "find_boxed",
    "judge",
    "normalize_part",
    "score_answer",
    "score_trajectory",
    "split_top_level",
]
