"""Agreement of the verifier with peers' own test suites (cases kept outside the project).

    PYTHONPATH=$PWD python benchmarks/verifier_agreement.py --cases /work/notes/verifier-cases

Each JSONL file in ``--cases`` is one set of ``{"gold", "pred", "expected"}`` rows (build
them with ``tools/verifier_agreement.py``).  The prediction is scored like a trajectory
(our extraction, then the judge) through the real :class:`VerifierPool`, so timeouts and
worker isolation are part of what is measured.  Reports per set: agreement, accepted wrong
answers (expected False, reward 1), missed correct answers (expected True, reward 0) with
their reasons grouped by kind; ``--show-misses`` prints them.  For comparison only,
``--engine math-verify`` scores the same rows with Hugging Face math-verify alone (in-process,
its own extraction and parsers, ``parse_expr`` included), and ``--engine math-verify-engine``
with math-verify's LaTeX path as the whole equivalence engine behind our extraction.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import time

from sophia_jax.verify import extract_answer, find_boxed


def _ours(rows, workers: int, timeout: float):
    from sophia_jax.verify import VerifierPool

    with VerifierPool(num_workers=workers, timeout=timeout) as pool:
        return pool.score([(_gold(r), _as_trajectory(r)) for r in rows])


def _gold(row: dict) -> str:
    """Free-text rows may hold a whole solution as gold; the peer reads it with the same
    extraction as the prediction, and so do we."""
    return row["gold"] if row.get("extracted") else extract_answer(row["gold"]) or row["gold"]


def _as_trajectory(row: dict) -> str:
    """Rows marked ``extracted`` hold a bare final answer: put it where our extraction looks
    (in a box, or after the marker when its braces would not close one)."""
    if not row.get("extracted"):
        return row["pred"]
    boxed = f"**Final answer**\n\\boxed{{{row['pred']}}}"
    return boxed if find_boxed(boxed) == [row["pred"].strip()] else f"**Final answer**\n{row['pred']}"


def _math_verify(rows, behind_our_extraction: bool):
    """math-verify in-process: alone (its own extraction and default parsers, plain-expression
    path included: trusted test strings only), or as the equivalence engine behind our
    extraction (its LaTeX path only, with our interval-vs-inequality symmetry)."""
    import logging

    from math_verify import LatexExtractionConfig, parse, verify

    from sophia_jax.verify import Reward

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    latex = [LatexExtractionConfig()]
    out = []
    for r in rows:
        try:
            if behind_our_extraction:
                answer = extract_answer(_as_trajectory(r))
                as_latex = lambda s: parse(f"$${s.replace('$', '')}$$", latex)  # noqa: E731
                ok = answer is not None and verify(as_latex(_gold(r)), as_latex(answer), allow_set_relation_comp=True)
            else:
                answer = None
                ok = verify(parse(r["gold"]), parse(r["pred"]))
        except Exception as e:  # noqa: BLE001
            out.append(Reward(0.0, None, f"error: {type(e).__name__}"))
            continue
        out.append(Reward(1.0 if ok else 0.0, answer, "math-verify"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", required=True, help="folder of *.jsonl case sets")
    ap.add_argument("--engine", choices=("ours", "math-verify", "math-verify-engine"), default="ours")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args()
    for path in sorted(glob.glob(os.path.join(args.cases, "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        t0 = time.perf_counter()
        if args.engine == "ours":
            got = _ours(rows, args.workers, args.timeout)
        else:
            got = _math_verify(rows, behind_our_extraction=args.engine == "math-verify-engine")
        secs = time.perf_counter() - t0
        agree = sum((g.reward == 1.0) == r["expected"] for g, r in zip(got, rows))
        wrong = [(r, g) for g, r in zip(got, rows) if g.reward == 1.0 and not r["expected"]]
        missed = [(r, g) for g, r in zip(got, rows) if g.reward == 0.0 and r["expected"]]
        kinds = collections.Counter(g.reason.split(":")[0].split("(")[0].strip() for _, g in missed)
        name = os.path.basename(path)[:-6]
        print(f"{name}: {agree}/{len(rows)} agree ({100 * agree / len(rows):.1f}%), "
              f"accepted wrong {len(wrong)}, missed {len(missed)}  [{secs:.1f}s, {len(rows) / secs:.0f} rows/s]")
        sources = collections.Counter(r["source"].split(":")[0] for r in rows)
        for src, n in sorted(sources.items()):
            ok = sum((g.reward == 1.0) == r["expected"] for g, r in zip(got, rows) if r["source"].startswith(src + ":"))
            print(f"    {src}: {ok}/{n} agree")
        for k, n in kinds.most_common():
            print(f"    miss {n:3d}  {k}")
        if args.show_misses:
            for r, g in wrong:
                print(f"  WRONG  gold={r['gold']!r} pred={r['pred']!r} -> {g.extracted!r} {g.reason}")
            for r, g in missed:
                print(f"  MISS   gold={r['gold']!r} pred={r['pred']!r} -> {g.extracted!r} {g.reason}")


if __name__ == "__main__":
    main()
