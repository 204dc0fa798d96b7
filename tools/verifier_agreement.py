"""Build the outside reference for the verifier: (gold, prediction, expected) cases
taken from peer verifiers' own test suites, written to JSONL files OUTSIDE the project.

The verifier must be judged on cases it was not tuned to, so the cases are never
committed; this tool only knows where they live in the peers' repositories.

    python tools/verifier_agreement.py --mirror /work/.mirror --out /work/notes/verifier-cases

Sources (git mirrors brought by the fetch tool, read with ``git show``; nothing of theirs is
imported or executed: test files are read with ``ast`` and ``ast.literal_eval``):

* set ``math-verify`` (free-text predictions, our extraction runs on them):
  Hugging Face Math-Verify ``tests/*.py``, every ``@pytest.mark.parametrize`` whose
  names include gold, pred and expected (or result) and whose rows are literals.  Rows
  that set one of the peer's own options (``precision``, ``strict``,
  ``allow_set_relation_comp``) keep it under ``options``; we score them in our one mode.
* set ``graders`` (answers already extracted, so rows carry ``extracted: true``):
  - OpenBMB/OlympiadBench ``eval/scoring_examples.json``, the self-test of the paper's
    judge (GT and its answers with ``equal``); rows that set their own precision go to
    a third set, ``olympiadbench-precision``, since our default tolerance differs by design;
  - NVIDIA/NeMo-Skills ``tests/test_math_equal.py``: pairs that must (not) be equal,
    checked by the peer in both directions, so each pair gives two rows;
  - MARIO-Math-Reasoning/MARIO_EVAL ``math_evaluation/tests/test_is_equiv.py``:
    ``test_in``/``test_out`` assignments followed by ``assertTrue``/``assertFalse`` of
    the peer's equivalence check, including the loops over lists of pairs;
  - volcengine/verl pull request 2446 (``refs/pull/2446/head``),
    ``tests/utils/reward_score/test_numeric_canonicalization_on_cpu.py``: boxed gold
    answers that must equal their canonical integer.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess

VERL_PR_REF = "refs/pull/2446/head"


def _git_show(repo: str, path: str, ref: str = "HEAD") -> str:
    return subprocess.run(["git", "-C", repo, "show", f"{ref}:{path}"], check=True, capture_output=True, text=True).stdout


def _git_files(repo: str) -> list[str]:
    out = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", "HEAD"], check=True, capture_output=True, text=True)
    return out.stdout.split()


def _literal(node: ast.AST):
    """``ast.literal_eval`` plus arithmetic on number literals (``5 / 2`` in a test table)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _literal(node.left), _literal(node.right)
        if not all(isinstance(v, (int, float)) for v in (a, b)):
            raise ValueError("arithmetic on non-numbers")
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b}
        return ops[type(node.op)]()
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    return ast.literal_eval(node)


def _parametrize_tables(source: str):
    """(argument names, rows) of every ``parametrize`` whose rows are literals."""
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "parametrize" and len(node.args) >= 2):
            continue
        try:
            names = ast.literal_eval(node.args[0])
            rows = _literal(node.args[1])
        except ValueError:
            continue  # rows built by code, not literals
        names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
        yield names, rows


def math_verify_cases(repo: str) -> list[dict]:
    cases = []
    for path in _git_files(repo):
        if not (path.startswith("tests/") and path.endswith(".py")):
            continue
        for names, rows in _parametrize_tables(_git_show(repo, path)):
            want = "expected" if "expected" in names else "result" if "result" in names else None
            if want is None or not {"gold", "pred"} <= set(names):
                continue
            gi, pi, ei = names.index("gold"), names.index("pred"), names.index(want)
            others = [(i, n) for i, n in enumerate(names) if i not in (gi, pi, ei)]
            for row in rows:
                if isinstance(row[gi], str) and isinstance(row[pi], str):
                    case = {"gold": row[gi], "pred": row[pi], "expected": bool(row[ei]), "source": f"Math-Verify:{path}"}
                    if others:
                        case["options"] = {n: row[i] for i, n in others}
                    cases.append(case)
    return cases


def olympiadbench_cases(repo: str) -> tuple[list[dict], list[dict]]:
    path = "eval/scoring_examples.json"
    plain, with_precision = [], []
    for entry in json.loads(_git_show(repo, path)):
        for ans in entry["Ans"]:
            case = {"gold": entry["GT"], "pred": ans["answer"], "expected": bool(ans["equal"]),
                    "source": f"OlympiadBench:{path}", "extracted": True}
            if "precision" in ans:
                case["precision"] = ans["precision"]
                with_precision.append(case)
            else:
                plain.append(case)
    return plain, with_precision


