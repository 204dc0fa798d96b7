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

MC4 = ["3", "6", "12", "24"]  # options A-D

# (gold, prediction, expected) for judge() on already-extracted answers.
JUDGE_CASES = [
    # fractions vs decimals, tolerance
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\dfrac{1}{2}", True),
    ("\\frac12", "1/2", True),
    ("\\frac{1}{3}", "0.3333", True),
    ("\\frac{1}{3}", "0.33", False),
    ("\\frac{2}{3}", "\\frac{3}{2}", False),
    ("-3", "3", False),
    ("3", "4", False),
    # percentages
    ("50\\%", "0.5", True),
    ("50\\%", "50", True),
    ("0.5", "50\\%", True),
    ("0.5", "50", False),  # no % on either side: not a percentage (see judge docs)
    ("25\\%", "0.3", False),
    # units and degrees
    ("5", "5 cm", True),
    ("5", "5\\text{ cm}", True),
    ("12", "12 \\text{ square units}", True),
    ("5", "6 cm", False),
    ("30^\\circ", "30", True),
    ("30", "30°", True),
    ("\\frac{\\pi}{6}", "30^{\\circ}", True),
    ("\\$12.50", "12.5", True),
    # thousands separators
    ("1000", "1,000", True),
    ("1234567", "1,234,567", True),
    ("1,000", "1000.0", True),
    ("1000, 2000", "2,000, 1,000", True),
    ("1, 2", "2, 1", True),  # not a thousands separator: a list
    # scientific notation
    ("1500", "1.5\\times 10^{3}", True),
    ("1500", "1.5e3", True),
    ("3\\times10^{8}", "300000000", True),
    ("2.5\\times10^{-3}", "0.0025", True),
    ("2.5\\times10^{-3}", "0.025", False),
    # intervals
    ("[1,2)", "[1,2]", False),
    ("(1,2)", "[1,2]", False),
    ("[1,2)", "\\left[1, 2\\right)", True),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(-\\infty,1)\\cup(2,\\infty)", "(2,+\\infty)\\cup(-\\infty,1)", True),
    ("(-\\infty,1)\\cup(2,\\infty)", "(-\\infty,1]\\cup(2,\\infty)", False),
    ("(2,\\infty)", "x>2", True),
    ("[0, \\frac{1}{2}]", "0 \\le x \\le 0.5", True),
    # tuples (ordered) and sets / lists (multisets)
    ("(1,2)", "(2,1)", False),
    ("(3, 4)", "3, 4", True),
    ("(1, \\frac{1}{2})", "(1, 0.5)", True),
    ("\\{1, 2, 3\\}", "\\{3, 1, 2\\}", True),
    ("\\{1, 2, 3\\}", "3, 2, 1", True),
    ("1, 1, 2", "1, 2, 2", False),
    ("1, 2", "1, 2, 3", False),
    ("x=1, y=2", "(1, 2)", True),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}", True),
    # symbolic equality
    ("(x+1)^2", "x^2+2x+1", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+1", "(x+1)^2", False),
    ("x^2-1", "(x-1)(x+1)", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\frac{\\sqrt{2}}{2}", "0.70711", True),
    ("\\sqrt[3]{27}", "3", True),
    ("2^{10}", "1024", True),
    ("\\binom{5}{2}", "10", True),
    ("2\\pi", "2 \\pi", True),
    ("\\pi", "3.14", False),  # rounding is not accepted at rel_tol=1e-4
    ("3+4i", "4i+3", True),
    ("e^{2}", "e^2", True),
    ("\\ln 2", "\\log 2", True),
    ("\\frac{a+b}{2}", "\\frac{b}{2}+\\frac{a}{2}", True),
    ("\\frac{a+b}{2}", "\\frac{a-b}{2}", False),
    ("|x-1|", "|1-x|", True),
    # equations
    ("y=2x+1", "2x-y+1=0", True),
    ("y=2x+1", "y=2x-1", False),
    ("x^2+y^2=1", "2x^2+2y^2=2", True),
    ("5", "x = 5", True),
    ("x=5", "5", True),
    ("x=5", "x=6", False),
    ("2", "AB = \\sqrt{4} = 2", True),
    # misc normalisation
    ("1000", "1,000 \\text{ cm}", True),
    ("x \\in [1, 2]", "[1,2]", True),
    ("\\emptyset", "\\varnothing", True),
    ("2, 3", "x = 2 \\text{ or } x = 3", True),
    ("\\text{Yes}", "yes", True),
    ("\\frac{1}{2}", "$\\frac{1}{2}$.", True),
    ("10", "\\left( 10 \\right)", True),
    ("7", "\\boxed{7}", True),
    # empty / None predictions
    ("5", "", False),
    ("5", None, False),
    ("5", "   ", False),
]


@pytest.mark.parametrize("gold,pred,expected", JUDGE_CASES)
def test_judge_table(gold, pred, expected):
    v = judge(gold, pred)
    assert v.correct is expected, v.reason
    assert isinstance(v.reason, str) and v.reason


# (gold, prediction, choices, expected) for multiple choice.
CHOICE_CASES = [
    ("B", "B", None, True),
    ("B", "(B)", MC4, True),
    ("B", "B.", MC4, True),
    ("B", "\\text{(B) } 6", MC4, True),
    ("C", "(C) 12", MC4, True),
    ("B", "C", MC4, False),
    ("C", "12", MC4, True),  # option text of the gold letter
    ("C", "6", MC4, False),
    ("12", "C", MC4, True),  # gold given as option text, prediction a letter
    ("A", "Answer: A", MC4, True),
    ("A", "E", MC4, False),  # not an option
    ("(D)", "d", MC4, True),
]


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


# (gold, trajectory, choices, expected reward, expected extracted)
TRAJECTORY_CASES = [
    ("\\frac{\\sqrt3}{2}", "...\n**Final answer**\n\\boxed{\\dfrac{\\sqrt{3}}{2}}", None, 1.0, "\\dfrac{\\sqrt{3}}{2}"),
    ("4", "<think>\\boxed{3}</think>The answer is \\boxed{4}", None, 1.0, "4"),
    ("3", "<think>\\boxed{3}</think>The answer is \\boxed{4}", None, 0.0, "4"),
    ("3", "<think>\\boxed{3} ...", None, 0.0, None),
    ("C", "Comparing options... the answer is (C).", MC4, 1.0, "C"),
    ("C", "**Final answer**\n\\boxed{(C) 12}", MC4, 1.0, "(C) 12"),
    ("B", "**Final answer**\n\\boxed{12}", MC4, 0.0, "12"),
    ("0.5", "**Final Answer:** 50\\%", None, 1.0, "50\\%"),
]


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
