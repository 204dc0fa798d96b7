"""``sophia-jax demo``: the whole SOPHIA behaviour model on a toy world, on this machine's CPU.

Builds tiny random policy and reasoner checkpoints and a few generated image questions (two of
them broken on purpose), then runs exactly what ``sophia-jax generate`` runs (captions,
reasoning, verification, caption rewards, selection, the trajectory store) and a re-selection.
Random weights make random text, so the numbers show the flow, not learning. Settings: the
``demo`` config (``--show-config``).
"""

from __future__ import annotations

import os
import tempfile

from sophia_jax.configs.loading import command_config, load


def run(cfg) -> str:
    """Builds the toy world, runs generate and a re-selection; returns the store directory."""
    from sophia_jax.sophia import behaviour, toy

    root = cfg.dir or tempfile.mkdtemp(prefix="sophia-demo-")
    print(f"building the toy world in {root} ...")
    world = toy.build(os.path.join(root, "world"), num_questions=cfg.questions)
    store = os.path.join(root, "store")
    generate_cfg = load("generate:runlocal", [
        f"--config.output_dir={store}", f"--config.dataset.path={world.questions}",
        f"--config.policy.checkpoint={world.policy}", f"--config.reasoner.checkpoint={world.reasoner}",
        f"--config.reasoner.sampling.n={cfg.reasoner_n}", f"--config.selection.alpha={cfg.alpha}",
        "--config.sampler.progress=False",
    ])
    report = behaviour.generate(generate_cfg)
    print("\n" + report.summary())
    print(f"\nre-selecting with alpha {cfg.reselect.alpha}, Keep-{cfg.reselect.keep} (no regeneration):")
    print(behaviour.reselect(store, cfg.reselect.alpha, cfg.reselect.keep, overwrite=True))
    print(f"\nstore: {store} (manifest.json, report-000.json, shards/, selections/)")
    return store


def _legacy_flags(argv) -> list[str]:
    """``--dir D`` and ``--questions N`` (the demo's flags before configs) still work."""
    out, argv = [], list(argv or [])
    while argv:
        arg = argv.pop(0)
        name, sep, value = arg.partition("=")
        if name in ("--dir", "--questions"):
            if not sep:
                value = argv.pop(0) if argv else ""
            out.append(f"--config.{name[2:]}={value}")
        else:
            out.append(arg)
    return out


def main(argv=None) -> int:
    run(command_config("demo", __doc__, "demo", _legacy_flags(argv)))
    return 0
