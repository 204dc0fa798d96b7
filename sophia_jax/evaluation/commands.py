"""``sophia-jax eval``: a thin main over ``job.run``."""

from __future__ import annotations

from sophia_jax.configs.loading import command_config


def eval_main(argv=None) -> int:
    """Benchmark evaluation: pass@1 (and pass@k) on the paper's benchmarks from their published files."""
    cfg = command_config("eval", eval_main.__doc__, "eval", argv)
    from sophia_jax.evaluation.job import run

    summary = run(cfg)
    if summary is not None:
        for b in summary["benchmarks"].values():
            print(f"{b['title']}: pass@1 {b['pass@1']} over {b['items']} items ({sum(b['skipped'].values())} skipped)")
        print(f"average pass@1: {summary['average']['pass@1']}")
        print(f"tables: {cfg.output_dir}/results.md, results.json; skipped records: {cfg.output_dir}/report.json")
    return 0
