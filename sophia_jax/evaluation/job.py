"""The job behind ``sophia-jax eval``: benchmarks from their files, resumable, split over hosts.

Layout under ``output_dir``::

    manifest.json            the settings of the run (a rerun with other settings is refused)
    items/items-p000.jsonl   one line per finished item (core.ItemResult.to_json) or skipped item
                             ({"id", "benchmark", "skipped": reason, "message"}), per writing host
    results.json             the accuracy table (metrics.summarize), written by process 0
    results.md               the same table in Markdown
    report.json              counts, every skipped record with its reason, the paper's exclusions

Resuming: a rerun reads every ``items-*.jsonl``, drops a line cut short by a kill, and samples
only the items that have no line yet. An item's samples depend only on the seed and its id
(``core.item_key``), so the resumed table equals an uninterrupted one. Hosts take the items
whose id hashes to their process index and write their own file; after a barrier process 0
writes the tables over all files.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import time
from typing import Iterable

import jax
import ml_collections

from sophia_jax import distributed, sharding
from sophia_jax.configs.loading import require
from sophia_jax.data.trajectory_store import shard_of
from sophia_jax.errors import UserError
from sophia_jax.evaluation import metrics
from sophia_jax.evaluation.benchmarks import LAYOUTS, BenchmarkSet, EvalItem, items_from_questions, load_benchmark
from sophia_jax.evaluation.core import EvalSettings, ItemResult, ItemSkip, evaluate
from sophia_jax.sophia.prompts import Prompts

logger = logging.getLogger(__name__)

# Config fields that change what is sampled or how it is judged: a rerun must not mix them.
_FINGERPRINT = ("model", "samples", "sampling", "system_prompt", "images", "judge")


def parse_spec(spec: str, what: str) -> dict[str, str]:
    """``"name=value,name=value"`` -> {name: value}."""
    out: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UserError(f"config field {what!r}: entry {entry!r} must look like name=path")
        out[name.strip()] = value.strip()
    return out


def load_items(cfg) -> list[BenchmarkSet]:
    """Every benchmark named in ``cfg.benchmarks``, read from its files."""
    specs = parse_spec(cfg.benchmarks, "benchmarks")
    roots = parse_spec(cfg.image_roots, "image_roots")
    unknown = (set(specs) | set(roots)) - set(LAYOUTS) - {"questions"}
    if unknown:
        raise UserError(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(LAYOUTS)}, questions")
    sets = []
    for name, path in specs.items():
        if name == "questions":
            sets.append(items_from_questions(path, image_root=roots.get(name), limit=cfg.limit))
        else:
            sets.append(load_benchmark(name, path, image_root=roots.get(name), limit=cfg.limit))
        s = sets[-1]
        logger.info("%s: %d items, %d skipped, %d excluded (%s)", name, len(s.items), len(s.skipped),
                    sum(s.excluded.values()), ", ".join(s.files[:3]) + (" ..." if len(s.files) > 3 else ""))
    return sets


def settings_of(cfg) -> EvalSettings:
    s = cfg.sampling
    return EvalSettings(k=cfg.samples, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                        max_new_tokens=s.max_new_tokens, seed=s.seed, system_prompt=system_prompt(cfg.system_prompt),
                        max_tiles=cfg.images.max_tiles, total_tiles=cfg.images.total_tiles, chunk=cfg.chunk)


def system_prompt(choice: str) -> str | None:
    """``long_cot`` (the paper's Fig. A4 style, ours), ``default`` (InternVL's), ``none``, or a file's text."""
    if choice == "long_cot":
        return Prompts.load().long_cot_system
    if choice == "default":
        return None
    if choice == "none":
        return ""
    try:
        with open(choice, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise UserError(f"config field 'system_prompt': {choice!r} is not long_cot/default/none and cannot be "
                        f"read: {e}") from None


# ------------------------------------------------------------------------------------------- files
def _read_lines(path: str, *, repair: bool) -> list[dict]:
    """The JSON lines of ``path``; a last line cut by a kill is dropped (and, with ``repair``, cut off the file)."""
    with open(path, "rb") as f:
        data = f.read()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
        if not line.endswith(b"\n"):
            rows.pop()
            break
        good += len(line)
    if repair and good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def read_finished(output_dir: str, own: str | None = None) -> list[dict]:
    """Every finished or skipped item line of every host (``own``: this host's file, repaired if cut)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(output_dir, "items", "items-p*.jsonl"))):
        rows += _read_lines(path, repair=path == own)
    return rows


def _check_manifest(cfg, sets: list[BenchmarkSet]) -> None:
    path = os.path.join(cfg.output_dir, "manifest.json")
    fingerprint = json.loads(ml_collections.ConfigDict({k: cfg[k] for k in _FINGERPRINT}).to_json())
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f).get("settings")
        if old != fingerprint:
            changed = sorted(k for k in fingerprint if old.get(k) != fingerprint[k]) if isinstance(old, dict) else []
            raise UserError(f"{cfg.output_dir} holds an evaluation with other settings ({', '.join(changed) or '?'}); "
                            f"use another output_dir")
        return
    if jax.process_index() == 0:
        manifest = {"settings": fingerprint, "benchmarks": {s.name: s.files for s in sets}}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2)
        os.replace(tmp, path)


# -------------------------------------------------------------------------------------------- run
def _key(benchmark: str, item_id: str) -> str:
    return f"{benchmark}/{item_id}"


def _load_models(cfg, mesh):
    from sophia_jax.evaluation.model_judge import ModelJudge
    from sophia_jax.sampling.load import load_sampler

    policy = load_sampler(cfg.model, cfg.sampler, dtype=cfg.dtype, mesh=mesh, name=cfg.model_name,
                          attention=cfg.attention)
    judge = None
    if cfg.judge.checkpoint:
        judge_model = load_sampler(cfg.judge.checkpoint, cfg.sampler, dtype=cfg.dtype, mesh=mesh,
                                   attention=cfg.attention)
        judge = ModelJudge(judge_model, extract=cfg.judge.extract,
                           judge_benchmarks=[b for b in cfg.judge.benchmarks.split(",") if b.strip()],
                           max_new_tokens=cfg.judge.max_new_tokens, response_chars=cfg.judge.response_chars)
    return policy, judge


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", desc="eval", dynamic_ncols=True, disable=not enabled)


def write_tables(cfg, sets: list[BenchmarkSet], rows: Iterable[dict], seconds: float) -> dict:
    """results.json, results.md and report.json over all finished items; returns the summary."""
    results, skipped, seen = [], [], set()
    for row in rows:
        key = _key(row["benchmark"], row["id"])
        if key not in seen:  # two jobs run by hand on the same directory may both have written an item
            seen.add(key)
            (skipped if "skipped" in row else results).append(row)
    skip_counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    listed = []
    for s in sets:
        for sk in s.skipped:
            skip_counts[s.name][sk.reason] += 1
            listed.append({"benchmark": s.name, "id": sk.record_id, "reason": sk.reason, "message": sk.message,
                           "where": f"{sk.file}:{sk.location}"})
        skip_counts.setdefault(s.name, collections.Counter())
    for row in skipped:
        skip_counts[row["benchmark"]][row["skipped"]] += 1
        listed.append({"benchmark": row["benchmark"], "id": row["id"], "reason": row["skipped"],
                       "message": row["message"], "where": "eval"})
    summary = metrics.summarize([ItemResult.from_json(r) for r in results], skip_counts, k=cfg.samples,
                                excluded={s.name: s.excluded for s in sets}, order=[s.name for s in sets])
    _write_json(os.path.join(cfg.output_dir, "results.json"), summary)
    with open(os.path.join(cfg.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"# {cfg.model_name or os.path.basename(os.path.normpath(cfg.model))}: {cfg.samples} sample(s) "
                f"per item\n\n" + metrics.markdown(summary))
    _write_json(os.path.join(cfg.output_dir, "report.json"), {
        "items_judged": len(results), "skipped_counts": {k: dict(v) for k, v in skip_counts.items()},
        "excluded_counts": {s.name: dict(s.excluded) for s in sets}, "skipped": listed,
        "seconds_this_run": round(seconds, 1)})
    return summary


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def run(cfg: ml_collections.ConfigDict) -> dict | None:
    """Evaluates this host's unfinished items, then (process 0) writes the tables; returns the summary."""
    require(cfg, "model", "benchmarks", "output_dir")
    if cfg.images.total_tiles > cfg.sampler.tile_budget:
        raise UserError(f"images.total_tiles ({cfg.images.total_tiles}) exceeds sampler.tile_budget "
                        f"({cfg.sampler.tile_budget}): a question's tiles are prefilled together")
    distributed.initialize(cfg.distributed)
    start = time.perf_counter()
    process_index, process_count = jax.process_index(), jax.process_count()
    sets = load_items(cfg)
    os.makedirs(os.path.join(cfg.output_dir, "items"), exist_ok=True)
    _check_manifest(cfg, sets)
    own = os.path.join(cfg.output_dir, "items", f"items-p{process_index:03d}.jsonl")
    finished = {_key(r["benchmark"], r["id"]) for r in read_finished(cfg.output_dir, own=own)}
    items: list[EvalItem] = [it for s in sets for it in s.items]
    mine = [it for it in items if shard_of(_key(it.benchmark, it.id), process_count) == process_index]
    todo = [it for it in mine if _key(it.benchmark, it.id) not in finished]
    logger.info("%d items; this host: %d, %d to do", len(items), len(mine), len(todo))

    if todo:
        from sophia_jax.verify import EVAL_SCORER, VerifierPool

        mesh = sharding.make_mesh(sharding.MeshConfig(**cfg.mesh), jax.local_devices())
        policy, judge = _load_models(cfg, mesh)
        bar = _progress(len(todo), cfg.progress)
        correct = [0, 0]
        with VerifierPool(num_workers=cfg.verifier.workers, timeout=cfg.verifier.timeout,
                          scorer=EVAL_SCORER) as verifier, \
                open(own, "a", encoding="utf-8") as out:

            def append(chunk: list[ItemResult | ItemSkip]) -> None:
                for r in chunk:
                    out.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
                    if isinstance(r, ItemResult):
                        correct[0] += r.num_correct
                        correct[1] += len(r.samples)
                out.flush()
                os.fsync(out.fileno())
                bar.update(len(chunk))
                if correct[1]:
                    bar.set_postfix(pass1=f"{100 * correct[0] / correct[1]:.1f}")

            evaluate(policy, todo, settings_of(cfg), verifier=verifier, judge=judge, on_chunk=append)
        bar.close()
    if process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("sophia-jax eval: all items judged")
    if process_index != 0:
        return None
    return write_tables(cfg, sets, read_finished(cfg.output_dir), time.perf_counter() - start)
