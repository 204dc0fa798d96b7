"""Propagating outcome rewards to captions and selecting trajectories (SOPHIA Eq. 5-6, Keep-N).

Pure functions over any records with the attributes ``question_id``, ``caption_index``,
``trajectory_index``, ``outcome_reward`` and ``trajectory_policy_tokens``, so the same code runs
inside the generation job and in ``sophia-jax select`` over a finished store.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Hashable, Iterable, Protocol


class Scored(Protocol):
    question_id: str
    caption_index: int
    trajectory_index: int
    outcome_reward: float
    trajectory_policy_tokens: int


Key = tuple[str, int, int]  # (question_id, caption_index, trajectory_index)


def key_of(r: Scored) -> Key:
    return (r.question_id, r.caption_index, r.trajectory_index)


def caption_rewards(records: Iterable[Scored]) -> dict[tuple[str, int], float]:
    """R(c) = mean outcome reward of the trajectories written from caption c."""
    totals: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    for r in records:
        totals[(r.question_id, r.caption_index)].append(float(r.outcome_reward))
    return {k: sum(v) / len(v) for k, v in totals.items()}


def _unique(records: Iterable[Scored]) -> list[Scored]:
    records = list(records)
    seen: set[Hashable] = set()
    for r in records:
        k = key_of(r)
        if k in seen:
            raise ValueError(f"duplicate trajectory {k}")
        seen.add(k)
    return records


def _draw(seed: int, r: Scored) -> bytes:
    """A seeded pseudo-random rank of a trajectory that does not depend on the records' order."""
    return hashlib.sha256(f"{seed}:{r.question_id}:{r.caption_index}:{r.trajectory_index}".encode()).digest()


def select(records: Iterable[Scored], *, alpha: float, keep: int, shortest: bool = True, seed: int = 0) -> set[Key]:
    """Keys of the selected trajectories.

    A trajectory qualifies when it is correct (reward 1) and its caption's reward is strictly
    above ``alpha``; per question the ``keep`` shortest qualifying ones (by policy-tokenizer
    length) are kept. Ties in length go to the lower caption, then trajectory index, so the
    choice is deterministic. ``shortest=False`` keeps ``keep`` qualifying ones drawn at random
    (seeded) instead: the paper's "w/o S" ablation (Table 5).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    records = _unique(records)
    reward_of_caption = caption_rewards(records)
    by_question: dict[str, list[Scored]] = collections.defaultdict(list)
    for r in records:
        if r.outcome_reward >= 1.0 and reward_of_caption[(r.question_id, r.caption_index)] > alpha:
            by_question[r.question_id].append(r)
    chosen: set[Key] = set()
    for candidates in by_question.values():
        if shortest:
            candidates.sort(key=lambda r: (r.trajectory_policy_tokens, r.caption_index, r.trajectory_index))
        else:
            candidates.sort(key=lambda r: _draw(seed, r))
        chosen.update(key_of(r) for r in candidates[:keep])
    return chosen


def select_random(records: Iterable[Scored], *, keep: int = 1, seed: int = 0) -> set[Key]:
    """``keep`` trajectories per question drawn at random (seeded), correct or not: the paper's
    "Random" baseline (Table 5; sophia-method.md section 7 item 17)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    by_question: dict[str, list[Scored]] = collections.defaultdict(list)
    for r in _unique(records):
        by_question[r.question_id].append(r)
    chosen: set[Key] = set()
    for candidates in by_question.values():
        candidates.sort(key=lambda r: _draw(seed, r))
        chosen.update(key_of(r) for r in candidates[:keep])
    return chosen
