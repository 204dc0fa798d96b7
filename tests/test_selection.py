"""Caption-reward propagation and Keep-N selection on hand-built reward tables."""

import dataclasses

import pytest

from sophia_jax.sophia.selection import caption_rewards, select, select_random


@dataclasses.dataclass(frozen=True)
class Row:
    question_id: str
    caption_index: int
    trajectory_index: int
    outcome_reward: float
    trajectory_policy_tokens: int


def table(question_id, rewards_per_caption, lengths=None):
    """rewards_per_caption[k][n] -> rows; lengths default to 100 + 10*n + k."""
    rows = []
    for k, rewards in enumerate(rewards_per_caption):
        for n, reward in enumerate(rewards):
            length = lengths[k][n] if lengths else 100 + 10 * n + k
            rows.append(Row(question_id, k, n, reward, length))
    return rows


def test_caption_reward_is_mean_of_its_trajectories():
    rows = table("q", [[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert caption_rewards(rows) == {("q", 0): 0.75, ("q", 1): 0.0, ("q", 2): 1.0}


def test_alpha_is_strict():
    # 6 of 8 correct = 0.75 is NOT above alpha 0.75; 7 of 8 is.
    six = table("q", [[1] * 6 + [0] * 2])
    assert select(six, alpha=0.75, keep=1) == set()
    seven = table("q", [[1] * 7 + [0]])
    assert select(seven, alpha=0.75, keep=1) == {("q", 0, 0)}


def test_keep_n_shortest_across_captions():
    lengths = [[50, 40, 90, 10], [30, 20, 60, 70]]
    rows = table("q", [[1, 1, 1, 0], [1, 1, 1, 1]], lengths)
    # caption 0 (reward 0.75) passes alpha 0.7 but not 0.8; its wrong trajectory (length 10) never counts
    assert select(rows, alpha=0.7, keep=1) == {("q", 1, 1)}
    assert select(rows, alpha=0.7, keep=3) == {("q", 1, 1), ("q", 1, 0), ("q", 0, 1)}
    assert select(rows, alpha=0.8, keep=3) == {("q", 1, 1), ("q", 1, 0), ("q", 1, 2)}


def test_ties_break_by_caption_then_trajectory():
    rows = table("q", [[1, 1], [1, 1]], [[5, 5], [5, 5]])
    assert select(rows, alpha=0.5, keep=1) == {("q", 0, 0)}
    assert select(rows, alpha=0.5, keep=3) == {("q", 0, 0), ("q", 0, 1), ("q", 1, 0)}


def test_no_survivor_and_per_question_independence():
    rows = table("a", [[1, 0, 0, 0]]) + table("b", [[1, 1, 1, 1]])
    assert select(rows, alpha=0.75, keep=1) == {("b", 0, 0)}
    assert select(table("c", [[0, 0], [0, 0]]), alpha=0.0, keep=1) == set()


def test_bad_arguments():
    with pytest.raises(ValueError, match="keep"):
        select([], alpha=0.75, keep=0)
    with pytest.raises(ValueError, match="duplicate"):
        select(table("q", [[1]]) * 2, alpha=0.75, keep=1)


def test_keep_two_tie_break_order_caption_before_trajectory():
    # All four tie on length. Caption-then-trajectory keeps (0,0),(0,1); the reversed key order
    # (trajectory first) would keep (0,0),(1,0), and an unstable or reversed sort something else.
    rows = table("q", [[1, 1], [1, 1]], [[5, 5], [5, 5]])
    assert select(rows, alpha=0.5, keep=2) == {("q", 0, 0), ("q", 0, 1)}
    # Input order must not matter either.
    assert select(list(reversed(rows)), alpha=0.5, keep=2) == {("q", 0, 0), ("q", 0, 1)}
    # Length still comes first: a longer trajectory of caption 0 loses to caption 1's short ones.
    rows = table("q", [[1, 1, 1], [1, 1, 1]], [[5, 9, 9], [5, 5, 9]])
    assert select(rows, alpha=0.5, keep=3) == {("q", 0, 0), ("q", 1, 0), ("q", 1, 1)}
    assert select(rows, alpha=0.5, keep=4) == {("q", 0, 0), ("q", 1, 0), ("q", 1, 1), ("q", 0, 1)}


def test_without_shortest_draws_a_seeded_random_qualifier():
    lengths = [[50, 40, 90, 10], [30, 20, 60, 70]]
    rows = table("q", [[1, 1, 1, 0], [1, 1, 1, 1]], lengths)
    qualifying = {("q", 0, 0), ("q", 0, 1), ("q", 0, 2), ("q", 1, 0), ("q", 1, 1), ("q", 1, 2), ("q", 1, 3)}
    draws = [select(rows, alpha=0.7, keep=1, shortest=False, seed=s) for s in range(40)]
    assert all(len(d) == 1 and d <= qualifying for d in draws)
    assert len({next(iter(d)) for d in draws}) >= 4  # not always the same one, unlike the shortest rule
    assert draws[3] == select(list(reversed(rows)), alpha=0.7, keep=1, shortest=False, seed=3)  # order-free
    assert select(rows, alpha=0.8, keep=9, shortest=False) == {k for k in qualifying if k[1] == 1}


def test_random_baseline_ignores_correctness_and_caption_rewards():
    rows = table("a", [[0, 0], [0, 0]]) + table("b", [[1, 0], [0, 1]])
    picked = select_random(rows, keep=1, seed=0)
    assert sorted(k[0] for k in picked) == ["a", "b"]  # one per question, even with nothing correct
    wrong = sum(select_random(table("c", [[1, 0, 0, 0]]), seed=s) != {("c", 0, 0)} for s in range(40))
    assert 20 < wrong < 40  # about 3 in 4 draws pick a wrong trajectory
    assert select_random(rows, keep=2, seed=5) == select_random(list(reversed(rows)), keep=2, seed=5)
    assert len(select_random(rows, keep=9)) == len(rows)
