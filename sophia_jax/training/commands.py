"""``sophia-jax train`` (the SOPHIA policy update) and ``sophia-jax warmup`` (warm-up SFT): one trainer."""

from __future__ import annotations

import argparse

from sophia_jax.configs.loading import load


def _run(argv, prog: str, default_config: str, description: str) -> int:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                epilog="Any config field can be overridden: --config.train.steps=100")
    p.add_argument("--config", default=default_config, help=f"config file[:variant] (default: {default_config!r})")
    args, overrides = p.parse_known_args(argv)
    cfg = load(args.config, overrides)

    from sophia_jax.training.trainer import PREEMPTED_EXIT_CODE, train

    report = train(cfg)
    print(report.summary())
    return PREEMPTED_EXIT_CODE if report.preempted else 0


def train_main(argv=None) -> int:
    return _run(argv, "sophia-jax train", "train", "SOPHIA policy update: reward-weighted likelihood of selected trajectories.")


def warmup_main(argv=None) -> int:
    return _run(argv, "sophia-jax warmup", "warmup", "Warm-up fine-tuning of the policy on general VQA data.")