def _as_answer(v) -> str | None:
    return None if v is None else v if isinstance(v, str) else repr(v)


def nemo_skills_cases(repo: str) -> list[dict]:
    path = "tests/test_math_equal.py"
    source = _git_show(repo, path)
    tree = ast.parse(source)
    cases = []
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name not in ("test_correct_examples", "test_incorrect_examples"):
            continue
        expected = fn.name == "test_correct_examples"
        for deco in fn.decorator_list:
            if not (isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "parametrize"):
                continue
            for pair in _literal(deco.args[1]):
                a, b = (_as_answer(v) for v in pair)
                if a is None or b is None:
                    continue  # a missing answer is not a comparison
                for gold, pred in ((a, b), (b, a)):  # the peer asserts both directions
                    cases.append({"gold": gold, "pred": pred, "expected": expected,
                                  "source": f"NeMo-Skills:{path}", "extracted": True})
    return cases


_MARIO_CHECKS = {"_test_is_equiv", "_test_is_not_equiv", "is_equiv", "are_equal_under_sympy"}


def _mario_assert(stmt: ast.stmt):
    """(expected, argument names) for ``self.assertTrue/False(check(a, b, ...))``, else None."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return None
    call = stmt.value
    kind = getattr(call.func, "attr", "")
    if kind not in ("assertTrue", "assertFalse") or not call.args or not isinstance(call.args[0], ast.Call):
        return None
    inner = call.args[0]
    if getattr(inner.func, "id", "") not in _MARIO_CHECKS or len(inner.args) < 2:
        return None
    # Every check returns the peer's verdict itself (the helpers only print), so assertTrue
    # means "equivalent" and assertFalse "not equivalent".
    return kind == "assertTrue", [a.id for a in inner.args[:2] if isinstance(a, ast.Name)]


def mario_cases(repo: str) -> list[dict]:
    path = "math_evaluation/tests/test_is_equiv.py"
    tree = ast.parse(_git_show(repo, path))
    cases = []

    def add(gold, pred, expected):
        cases.append({"gold": gold, "pred": pred, "expected": expected, "source": f"MARIO_EVAL:{path}", "extracted": True})

    for fn in ast.walk(tree):
        if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_")):
            continue
        env: dict = {}
        for stmt in fn.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                try:
                    env[stmt.targets[0].id] = ast.literal_eval(stmt.value)
                except ValueError:
                    pass
                continue
            if isinstance(stmt, ast.For) and isinstance(stmt.iter, ast.Name) and isinstance(stmt.target, ast.Tuple):
                loop_vars = [t.id for t in stmt.target.elts]
                for body_stmt in stmt.body:
                    found = _mario_assert(body_stmt)
                    if found and found[1] == loop_vars:
                        for gold, pred in env.get(stmt.iter.id, []):
                            add(gold, pred, found[0])
                continue
            found = _mario_assert(stmt)
            if found and len(found[1]) == 2 and all(isinstance(env.get(n), str) for n in found[1]):
                add(env[found[1][0]], env[found[1][1]], found[0])
    return cases


def verl_cases(repo: str) -> list[dict]:
    path = "tests/utils/reward_score/test_numeric_canonicalization_on_cpu.py"
    cases = []
    for names, rows in _parametrize_tables(_git_show(repo, path, VERL_PR_REF)):
        if names == ["gt", "pred"]:
            for gold, pred in rows:
                cases.append({"gold": gold, "pred": pred, "expected": True,
                              "source": f"verl#2446:{path}", "extracted": True})
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror", default="/work/.mirror")
    ap.add_argument("--out", default="/work/notes/verifier-cases")
    args = ap.parse_args()
    repo = lambda name: os.path.join(args.mirror, name, "repo")  # noqa: E731
    os.makedirs(args.out, exist_ok=True)
    olympiad, olympiad_precision = olympiadbench_cases(repo("OpenBMB+OlympiadBench"))
    sets = {
        "math-verify": math_verify_cases(repo("huggingface+Math-Verify")),
        "graders": olympiad + nemo_skills_cases(repo("NVIDIA+NeMo-Skills")) + mario_cases(repo("MARIO-Math-Reasoning+MARIO_EVAL"))
        + verl_cases(repo("volcengine+verl")),
        "olympiadbench-precision": olympiad_precision,
    }
    for name, cases in sets.items():
        with open(os.path.join(args.out, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            for c in cases:
                f.write(json.dumps(c, ensure_ascii=False) + "\n")
        by_source: dict = {}
        for c in cases:
            by_source[c["source"].split(":")[0]] = by_source.get(c["source"].split(":")[0], 0) + 1
        print(f"{name}: {len(cases)} cases ({sum(not c['expected'] for c in cases)} should not match) {by_source}")


if __name__ == "__main__":
    main()
