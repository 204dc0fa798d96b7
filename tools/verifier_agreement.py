"""Build the outside reference for the verifier: (gold, prediction, expected) cases
taken from peer verifiers' own test suites, written to JSONL files OUTSIDE the project.

The verifier must be judged on cases it was not tuned to, so the cases are never
committed; this tool only knows where they live in the peers' repositories.

    python tools/verifier_agreement.py --mirror /work/.mirror --out /work/notes/verifier-cases

Sources (git mirrors brought by the fetch tool, read with ``git show``, nothing executed):

* ``math-verify``: Hugging Face Math-Verify ``tests/*.py``; every
  ``@pytest.mark.parametrize`` whose names include gold, pred, expected and whose
  rows are literals (read with ``ast.literal_eval``, never imported).
* ``olympiadbench``: the OlympiadBench judge's self-test, ``eval/scoring_examples.json``
  (GT and its answers with ``equal``; these answers are already extracted, so rows carry
  ``extracted: true``; the rows that set their own precision are kept
  apart as ``precision`` since our default tolerance differs by design).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess


def _git_show(repo: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "show", f"HEAD:{path}"], check=True, capture_output=True, text=True).stdout


def _git_files(repo: str) -> list[str]:
    out = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", "HEAD"], check=True, capture_output=True, text=True)
    return out.stdout.split()


def math_verify_cases(repo: str) -> list[dict]:
    cases = []
    for path in _git_files(repo):
        if not (path.startswith("tests/") and path.endswith(".py")):
            continue
        tree = ast.parse(_git_show(repo, path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "parametrize" and len(node.args) >= 2):
                continue
            try:
                names = ast.literal_eval(node.args[0])
                rows = ast.literal_eval(node.args[1])
            except ValueError:
                continue  # rows built by code, not literals
            names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
            if not {"gold", "pred", "expected"} <= set(names):
                continue
            gi, pi, ei = names.index("gold"), names.index("pred"), names.index("expected")
            for row in rows:
                if isinstance(row[gi], str) and isinstance(row[pi], str):
                    cases.append({"gold": row[gi], "pred": row[pi], "expected": bool(row[ei]), "source": path})
    return cases


def olympiadbench_cases(repo: str) -> tuple[list[dict], list[dict]]:
    plain, with_precision = [], []
    for entry in json.loads(_git_show(repo, "eval/scoring_examples.json")):
        for ans in entry["Ans"]:
            case = {"gold": entry["GT"], "pred": ans["answer"], "expected": bool(ans["equal"]), "source": "eval/scoring_examples.json", "extracted": True}
            if "precision" in ans:
                case["precision"] = ans["precision"]
                with_precision.append(case)
            else:
                plain.append(case)
    return plain, with_precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror", default="/work/.mirror")
    ap.add_argument("--out", default="/work/notes/verifier-cases")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sets = {"math-verify": math_verify_cases(os.path.join(args.mirror, "huggingface+Math-Verify", "repo"))}
    sets["olympiadbench"], sets["olympiadbench-precision"] = olympiadbench_cases(
        os.path.join(args.mirror, "OpenBMB+OlympiadBench", "repo")
    )
    for name, cases in sets.items():
        with open(os.path.join(args.out, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            for c in cases:
                f.write(json.dumps(c, ensure_ascii=False) + "\n")
        print(f"{name}: {len(cases)} cases ({sum(not c['expected'] for c in cases)} should not match)")


if __name__ == "__main__":
    main()
