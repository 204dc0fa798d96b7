"""``sophia-jax demo``: SOPHIA measurably learning on this machine's CPU, with the paper's Table 5 ablations.

The world (``sophia.world``): generated images of coloured shapes and digits with questions that
need perception and two arithmetic steps. The models (``sophia_jax/demo_models``, made by
``tools/make_demo_models.py``): a tiny InternVL policy that describes images and answers
directly, and a tiny text reasoner that solves a question step by step from a description.
Stages, each timed:

1. write the held-out and training questions (two training records have broken images);
2. base pass@1 of the policy on the held-out questions;
3. ``sophia-jax generate``: K captions per image, N reasoning trajectories per caption,
   outcome rewards, caption rewards, selection; every trajectory into ``DIR/store``;
4. the selections of Table 5 over the same store: SOPHIA (correct, caption reward > alpha,
   shortest), w/o S (a random qualifying one), w/o CR (alpha = 0), Random (any trajectory);
5. per selection, ``sophia-jax train`` from the same policy (same steps and settings), then
   held-out pass@1 again;
6. the table (printed, ``DIR/results/table.md``, ``results.json``) and ``results/demo.png``.
Settings: the ``demo`` config (``--show-config``); ``demo:quick`` runs the flow on a few questions.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from importlib import resources

from sophia_jax.configs.loading import command_config, load

DEMO_MODELS = "demo_models"  # package folder of the shipped policy/ and reasoner/
LABELS = {  # setting -> (row label, selection rule)
    "base": ("base policy", "no SOPHIA training"),
    "random": ("+ Random", "one trajectory per question drawn from all K x N, correct or not"),
    "no_caption_reward": ("+ SOPHIA w/o CR", "correct and shortest, no caption-reward threshold (alpha = 0)"),
    "no_shortest": ("+ SOPHIA w/o S", "correct, caption reward > alpha, a random one instead of the shortest"),
    "sophia": ("+ SOPHIA", "correct, caption reward > alpha, the shortest (Keep-1)"),
}


def shipped_model(name: str) -> str:
    return str(resources.files("sophia_jax").joinpath(DEMO_MODELS, name))


class Clock:
    """Prints each stage with the time since the start; keeps every stage's seconds by key."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._key, self._since = None, self.start

    def _close(self) -> float:
        now = time.perf_counter()
        if self._key:
            self.seconds[self._key] = round(now - self._since, 1)
        self._key, self._since = None, now
        return now

    def stage(self, key: str, text: str) -> None:
        now = self._close()
        self._key = key
        print(f"\n[{now - self.start:6.0f}s] {text}", flush=True)

    def total(self) -> float:
        return round(self._close() - self.start, 1)


class HeldOut:
    """pass@1 on the held-out questions: the eval core (``evaluation.evaluate``) over one sampler.

    The policy's own chat format (InternVL's default system message, which is also what training
    used for these non-``<think>`` trajectories), ``samples`` samples per question at the paper's
    evaluation decoding, each judged by the verifier; pass@1 is the mean correctness. Every trained
    policy has the base policy's architecture, so ``score(checkpoint)`` swaps the sampler's weights
    without recompiling.
    """

    ROWS = 128  # sampler rows: every held-out sample of the full demo in a few decode calls

    def __init__(self, policy: str, questions_path: str, eval_cfg, *, mesh, verifier, seed: int):
        from sophia_jax.evaluation import EvalSettings
        from sophia_jax.evaluation.benchmarks import items_from_questions
        from sophia_jax.sampling.load import load_sampler

        self.mesh, self.verifier = mesh, verifier
        self.items = items_from_questions(questions_path, benchmark="heldout").items
        section = {"batch_size": self.ROWS, "buckets": (64, 128, 256, 512), "cache_dtype": "float32",
                   "tile_budget": 16, "decode_chunk": 32, "progress": False, "kv_budget": self.ROWS * 512,
                   "block_size": 16}
        self.policy = load_sampler(policy, section, dtype="float32", mesh=mesh)
        self.settings = EvalSettings(k=eval_cfg.samples, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p,
                                     max_new_tokens=eval_cfg.max_new_tokens, seed=seed, chunk=len(self.items))

    def score(self, policy: str | None = None) -> tuple[float, list[dict]]:
        """(pass@1, one row per sample) of ``policy`` (default: the one this was built with)."""
        from sophia_jax import checkpoint
        from sophia_jax.evaluation import ItemResult, evaluate
        from sophia_jax.models.config import RuntimeConfig

        if policy is not None:
            model = checkpoint.load(policy, mesh=self.mesh, runtime=RuntimeConfig(dtype="float32",
                                                                                 param_dtype="float32"))
            self.policy.sampler.update_params(model)
            self.policy.model = model
        results = evaluate(self.policy, self.items, self.settings, verifier=self.verifier)
        skipped = [r for r in results if not isinstance(r, ItemResult)]
        if skipped:  # the world draws every image itself: a skip is a bug, not bad input
            raise RuntimeError(f"held-out items skipped: {skipped[:3]}")
        rows = [{"id": r.id, "answer": r.gold, "output": s.output, "extracted": s.extracted, "correct": s.correct}
                for r in results for s in r.samples]
        return sum(r["correct"] for r in rows) / max(len(rows), 1), rows


