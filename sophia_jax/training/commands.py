"""``sophia-jax train`` (the SOPHIA policy update) and ``sophia-jax warmup`` (warm-up SFT): one trainer."""

from __future__ import annotations

from sophia_jax.configs.loading import command_config


def _run(argv, prog: str, default_config: str, description: str) -> int:
    cfg = command_config(prog, description, default_config, argv)

    from sophia_jax.training.trainer import PREEMPTED_EXIT_CODE, train

    report = train(cfg)
    print(report.summary())
    return PREEMPTED_EXIT_CODE if report.preempted else 0


def train_main(argv=None) -> int:
    return _run(argv, "train", "train", "SOPHIA policy update: reward-weighted likelihood of selected trajectories.")


def warmup_main(argv=None) -> int:
    return _run(argv, "warmup", "warmup", "Warm-up fine-tuning of the policy on general VQA data.")
