"""``sophia-jax demo``: the whole SOPHIA behaviour model on a toy world, on this machine's CPU.

Builds tiny random policy and reasoner checkpoints and a few generated image questions (two of
them broken on purpose), then runs exactly what ``sophia-jax generate`` runs (captions,
reasoning, verification, caption rewards, selection, the trajectory store) and a re-selection.
Random weights make random text, so the numbers show the flow, not learning.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from sophia_jax.configs.loading import load


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sophia-jax demo", description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="", help="where to put the toy world and the store (default: a temp dir)")
    p.add_argument("--questions", type=int, default=6, help="number of toy questions")
    args = p.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix="sophia-demo-")

    from sophia_jax.sophia import behaviour, commands, toy

    print(f"building the toy world in {root} ...")
    world = toy.build(os.path.join(root, "world"), num_questions=args.questions)
    store = os.path.join(root, "store")
    cfg = load("generate:runlocal", [
        f"--config.output_dir={store}", f"--config.dataset.path={world.questions}",
        f"--config.policy.checkpoint={world.policy}", f"--config.reasoner.checkpoint={world.reasoner}",
        "--config.reasoner.sampling.n=4", "--config.selection.alpha=0.2", "--config.sampler.progress=False",
    ])
    report = behaviour.generate(cfg)
    print("\n" + report.summary())
    print("\nre-selecting with alpha 0.0, Keep-2 (no regeneration):")
    commands.select_main(["--store", store, "--alpha", "0.0", "--keep", "2", "--overwrite"])
    print(f"\nstore: {store} (manifest.json, report-000.json, shards/, selections/)")
    return 0
