"""Model output is untrusted: code-shaped answers are never run and never judged correct.

Each payload is Python that, if any part of the verifier handed it to ``eval``/``exec``,
``sympify`` or ``parse_expr``, would create a canary file (an absolute path under
``tmp_path``) and evaluate to a known value.  The payloads go through the real worker pool
(``VerifierPool.score``, the call ``sophia_jax.sophia.behaviour`` makes) as the model's
answer and as the gold answer; the other side of each pair is the value the payload would
evaluate to, so executing it would also flip the reward to 1.  The judge refuses
code-shaped predictions before parsing anything, so a second pass sends the payloads, raw,
straight to both equivalence engines (our translator and math-verify's LaTeX parser) in the
workers.  A control first runs every payload with ``exec`` to prove it really does create
its canary, and an in-process spy records every string that reaches sympy's ``parse_expr``.
"""

from __future__ import annotations

import builtins
import re

import pytest
import sympy
import sympy.parsing.sympy_parser as sympy_parser

from sophia_jax.verify import VerifierPool, judge
from sophia_jax.verify.sympy_bridge import math_verify_equal

# name -> (payload template with {path}, value the payload evaluates to when executed).
# No braces in the code itself: they would end the \boxed{...} group early.
PAYLOADS = {
    "dunder_import": ("__import__('os').system('touch {path}')", "0"),
    "import_statement": ("import os; os.system('touch {path}')", "0"),
    "lambda": ("(lambda: open('{path}','w').write('x'))()", "1"),
    "open_write": ("open('{path}','w').write('x')", "1"),
    "eval": ("eval(\"open('{path}','w').write('x')\")", "1"),
    "exec": ("exec(\"open('{path}','w').write('x')\") or 1", "1"),
    "subclasses_walk": (
        "[c for c in ().__class__.__bases__[0].__subclasses__() if c.__name__=='catch_warnings'][0]()"
        "._module.__builtins__['open']('{path}','w').write('x')",
        "1",
    ),
    # What sympy's string parser would evaluate as-is: sympy names and calls around builtins.
    "sympy_names": ("Integer(1)*open('{path}','w').write('x')", "1"),
    "sympify_call": ("sympify(\"open('{path}','w').write('x')\")", "1"),
    "parse_expr_call": ("parse_expr(\"__import__('os').system('touch {path}')\")", "0"),
    "symbol_plus_import": ("x + __import__('os').system('touch {path}') - x", "0"),
}

REASONING = "Let me work through the problem step by step. The computation gives the value below.\n"


# (form, gold(payload, value), trajectory(payload, value), whether reward 0 is required)
FORMS = [
    ("answer_boxed", lambda p, v: v, lambda p, v: f"{REASONING}\\boxed{{{p}}}", True),
    ("answer_final_marker", lambda p, v: v, lambda p, v: f"{REASONING}**Final answer**\n{p}", True),
    ("answer_inline_marker", lambda p, v: v, lambda p, v: f"{REASONING}Final answer: {p}", True),
    ("gold_boxed", lambda p, v: p, lambda p, v: f"{REASONING}\\boxed{{{v}}}", True),
    ("gold_final_marker", lambda p, v: p, lambda p, v: f"{REASONING}**Final answer**\n{v}", True),
    # Both sides code: identical strings may match as text (gold is trusted data and
    # nothing is evaluated); only the canary is checked here.
    ("both", lambda p, v: p, lambda p, v: f"{REASONING}\\boxed{{{p}}}", False),
]


def test_payloads_are_live(tmp_path):
    """Control: executed for real, every payload creates its canary (so the test can fail)."""
    namespace = {"__builtins__": builtins, **{k: v for k, v in vars(sympy).items() if not k.startswith("_")}}
    namespace["parse_expr"] = sympy.parse_expr
    namespace["x"] = sympy.Symbol("x")
    for name, (template, _) in PAYLOADS.items():
        canary = tmp_path / f"control_{name}"
        exec(template.format(path=canary), dict(namespace))  # noqa: S102 - trusted test code
        assert canary.exists(), name


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(num_workers=2, timeout=5.0) as p:
        yield p


