"""Benchmark evaluation: the paper's eight benchmarks from their files, pass@1 and pass@k.

    from sophia_jax.evaluation import EvalSettings, evaluate, load_benchmark
    items = load_benchmark("mathvista", "/data/MathVista").items
    results = evaluate(policy, items, EvalSettings(k=1), verifier=pool)   # policy: sampling.load.LoadedModel
    table = summarize(results, skipped={}, k=1)

``benchmarks`` (layouts and loaders), ``core`` (the library function), ``model_judge`` (Fig. A5 /
A6), ``metrics`` (tables), ``job`` (the resumable ``sophia-jax eval``).
"""

from sophia_jax.evaluation.benchmarks import LAYOUTS, BenchmarkSet, EvalItem, items_from_questions, load_benchmark
from sophia_jax.evaluation.core import EvalSettings, ItemResult, ItemSkip, SampleResult, evaluate, user_text
from sophia_jax.evaluation.metrics import markdown, pass_at_k, summarize

__all__ = [
    "LAYOUTS",
    "BenchmarkSet",
    "EvalItem",
    "EvalSettings",
    "ItemResult",
    "ItemSkip",
    "SampleResult",
    "evaluate",
    "items_from_questions",
    "load_benchmark",
    "markdown",
    "pass_at_k",
    "summarize",
    "user_text",
]
