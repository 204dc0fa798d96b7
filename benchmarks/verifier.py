"""Verifier throughput: judgements/s of VerifierPool on typical answers, and the timeout path's cost.

Typical answers: SOPHIA-style trajectories (a paragraph of reasoning, then ``**Final answer**``
and ``\\boxed{...}``) over a mix of integers, fractions, LaTeX expressions, choice letters,
intervals and equations, with fresh numbers in every item (no cache serves them); every other
item is wrong.  The pool uses its default worker count
(half the CPUs) and default 5 s per-item timeout.

    python benchmarks/verifier.py                  # 2000 items, 3 rounds
    python benchmarks/verifier.py --items 500 --rounds 1 --hangs 2

Reported: worker count, the load average when measuring (this machine is shared, so the figure
moves with other people's work), judgements/s (median of rounds) and how many items were
scored as labelled.  Timeout path: the same batch plus ``--hangs`` items that never finish.
The judge's own guards refuse every blow-up we know of (``9^{9^{9^9}}``, huge factorials,
symbolic powers) in well under a second, so the hanging items are made with the package's
test scorer (``_testing:hang_on_marker``: the real pool, an item that sleeps until it is
killed).  Reported: wall time against the clean batch, the timeouts counted, and whether the
other items were still judged exactly as in the clean batch.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from sophia_jax.verify import VerifierPool
from sophia_jax.verify._testing import HANG_MARKER

MC = ["12", "15", "18", "21"]


def typical(rng: random.Random) -> tuple[str, str, str, list | None]:
    """(gold, right answer as a model writes it, a wrong answer, choices or None).

    Every call draws fresh numbers, so no judgement is served from a cache (in training
    the 8 rollouts of a caption share one gold, and often one answer: caches help there).
    """
    a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
    kinds = [
        (f"{a * b}", f"{a * b}", f"{a * b + 1}", None),
        (f"{1000 * a}", f"{a}{{,}}000", f"{100 * a}", None),
        (f"-{a}", f"-{a}", f"{a}", None),
        (f"\\frac{{{a}}}{{{a + b}}}", f"{a / (a + b):.6f}", f"\\frac{{{a + b}}}{{{a}}}", None),
        (f"\\frac{{1}}{{{c}}}", f"\\dfrac{{1}}{{{c}}}", f"{1 / c + 0.01:.2f}", None),
        (f"{c}\\sqrt{{2}}", f"\\sqrt{{{2 * c * c}}}", f"{c}\\sqrt{{3}}", None),
        (f"\\frac{{\\pi}}{{{c}}}", f"{180 // c}^\\circ" if 180 % c == 0 else f"\\frac{{{a}\\pi}}{{{a * c}}}", f"\\frac{{\\pi}}{{{c + 1}}}", None),
        (f"x^2+{2 * c}x+{c * c}", f"(x+{c})^2", f"(x-{c})^2", None),
        (f"\\frac{{x+{a}}}{{x-{b}}}", f"\\frac{{{a}+x}}{{x-{b}}}", f"\\frac{{x-{b}}}{{x+{a}}}", None),
        (f"{a}\\%", f"{a / 100:g}", f"{a / 10:g}", None),
        ("B", "B", "C", MC),
        ("C", "18", "15", MC),
        ("A", "(A) 12", "D", MC),
        (f"[{a}, {a + b})", f"[{a},{a + b})", f"[{a},{a + b}]", None),
        (f"(-\\infty, {a}]", f"x \\le {a}", f"x < {a}", None),
        (f"y={c}x+{a}", f"y = {a} + {c}x", f"y={c}x-{a}", None),
        (f"x={a}", f"{a}", f"-{a}", None),
        (f"({a}, -{b})", f"({a},-{b})", f"(-{b},{a})", None),
        (f"{a}, {a + 1}, {a + 2}", f"{a + 2}, {a + 1}, {a}", f"{a}, {a + 1}", None),
        (f"{a} \\text{{ cm}}", f"{a}", f"{a + 1}", None),
    ]
    return kinds[rng.randrange(len(kinds))]


REASONING = (
    "We read the figure carefully. The caption gives the relevant quantities, so we set up the "
    "relation between them, simplify, and check the result against the constraints.\n"
)


def typical_batch(n: int, seed: int = 0) -> tuple[list[tuple], list[float]]:
    """n items of fresh typical answers, wrong on every other item; with the labels."""
    rng = random.Random(seed)
    items, labels = [], []
    for i in range(n):
        gold, right, wrong, choices = typical(rng)
        correct = i % 2 == 0
        text = f"{REASONING}**Final answer**\n\\boxed{{{right if correct else wrong}}}"
        items.append((gold, text, choices))
        labels.append(1.0 if correct else 0.0)
    return items, labels


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure_clean(n: int, rounds: int) -> None:
    start = time.perf_counter()
    with VerifierPool() as pool:
        pool.score(typical_batch(20, seed=-1)[0])  # wait until every worker has imported sympy
        startup = time.perf_counter() - start
        rates, agree, load_at = [], 0, load()
        for k in range(rounds):  # a fresh batch each round: nothing is cached from the last one
            items, labels = typical_batch(n, seed=k)
            t = time.perf_counter()
            rewards = pool.score(items)
            rates.append(len(items) / (time.perf_counter() - t))
            agree += sum(r.reward == y for r, y in zip(rewards, labels))
        print(f"workers={pool.num_workers} cpus={os.cpu_count()} load_avg(1,5,15 min)={load_at}  "
              f"(shared machine: other engineers' jobs run on these cores)")
        print(f"clean: {n} items x {rounds} rounds: {statistics.median(rates):.0f} judgements/s "
              f"(rounds: {', '.join(f'{r:.0f}' for r in rates)}); pool start {startup:.1f}s; "
              f"scored as labelled {agree}/{n * rounds}")


def measure_timeouts(items, hangs: int) -> None:
    hang_items = [("5", f"{REASONING}**Final answer**\n\\boxed{{5}} {HANG_MARKER}", None)] * hangs
    # Spread the hanging items through the batch, as they would arrive in real data.
    mixed = list(items)
    for k, item in enumerate(hang_items):
        mixed.insert((k + 1) * len(items) // (hangs + 1), item)
    with VerifierPool(scorer="_testing:hang_on_marker") as pool:
        pool.score(items[:20])
        load_at = load()
        t = time.perf_counter()
        clean = pool.score(items)
        clean_s = time.perf_counter() - t
        t = time.perf_counter()
        got = pool.score(mixed)
        mixed_s = time.perf_counter() - t
        rest = [r for it, r in zip(mixed, got) if HANG_MARKER not in it[1]]
        same = sum(a.reward == b.reward for a, b in zip(rest, clean))
        hung = [r for it, r in zip(mixed, got) if HANG_MARKER in it[1]]
        print(f"timeout path (load_avg {load_at}, timeout {pool.timeout:g}s, workers {pool.num_workers}): "
              f"clean {len(items)} items {clean_s:.2f}s; with {hangs} hanging items {mixed_s:.2f}s "
              f"(+{mixed_s - clean_s:.2f}s, {(mixed_s - clean_s) / max(hangs, 1):.2f}s per timeout); "
              f"timeouts={pool.stats['timeouts']} restarts={pool.stats['restarts']}; "
              f"hanging items reward {[r.reward for r in hung]} ({hung[0].reason if hung else '-'}); "
              f"other items judged as in the clean batch: {same}/{len(rest)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hangs", type=int, default=3, help="items that hit the per-item timeout")
    args = ap.parse_args()
    measure_clean(args.items, args.rounds)
    if args.hangs:
        measure_timeouts(typical_batch(args.items, seed=args.rounds)[0], args.hangs)


if __name__ == "__main__":
    main()
