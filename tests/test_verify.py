"""Tests for the answer verifier (sophia_jax.verify): extraction, judge, pool."""

from __future__ import annotations

import time

import pytest

from sophia_jax.verify import (
    Reward,
    VerifierPool,
    choice_letter,
    extract_answer,
    extract_choice,
    find_boxed,
    judge,
    score_trajectory,
)
from sophia_jax.verify._testing import CRASH_MARKER, HANG_MARKER

from verify_cases import CHOICE_CASES, JUDGE_CASES, MC4, NO_MATCH, TRAJECTORY_CASES


def test_case_table_covers_both_sides():
    assert len(JUDGE_CASES) >= 200 and len(NO_MATCH) >= 70


@pytest.mark.parametrize("gold,pred,expected", JUDGE_CASES)
def test_judge_table(gold, pred, expected):
    v = judge(gold, pred)
    assert v.correct is expected, v.reason
    assert isinstance(v.reason, str) and v.reason


@pytest.mark.parametrize("gold,pred,choices,expected", CHOICE_CASES)
def test_judge_multiple_choice(gold, pred, choices, expected):
    v = judge(gold, pred, choices=choices)
    assert v.correct is expected, v.reason


# (trajectory, expected extracted answer)
EXTRACT_CASES = [
    ("Reasoning...\n**Final answer**\n\n\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\{1, \\frac{2}{3}\\}}", "\\{1, \\frac{2}{3}\\}"),
    ("the answer is \\fbox{42}", "42"),
    ("so \\boxed 7 is it", "7"),
    ("blah\nFinal Answer: 42", "42"),
    ("blah\n**Answer:** $\\frac{1}{2}$", "\\frac{1}{2}"),
    ("Thus the final answer is $7$.", "7"),
    ("**Final answer**\n\nThe area is 12.", "12"),
    ("**Final Answer**\n\\[ x = 3 \\]", "x = 3"),
    ("Some work\nTherefore $x = 9$", "x = 9"),
    ("<think>maybe \\boxed{3}</think>So the answer is \\boxed{4}.", "4"),
    ("<think>long thoughts \\boxed{3} never finished", None),
    ("<think>hmm</think><answer>The answer is \\boxed{8}</answer>", "8"),
    ("<think>hmm</think>\n<answer> 3/4 </answer>", "3/4"),
    ("no answer here at all", None),
    ("\\boxed{5", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_find_boxed_nested_braces():
    text = "\\boxed{\\frac{a}{b^{2}}} and \\boxed{{x}}"
    assert find_boxed(text) == ["\\frac{a}{b^{2}}", "{x}"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("... so the correct option is (C).", "C"),
        ("Answer: B", "B"),
        ("**Final answer**\n\\boxed{(C) 12}", "C"),
        ("**Final answer**\n\\boxed{24}", "D"),  # option text -> letter
        ("I think the answer is a good one", None),
        ("nothing", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, MC4) == expected


def test_choice_letter_respects_valid_letters():
    assert choice_letter("(E)", ["A", "B", "C", "D"]) is None
    assert choice_letter("Option B", None) == "B"
    assert choice_letter("12", ["A", "B"]) is None


@pytest.mark.parametrize("gold,text,choices,reward,extracted", TRAJECTORY_CASES)
def test_score_trajectory(gold, text, choices, reward, extracted):
    r = score_trajectory(gold, text, choices)
    assert (r.reward, r.extracted) == (reward, extracted), r.reason


def test_no_answer_reason():
    r = score_trajectory("5", "I could not solve it.")
    assert r == Reward(0.0, None, "no answer found")


def test_tolerance_and_percent_knobs():
    assert not judge("\\pi", "3.14")
    assert judge("\\pi", "3.14", rel_tol=1e-3)
    assert judge("0.5", "50", lenient_percent=True)
    assert not judge("1", "1.001")
    assert judge("1e-12", "0", abs_tol=1e-8)


def test_judge_refuses_pathological_input_in_process():
    # These return quickly in-process thanks to the guards (no pool needed).
    t0 = time.monotonic()
    for pred in ["9^{9^{9^{9}}}", "10^{10^{10}}", "(x+1)^{100000}", "100000!", "(" * 500 + "1" + ")" * 500, "1+" * 5000 + "1"]:
        v = judge("2", pred)
        assert not v.correct
        assert v.reason.startswith("refused"), (pred[:20], v.reason)
    assert time.monotonic() - t0 < 10


def test_judge_never_raises_on_garbage():
    for pred in ["\\frac{", "}{", "\\sqrt[", "^^^", "1/0", "\\undefinedcommand{x}", "((((", "x=", "=", "__import__('os')"]:
        v = judge("1", pred)
        assert v.correct is False


# ----------------------------------------------------------------------------
# Pool
# ----------------------------------------------------------------------------

ADV_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(num_workers=2, timeout=ADV_TIMEOUT) as p:
        yield p


def test_pool_matches_in_process(pool):
    items = [(g, f"**Final answer**\n\\boxed{{{p}}}") for g, p, _ in JUDGE_CASES if p and p.strip()]
    items += [(g, t, c) for g, t, c, _, _ in TRAJECTORY_CASES]
    got = pool.score(items)
    want = [score_trajectory(*it) for it in items]
    assert [r.reward for r in got] == [r.reward for r in want]
    assert [r.extracted for r in got] == [r.extracted for r in want]


def test_pool_adversarial_inputs_do_not_hang(pool):
    huge_tail = "word " * 400_000  # ~2 MB of text, no answer
    items = [
        ("2", "**Final answer**\n\\boxed{9^{9^{9^{9}}}}"),
        ("2", "\\boxed{10^{10^{10}}}"),
        ("1", "\\boxed{" + "(" * 500 + "1" + ")" * 500 + "}"),
        ("1", "\\boxed{" + "x+" * 50_000 + "1}"),
        ("1", "\\boxed{(x+1)^{100000}}"),
        ("1", "\\boxed{100000!}"),
        ("5", huge_tail),
        ("5", "\\(" * 100_000 + "\n" + "$" * 100_000),
        ("5", "{" * 200_000 + "\\boxed{" + "{" * 100_000),
    ]
    t0 = time.monotonic()
    rewards = pool.score(items)
    elapsed = time.monotonic() - t0
    assert all(r.reward == 0.0 for r in rewards), rewards
    for r in rewards[:6]:
        assert r.reason.startswith(("refused", "timeout")), r.reason
    # Every item ends within its own timeout (plus process overhead).
    assert elapsed < len(items) * ADV_TIMEOUT / pool.num_workers + 10
    # The pool is still healthy afterwards.
    assert pool.score_trajectory("5", "\\boxed{5}").reward == 1.0


def test_pool_long_trajectory_with_answer(pool):
    text = "Let me think. " * 100_000 + "\n**Final answer**\n\\boxed{\\frac{3}{4}}"
    r = pool.score_trajectory("0.75", text)
    assert r.reward == 1.0 and r.extracted == "\\frac{3}{4}"


def test_pool_accepts_mappings_and_keeps_order(pool):
    items = [{"gold": str(i), "text": f"\\boxed{{{i if i % 3 else i + 1}}}"} for i in range(12)]
    rewards = pool.score(items)
    assert [r.reward for r in rewards] == [0.0 if i % 3 == 0 else 1.0 for i in range(12)]


def test_pool_worker_crash_is_reward_zero_and_pool_recovers():
    with VerifierPool(num_workers=1, timeout=ADV_TIMEOUT, scorer="_testing:crash_on_marker") as p:
        rewards = p.score([
            ("5", "\\boxed{5}"),
            ("5", f"\\boxed{{5}} {CRASH_MARKER}"),
            ("5", "\\boxed{5}"),
        ])
        assert [r.reward for r in rewards] == [1.0, 0.0, 1.0]
        assert rewards[1].reason.startswith("crash:") and "17" in rewards[1].reason
        assert p.stats["crashes"] == 1 and p.stats["restarts"] == 1
        # A later batch on the same pool still works.
        assert p.score_trajectory("x^2", "\\boxed{x\\cdot x}").reward == 1.0


def test_pool_hung_worker_is_killed_and_replaced():
    with VerifierPool(num_workers=1, timeout=1.0, scorer="_testing:hang_on_marker") as p:
        t0 = time.monotonic()
        rewards = p.score([("5", f"\\boxed{{5}} {HANG_MARKER}"), ("5", "\\boxed{5}")])
        assert time.monotonic() - t0 < 30
        assert rewards[0] == Reward(0.0, None, "timeout after 1s")
        assert rewards[1].reward == 1.0
        assert p.stats["timeouts"] == 1


def test_pool_workers_do_not_import_jax():
    with VerifierPool(num_workers=1, scorer="_testing:report_modules") as p:
        assert p.score_trajectory("1", "1").reason == "modules: "


def test_pool_rejects_bad_arguments():
    with pytest.raises(ValueError):
        VerifierPool(num_workers=0)
    with pytest.raises(ValueError):
        VerifierPool(num_workers=1, scorer="os.system")
    p = VerifierPool(num_workers=1)
    p.close()
    with pytest.raises(RuntimeError):
        p.score([("1", "1")])
