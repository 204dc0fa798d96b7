"""``sophia-jax generate`` and ``sophia-jax select``."""

from __future__ import annotations

import argparse

from sophia_jax.configs.loading import load


def generate_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="sophia-jax generate",
        description="SOPHIA behaviour model: captions -> reasoning -> rewards -> trajectory store.",
        epilog="Any config field can be overridden: --config.selection.alpha=0.8 --config.num_shards=64",
    )
    p.add_argument("--config", default="generate", help="config file[:variant] (default: the built-in 'generate')")
    args, overrides = p.parse_known_args(argv)
    cfg = load(args.config, overrides)

    from sophia_jax.sophia.behaviour import generate

    report = generate(cfg)
    print(report.summary())
    print(f"report: {cfg.output_dir}/report-*.json; store manifest: {cfg.output_dir}/manifest.json")
    return 0


def select_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="sophia-jax select",
        description="Re-select trajectories of a finished store with another alpha / Keep-N, without regenerating.",
    )
    p.add_argument("--store", required=True, help="output_dir of sophia-jax generate")
    p.add_argument("--alpha", type=float, default=0.75, help="caption reward must be strictly above this")
    p.add_argument("--keep", type=int, default=1, help="shortest qualifying trajectories kept per question")
    p.add_argument("--name", default="", help="selection name (default: alpha<A>-keep<N>)")
    p.add_argument("--overwrite", action="store_true", help="replace a selection of the same name")
    args = p.parse_args(argv)

    from sophia_jax.sophia import selection
    from sophia_jax.data.trajectory_store import TrajectoryStore

    store = TrajectoryStore(args.store, clean_on_open=False)
    rows = list(store.iter_index())
    if not rows:
        raise SystemExit(f"{args.store}: no finished shards")
    chosen = selection.select(rows, alpha=args.alpha, keep=args.keep)
    keys = store.locate(sorted(chosen))
    name = args.name or f"alpha{args.alpha:g}-keep{args.keep}"
    store.write_selection(name, keys, meta={"alpha": args.alpha, "keep": args.keep}, overwrite=args.overwrite)
    questions = {r.question_id for r in rows}
    with_selection = {k[0] for k in chosen}
    print(f"{len(rows)} trajectories over {len(questions)} questions; selected {len(chosen)} "
          f"({len(with_selection)} questions, yield {len(with_selection) / len(questions):.3f})")
    print(f"selection {name!r} written to {store.root}/selections/{name}.json")
    return 0
