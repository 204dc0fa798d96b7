"""Accuracy tables: pass@1 averaged over k samples and pass@k, per benchmark and per category.

* pass@1 of an item with ``c`` correct of ``n`` samples is ``c / n``; a benchmark's pass@1 is the
  mean over its items (with n = 1 this is plain accuracy, the paper's number).
* pass@k uses the unbiased estimator ``1 - C(n - c, k) / C(n, k)`` (Chen et al., 2021), which for
  k = n is "any sample correct".
* DynaMath also reports worst-case accuracy: a seed question counts only if every one of its
  variants is answered correctly (first sample of each).
* "Average" is the unweighted mean over the benchmarks in the table, as the paper's Avg column.

Skipped items (bad records, unreadable images, prompts too long) are counted and do not enter
the accuracies; the report lists each with its reason.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping

from sophia_jax.evaluation.benchmarks import LAYOUTS
from sophia_jax.evaluation.core import ItemResult

__all__ = ["markdown", "pass_at_k", "summarize"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _scores(results: list[ItemResult], k: int) -> dict:
    n = len(results)
    if not n:
        return {"items": 0, "pass@1": None, f"pass@{k}": None}
    p1 = sum(r.num_correct / len(r.samples) for r in results) / n
    pk = sum(pass_at_k(len(r.samples), r.num_correct, k) for r in results) / n
    return {"items": n, "pass@1": round(100 * p1, 2), f"pass@{k}": round(100 * pk, 2)}


def summarize(results: Iterable[ItemResult], skipped: Mapping[str, Mapping[str, int]], *, k: int,
              excluded: Mapping[str, Mapping[str, int]] | None = None, order: Iterable[str] = ()) -> dict:
    """The accuracy table as plain data (what ``results.json`` holds).

    ``skipped`` / ``excluded``: per benchmark, counts by reason. ``order``: benchmark order of the table
    (default: the paper's, then any others by name).
    """
    by_bench: dict[str, list[ItemResult]] = collections.defaultdict(list)
    for r in results:
        by_bench[r.benchmark].append(r)
    names = list(dict.fromkeys([*order, *[n for n in LAYOUTS if n in by_bench], *sorted(by_bench), *skipped]))
    benchmarks = {}
    for name in names:
        rs = sorted(by_bench.get(name, []), key=lambda r: r.id)
        entry = {"title": LAYOUTS[name].title if name in LAYOUTS else name, **_scores(rs, k),
                 "skipped": dict(skipped.get(name, {})), "excluded": dict((excluded or {}).get(name, {}))}
        categories = collections.defaultdict(list)
        for r in rs:
            categories[r.category or "-"].append(r)
        entry["categories"] = {c: _scores(v, k) for c, v in sorted(categories.items())}
        groups = collections.defaultdict(list)
        for r in rs:
            if r.group:
                groups[r.group].append(r.samples[0].correct)
        if groups:
            entry["worst_case"] = round(100 * sum(all(v) for v in groups.values()) / len(groups), 2)
        benchmarks[name] = entry
    scored = [b for b in benchmarks.values() if b["items"]]
    average = {key: round(sum(b[key] for b in scored) / len(scored), 2) if scored else None
               for key in ("pass@1", f"pass@{k}")}
    return {"k": k, "benchmarks": benchmarks, "average": average}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(summary: dict) -> str:
    """The table as Markdown: one row per benchmark and the average, then each benchmark's categories."""
    k = summary["k"]
    cols = ["pass@1"] + ([f"pass@{k}"] if k > 1 else [])
    lines = [f"| Benchmark | items | skipped | {' | '.join(cols)} |", "|---|---:|---:|" + "---:|" * len(cols)]
    for b in summary["benchmarks"].values():
        extra = f" (worst case {_fmt(b['worst_case'])})" if "worst_case" in b else ""
        lines.append(f"| {b['title']}{extra} | {b['items']} | {sum(b['skipped'].values())} | "
                     + " | ".join(_fmt(b[c]) for c in cols) + " |")
    lines.append("| **Average** | | | " + " | ".join(_fmt(summary["average"][c]) for c in cols) + " |")
    for b in summary["benchmarks"].values():
        if not b["categories"]:
            continue
        lines += ["", f"### {b['title']} by category", "", f"| Category | items | {' | '.join(cols)} |",
                  "|---|---:|" + "---:|" * len(cols)]
        for name, c in b["categories"].items():
            lines.append(f"| {name} | {c['items']} | " + " | ".join(_fmt(c[col]) for col in cols) + " |")
        if b["skipped"] or b["excluded"]:
            lines.append("")
            if b["skipped"]:
                lines.append("Skipped: " + ", ".join(f"{r} {n}" for r, n in sorted(b["skipped"].items())))
            if b["excluded"]:
                lines.append("Excluded by the paper's split: "
                             + ", ".join(f"{r} {n}" for r, n in sorted(b["excluded"].items())))
    return "\n".join(lines) + "\n"
