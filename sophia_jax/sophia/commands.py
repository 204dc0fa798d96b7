"""``sophia-jax generate`` and ``sophia-jax select``: thin mains over ``behaviour``."""

from __future__ import annotations

from sophia_jax.configs.loading import command_config


def generate_main(argv=None) -> int:
    """SOPHIA behaviour model: captions -> reasoning -> rewards -> trajectory store."""
    cfg = command_config("generate", generate_main.__doc__, "generate", argv)
    from sophia_jax.sophia.behaviour import generate

    report = generate(cfg)
    print(report.summary())
    print(f"report: {cfg.output_dir}/report-*.json; store manifest: {cfg.output_dir}/manifest.json")
    return 0


def select_main(argv=None) -> int:
    """Re-select the trajectories of a finished store with another alpha / Keep-N, without regenerating."""
    cfg = command_config("select", select_main.__doc__, "select", argv)
    from sophia_jax.configs.loading import require
    from sophia_jax.sophia.behaviour import reselect

    require(cfg, "store")
    print(reselect(cfg.store, cfg.selection.alpha, cfg.selection.keep, name=cfg.name, overwrite=cfg.overwrite))
    return 0