def test_code_shaped_text_is_never_run_nor_judged_correct(pool, tmp_path):
    cases = []
    for name, (template, value) in PAYLOADS.items():
        for form, gold_of, text_of, must_fail in FORMS:
            canary = tmp_path / f"{name}__{form}"  # one canary per item: a hit names its form
            payload = template.format(path=canary)
            cases.append((f"{name}/{form}", canary, must_fail, gold_of(payload, value), text_of(payload, value)))

    rewards = pool.score([(gold, text) for _, _, _, gold, text in cases])

    created = [case for case, canary, *_ in cases if canary.exists()]
    assert created == [], f"payloads were executed: {created}"
    accepted = [(case, r) for (case, _, must_fail, *_), r in zip(cases, rewards) if must_fail and r.reward != 0.0]
    assert accepted == [], f"code-shaped text judged correct: {accepted}"
    # Judged, not dodged: no item timed out or crashed a worker.
    broken = [(case, r.reason) for (case, *_), r in zip(cases, rewards) if r.reason.startswith(("timeout", "crash"))]
    assert broken == [], broken
    # The boxed payloads really reached the judge as the extracted answer.
    for (case, _, _, _, text), r in zip(cases, rewards):
        if case.endswith("/answer_boxed"):
            assert r.extracted and "(" in r.extracted, (case, r)
    assert pool.stats["timeouts"] == 0 and pool.stats["crashes"] == 0
    # The pool still scores ordinary answers afterwards.
    assert pool.score_trajectory("\\frac{1}{2}", "\\boxed{0.5}").reward == 1.0


def test_engines_never_run_code_shaped_text(tmp_path):
    """Without the judge's code screen, neither engine executes a payload nor accepts it."""
    cases = []
    for name, (template, value) in PAYLOADS.items():
        for side in ("answer", "gold"):
            canary = tmp_path / f"{name}__{side}"
            payload = template.format(path=canary)
            cases.append((f"{name}/{side}", canary, (value, payload) if side == "answer" else (payload, value)))
    with VerifierPool(num_workers=2, timeout=5.0, scorer="_testing:engines_unscreened") as pool:
        rewards = pool.score([pair for *_, pair in cases])
    assert [case for case, canary, _ in cases if canary.exists()] == []
    assert [(case, r.reason) for (case, *_), r in zip(cases, rewards) if r.reward != 0.0] == []
    assert [(case, r.reason) for (case, *_), r in zip(cases, rewards) if r.reason.startswith(("timeout", "crash"))] == []


def test_only_numerals_and_bare_names_reach_parse_expr(tmp_path, monkeypatch):
    """sympy's string parser evaluates Python; record what reaches it while judging.

    math-verify's LaTeX parser hands number tokens to ``sympy.Number`` (which parses them
    with ``parse_expr``) and sympy's units module parses its own prefix names; nothing else
    may get there: no call, no quote, no attribute access.
    """
    seen = []
    real = sympy_parser.parse_expr

    def spy(text, *args, **kwargs):
        seen.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(sympy_parser, "parse_expr", spy)
    answers = ["1,000.5", "12 345", "3.14\\%", "\\sum_{k=1}^{n} k", "\\begin{pmatrix}1 & 2\\end{pmatrix}", "x_1^2 + 1"]
    for name, (template, _) in PAYLOADS.items():
        answers.append(template.format(path=tmp_path / name))
    for answer in answers:
        judge("1", answer)
        judge(answer, "1")
        math_verify_equal(answer, "1")
    assert seen, "the spy saw nothing: math-verify's number parsing no longer goes through parse_expr"
    assert [t for t in seen if not re.fullmatch(r"[0-9.]+|[A-Za-z]+", str(t))] == []
    assert [name for name in PAYLOADS if (tmp_path / name).exists()] == []