# ---------------------------------------------------------------------------------------------- stages
def write_world(root: str, cfg):
    """The held-out and training question files; returns (held-out path, training path, training questions)."""
    from sophia_jax.sophia import world

    heldout = world.split("heldout", cfg.heldout)
    per_image = cfg.questions_per_image
    train = world.split("train", -(-cfg.questions // per_image), per_image)[:cfg.questions]
    directory = os.path.join(root, "world")
    heldout_path = world.write_questions(directory, heldout, "heldout")
    train_path = world.write_questions(directory, train, "train", bad_records=True)
    print(f"{len(train)} training questions on {-(-len(train) // per_image)} images (+2 with broken images), "
          f"{len(heldout)} held-out questions on other images: {directory}")
    return heldout_path, train_path, train


def generate(store: str, questions_path: str, policy: str, reasoner: str, cfg):
    from sophia_jax.sophia import behaviour

    generate_cfg = load("generate:runlocal", [
        f"--config.output_dir={store}", f"--config.dataset.path={questions_path}",
        f"--config.policy.checkpoint={policy}", f"--config.reasoner.checkpoint={reasoner}",
        f"--config.policy.sampling.n={cfg.captions}", "--config.policy.sampling.max_new_tokens=48",
        f"--config.reasoner.sampling.n={cfg.trajectories}", "--config.reasoner.sampling.max_new_tokens=192",
        f"--config.policy.sampling.seed={cfg.seed}", f"--config.reasoner.sampling.seed={cfg.seed}",
        f"--config.selection.alpha={cfg.alpha}", f"--config.selection.keep={cfg.keep}",
        "--config.sampler.batch_size=128", "--config.sampler.kv_budget=65536", "--config.sampler.decode_chunk=32",
        "--config.sampler.buckets=(64, 128, 256, 512)",
        "--config.num_shards=1",  # one shard: every image's K captions serve all its questions
    ])
    report = behaviour.generate(generate_cfg)
    print(report.summary())
    return report


def selections(store_dir: str, cfg) -> dict[str, set]:
    """Each setting's trajectory keys; the ablations are written as named selections of the store."""
    from sophia_jax.data.trajectory_store import TrajectoryStore
    from sophia_jax.sophia import selection

    store = TrajectoryStore(store_dir, clean_on_open=False)
    rows = list(store.iter_index())
    chosen = {
        "random": selection.select_random(rows, keep=cfg.keep, seed=cfg.seed),
        "no_caption_reward": selection.select(rows, alpha=0.0, keep=cfg.keep),
        "no_shortest": selection.select(rows, alpha=cfg.alpha, keep=cfg.keep, shortest=False, seed=cfg.seed),
        "sophia": selection.select(rows, alpha=cfg.alpha, keep=cfg.keep),
    }
    own = {selection.key_of(r) for r in rows if r.selected}
    if chosen["sophia"] != own:
        raise AssertionError("the store's own selection differs from SOPHIA's rule recomputed over its index")
    for name in ("random", "no_caption_reward", "no_shortest"):
        meta = {"setting": name, "rule": LABELS[name][1], "alpha": cfg.alpha, "keep": cfg.keep}
        if name == "random":  # trained on as drawn, correct or not
            meta["dataset_reward"] = 1.0
        store.write_selection(name, store.locate(sorted(chosen[name])), overwrite=True, meta=meta)
        print(f"{LABELS[name][0]:<18} {len(chosen[name]):5d} trajectories  (selection {name!r})")
    print(f"{LABELS['sophia'][0]:<18} {len(chosen['sophia']):5d} trajectories  (the store's own selection)")
    return chosen


def train(store: str, setting: str, policy: str, out: str, num_trajectories: int, cfg) -> str:
    """``sophia-jax train`` on one setting's trajectories; returns the final checkpoint."""
    from sophia_jax.training import trainer

    t = cfg.train
    # Enough passes over the data for the fixed number of steps (rows hold at most seq_len / 48 trajectories).
    epochs = math.ceil(t.steps * t.rows * (t.seq_len // 48) / max(num_trajectories, 1)) + 1
    train_cfg = load("train:runlocal", [
        f"--config.output_dir={out}", f"--config.model.checkpoint={policy}", f"--config.data.store={store}",
        f"--config.data.selection={'' if setting == 'sophia' else setting}", f"--config.data.num_epochs={epochs}",
        f"--config.data.seq_len={t.seq_len}", "--config.data.tiles_per_row=16", f"--config.data.seed={cfg.seed}",
        f"--config.train.global_rows={t.rows}", f"--config.train.micro_rows={t.rows}",
        f"--config.train.steps={t.steps}", f"--config.train.trainable={t.trainable}",
        f"--config.optimizer.peak_learning_rate={t.learning_rate}", "--config.checkpoint.every=1000000",
        "--config.log.tensorboard=False",
    ])
    report = trainer.train(train_cfg)
    print(report.summary())
    return report.final


def caption_facts(store_dir: str, questions) -> dict:
    """Per (question, caption): its reward and whether it describes the image exactly (the world knows)."""
    from sophia_jax.data.trajectory_store import TrajectoryStore
    from sophia_jax.sophia import world

    truth = {q.id: world.describe(q.scene) for q in questions}
    captions, kept = {}, {}
    for r in TrajectoryStore(store_dir, clean_on_open=False).iter_records():
        exact = r.caption.strip() == truth[r.question_id]
        captions[(r.question_id, r.caption_index)] = (r.caption_reward, exact)
        kept[(r.question_id, r.caption_index, r.trajectory_index)] = (r.outcome_reward, exact)
    return {"captions": captions, "trajectories": kept}


def _share(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def results_table(rows: list[dict]) -> str:
    lines = ["| setting | selection rule | trajectories | questions | kept correct | kept with exact caption "
             "| held-out pass@1 | vs base |", "|---|---|---|---|---|---|---|---|"]
    base = rows[0]["pass_at_1"]
    for r in rows:
        def pct(x):
            return "-" if x is None else f"{100 * x:.1f}%"
        delta = "-" if r["name"] == "base" or r["pass_at_1"] is None else f"{100 * (r['pass_at_1'] - base):+.1f}"
        lines.append(f"| {r['label']} | {r['rule']} | {r['trajectories'] if r['name'] != 'base' else '-'} | "
                     f"{r['questions'] if r['name'] != 'base' else '-'} | {pct(r['kept_correct'])} | "
                     f"{pct(r['kept_exact_caption'])} | {pct(r['pass_at_1'])} | {delta} |")
    return "\n".join(lines)


def ordering(rows: list[dict]) -> str:
    done = sorted((r for r in rows if r["pass_at_1"] is not None), key=lambda r: -r["pass_at_1"])
    return " > ".join(f"{r['label'].lstrip('+ ')} ({100 * r['pass_at_1']:.1f}%)" for r in done)


def _use_compilation_cache(directory: str) -> None:
    """Every training run compiles the same train step: XLA's persistent cache compiles it once."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", directory)


def run(cfg) -> str:
    """All stages; returns the store directory."""
    import jax

    from sophia_jax import sharding
    from sophia_jax.configs.demo import SETTINGS
    from sophia_jax.errors import UserError
    from sophia_jax.verify import EVAL_SCORER, VerifierPool

    unknown = [s for s in cfg.settings if s not in SETTINGS]
    if unknown:
        raise UserError(f"config field 'settings': unknown {unknown}; known: {list(SETTINGS)}")
    clock = Clock()
    root = os.path.abspath(cfg.dir or tempfile.mkdtemp(prefix="sophia-demo-"))  # Orbax wants absolute paths
    os.makedirs(root, exist_ok=True)
    _use_compilation_cache(os.path.join(root, "xla_cache"))
    policy, reasoner = (os.path.abspath(path) for path in (cfg.policy or shipped_model("policy"),
                                                            cfg.reasoner or shipped_model("reasoner")))
    results_dir, store = os.path.join(root, "results"), os.path.join(root, "store")
    os.makedirs(results_dir, exist_ok=True)

    clock.stage("world", "1/6 the world")
    heldout_path, train_path, train_questions = write_world(root, cfg)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=-1, tensor=1), jax.local_devices())
    with VerifierPool(num_workers=1, timeout=10.0, scorer=EVAL_SCORER) as verifier:
        clock.stage("base pass@1", f"2/6 base pass@1 on {cfg.heldout} held-out questions ({cfg.eval.samples} samples each)")
        heldout = HeldOut(policy, heldout_path, cfg.eval, mesh=mesh, verifier=verifier, seed=cfg.seed)
        base, outputs = heldout.score()
        _write_jsonl(os.path.join(results_dir, "heldout-base.jsonl"), outputs)
        print(f"base pass@1: {100 * base:.1f}%")

        clock.stage("generate", f"3/6 generate: K={cfg.captions} captions x N={cfg.trajectories} trajectories per question")
        report = generate(store, train_path, policy, reasoner, cfg)

        clock.stage("selections", f"4/6 selections (alpha {cfg.alpha}, Keep-{cfg.keep}) and the ablations")
        chosen = selections(store, cfg)
        facts = caption_facts(store, train_questions)

        rows = [{"name": "base", "label": LABELS["base"][0], "rule": LABELS["base"][1], "trajectories": 0,
                 "questions": 0, "kept_correct": None, "kept_exact_caption": None, "pass_at_1": base}]
        for i, setting in enumerate(s for s in SETTINGS if s in cfg.settings):
            keys = chosen[setting]
            clock.stage(f"train+pass@1 {setting}", f"5/6 [{i + 1}/{len(cfg.settings)}] train {LABELS[setting][0]} on {len(keys)} trajectories, "
                        "then held-out pass@1")
            row = {"name": setting, "label": LABELS[setting][0], "rule": LABELS[setting][1],
                   "trajectories": len(keys), "questions": len({k[0] for k in keys}),
                   "kept_correct": _share(facts["trajectories"][k][0] >= 1 for k in keys),
                   "kept_exact_caption": _share(facts["trajectories"][k][1] for k in keys), "pass_at_1": None}
            if keys:
                final = train(store, setting, policy, os.path.join(root, "runs", setting), len(keys), cfg)
                row["pass_at_1"], outputs = heldout.score(final)
                _write_jsonl(os.path.join(results_dir, f"heldout-{setting}.jsonl"), outputs)
                print(f"{LABELS[setting][0]} pass@1: {100 * row['pass_at_1']:.1f}% (base {100 * base:.1f}%)")
            else:
                print("no trajectories selected: nothing to train")
            rows.append(row)

    clock.stage("results", "6/6 results")
    summary = write_results(results_dir, rows, report, facts, cfg, clock)
    print(summary)
    print(f"\nstore: {store}  (train on it: sophia-jax train --config train:runlocal --config.data.store={store} "
          f"--config.output_dir=OUT)")
    return store


def write_results(directory: str, rows, report, facts, cfg, clock) -> str:
    from sophia_jax.demo_figure import draw_figure

    captions = facts["captions"].values()
    histogram: dict[str, list[int]] = {}
    for reward, exact in captions:
        histogram.setdefault(f"{reward:.3f}", [0, 0])[0 if exact else 1] += 1
    table = results_table(rows)
    sophia = next((r for r in rows if r["name"] == "sophia"), None)
    lines = [table, "", f"ordering: {ordering(rows)}", "the paper's (Table 5): SOPHIA > w/o S > w/o CR > Random > base"]
    if sophia and sophia["pass_at_1"] is not None:
        lines.append(f"SOPHIA vs base: {100 * (sophia['pass_at_1'] - rows[0]['pass_at_1']):+.1f} points of held-out "
                     f"pass@1 ({cfg.heldout} questions x {cfg.eval.samples} samples, seed {cfg.seed})")
    if captions:
        exact = 100 * _share(e for _, e in captions)
        lines.append(f"captions: {len(captions)} (question, caption) pairs, {exact:.1f}% "
                     f"describe their image exactly; mean caption reward {_share(r for r, e in captions if e)} when "
                     f"exact, {_share(r for r, e in captions if not e)} otherwise")
    seconds = clock.total()
    lines.append(f"demo time: {seconds:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in clock.seconds.items()) + ")")
    summary = "\n".join(lines)
    with open(os.path.join(directory, "table.md"), "w") as f:
        f.write(summary + "\n")
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"rows": rows, "ordering": ordering(rows), "caption_reward_histogram": histogram,
                   "generation": report.as_dict(), "seconds": clock.seconds, "total_seconds": seconds,
                   "config": cfg.to_dict()}, f, indent=1, default=list)
    draw_figure(os.path.join(directory, "demo.png"), rows, histogram)
    return summary + f"\nwritten: {directory}/table.md, results.json, demo.png, heldout-*.jsonl"


def _write_jsonl(path: str, rows) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


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

