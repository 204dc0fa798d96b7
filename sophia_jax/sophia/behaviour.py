"""The SOPHIA semi-off-policy behaviour model: the job behind ``sophia-jax generate``.

For each shard of questions (a stable hash of the question id picks the shard):

1. tile each image (InternVL dynamic tiling); a missing or corrupt image skips its questions;
2. sample K captions per image from the policy, with the caption prompt (question not shown);
3. sample N slow-thinking trajectories per caption from the text reasoner, with the
   simulated-visual-reasoning prompt (question + caption);
4. score each trajectory with the verifier (process pool; a timeout or crash scores 0);
5. caption reward = mean outcome of its N trajectories; select correct trajectories whose
   caption reward is above alpha, Keep-N shortest (policy tokens) per question;
6. write every trajectory (selected or not) to the store as one atomic shard.

Finished shards are skipped on a rerun and a killed run loses at most the shard in flight.
Each shard samples with seeds derived from (role, the role's base seed, shard id), so a rerun
reproduces it.
Several hosts split the shards by process index; each host samples on a mesh of its own local
devices with its own copy of both models, so hosts never wait on each other.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from sophia_jax import distributed, sharding
from sophia_jax.configs.loading import require
from sophia_jax.errors import UserError
from sophia_jax.data import chat_templates
from sophia_jax.data.datasets import FieldMap, Question, read_questions
from sophia_jax.data.images import ImageError, TilingConfig
from sophia_jax.sampling import Prompt, Sampler, SamplingParams
from sophia_jax.sampling.load import load_sampler
from sophia_jax.sophia import selection
from sophia_jax.sophia.prompts import Prompts
from sophia_jax.data.trajectory_record import TrajectoryRecord
from sophia_jax.sophia.report import Report
from sophia_jax.data.trajectory_store import TrajectoryStore, shard_of, shards_for_host
from sophia_jax.verify import VerifierPool

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Role:
    """A loaded model with its tokenizer and sampler (the policy or the reasoner)."""

    name: str
    model: Any
    tokenizer: Any
    sampler: Sampler
    sampling: SamplingParams


@dataclasses.dataclass(frozen=True)
class Scored:
    """What selection needs of a trajectory, before its record is built."""

    question_id: str
    caption_index: int
    trajectory_index: int
    outcome_reward: float
    trajectory_policy_tokens: int


def load_role(role_cfg, cfg, mesh) -> Role:
    """Loads a role's checkpoint (ours or a Hugging Face directory) with its sampler and sampling settings."""
    loaded = load_sampler(role_cfg.checkpoint, cfg.sampler, dtype=cfg.dtype, mesh=mesh, name=role_cfg.name,
                          attention=cfg.attention)
    p = role_cfg.sampling
    sampling = SamplingParams(max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
                              top_k=p.top_k, n=p.n, stop_token_ids=loaded.stop_token_ids, seed=p.seed)
    return Role(loaded.name, loaded.model, loaded.tokenizer, loaded.sampler, sampling)


def shard_seed(role: str, base: int, shard_id: int) -> int:
    """The sampling seed of one role (policy or reasoner) for one shard: reruns reproduce it."""
    digest = hashlib.sha256(f"{role}:{base}:{shard_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def image_key(question: Question) -> str:
    ref = question.image_ref
    if ref.path is not None:
        return str(ref.path)
    return "inline:" + hashlib.sha256(ref.data).hexdigest()


class BehaviourModel:
    """Generates, scores and stores SOPHIA trajectories for one host's shards."""

    def __init__(self, cfg: ml_collections.ConfigDict, policy: Role, reasoner: Role, verifier: VerifierPool):
        self.cfg = cfg
        self.policy = policy
        self.reasoner = reasoner
        self.verifier = verifier
        self.prompts = Prompts.load({k: v for k, v in cfg.prompts.items() if v})
        vision = policy.model.config.vision
        self.tiling = TilingConfig(tile_size=vision.image_size, max_tiles=cfg.policy.max_tiles)

    # -- one shard ------------------------------------------------------------------------------

    def run_shard(self, shard_id: int, questions: list[Question], report: Report) -> list[TrajectoryRecord]:
        images = self._tile_images(questions, report)
        questions = [q for q in questions if image_key(q) in images]
        policy_seed = shard_seed("policy", self.cfg.policy.sampling.seed, shard_id)
        captions = self._captions(questions, images, policy_seed, report)
        questions = [q for q in questions if image_key(q) in captions]
        reasoner_seed = shard_seed("reasoner", self.cfg.reasoner.sampling.seed, shard_id)
        trajectories = self._reasoning(questions, captions, reasoner_seed, report)
        return self._score_and_select(questions, captions, trajectories, report)

    def _tile_images(self, questions, report) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        tiles, bad = {}, {}
        for q in questions:
            key = image_key(q)
            if key not in tiles and key not in bad:
                try:
                    tiles[key] = q.image_ref.load(self.tiling)
                except ImageError as e:
                    bad[key] = str(e)
            if key in bad:
                report.skip("image", "bad_image", bad[key], q.id, q.source)
        report.stages["images"].seconds += time.perf_counter() - start
        report.stages["images"].items += len(tiles)
        return tiles

    def _fits(self, ids, question_ids, stage, report) -> bool:
        """Prompts longer than the largest bucket are skipped (with the reason), not fatal."""
        largest = max(self.cfg.sampler.buckets)
        if len(ids) <= largest:
            return True
        for qid in question_ids:
            report.skip(stage, "prompt_too_long", f"{len(ids)} prompt tokens > largest bucket {largest}", qid)
        return False

    def _captions(self, questions, images: dict[str, np.ndarray], seed: int, report) -> dict[str, list]:
        """K caption samples per image key."""
        tok = self.policy.tokenizer
        tokens_per_tile = self.policy.model.config.tokens_per_tile
        asked = collections.defaultdict(list)
        for q in questions:
            asked[image_key(q)].append(q.id)
        keys, prompts = [], []
        for key, tiles in images.items():
            ids = chat_templates.internvl_prompt_ids(
                tok, self.prompts.caption, num_tiles=[len(tiles)], tokens_per_tile=tokens_per_tile,
                system_message=self.prompts.default_system,
            )
            if self._fits(ids, asked[key], "captions", report):
                keys.append(key)
                prompts.append(Prompt(tokens=ids, pixel_values=tiles))
        start = time.perf_counter()
        results = self.policy.sampler.generate(prompts, dataclasses.replace(self.policy.sampling, seed=seed))
        stage = report.stages["captions"]
        stage.seconds += time.perf_counter() - start
        stage.items += len(prompts)
        stage.tokens += sum(len(s.tokens) for r in results for s in r.samples)
        stage.add_kv_usage(self.policy.sampler.kv_usage)
        report.images_captioned += len(keys)
        report.captions += sum(len(r.samples) for r in results)
        return {keys[r.index]: r.samples for r in results}

    def _reasoning(self, questions, captions, seed, report) -> dict[tuple[str, int], list]:
        """N trajectory samples per (question id, caption index)."""
        tok = self.reasoner.tokenizer
        keys, prompts = [], []
        for q in questions:
            for k, caption in enumerate(captions[image_key(q)]):
                messages = [{"role": "user", "content": self.prompts.reasoning_prompt(q.question, caption.text, q.choices, q.hint)}]
                if self.cfg.reasoner.system_prompt:
                    messages.insert(0, {"role": "system", "content": self.cfg.reasoner.system_prompt})
                ids = chat_templates.chat_prompt_ids(tok, messages)
                if not self._fits(ids, [q.id], "reasoning", report):
                    continue
                keys.append((q.id, k))
                prompts.append(Prompt(tokens=ids))
        start = time.perf_counter()
        results = self.reasoner.sampler.generate(prompts, dataclasses.replace(self.reasoner.sampling, seed=seed))
        stage = report.stages["reasoning"]
        stage.seconds += time.perf_counter() - start
        stage.items += len(prompts)
        stage.tokens += sum(len(s.tokens) for r in results for s in r.samples)
        stage.add_kv_usage(self.reasoner.sampler.kv_usage)
        return {keys[r.index]: r.samples for r in results}

    def _score_and_select(self, questions, captions, trajectories, report) -> list[TrajectoryRecord]:
        by_id = {q.id: q for q in questions}
        rows = [(qid, k, n, sample) for (qid, k), samples in trajectories.items() for n, sample in enumerate(samples)]
        start = time.perf_counter()
        rewards = self.verifier.score(
            [(by_id[qid].answer, sample.text, by_id[qid].choices) for qid, _, _, sample in rows]
        )
        report.stages["verify"].seconds += time.perf_counter() - start
        report.stages["verify"].items += len(rows)
        policy_lengths = [len(ids) for ids in self.policy.tokenizer(
            [sample.text for *_, sample in rows], add_special_tokens=False)["input_ids"]] if rows else []

        scored = [Scored(qid, k, n, r.reward, length) for (qid, k, n, _), r, length in zip(rows, rewards, policy_lengths)]
        caption_reward = selection.caption_rewards(scored)
        chosen = selection.select(scored, alpha=self.cfg.selection.alpha, keep=self.cfg.selection.keep)

        records = []
        for (qid, k, n, sample), reward, s in zip(rows, rewards, scored):
            q, caption = by_id[qid], captions[image_key(by_id[qid])][k]
            if reward.reason.startswith(("timeout", "crash", "refused")):
                report.judge_failures[reward.reason.split(":")[0].split(" ")[0]] += 1
            records.append(TrajectoryRecord(
                question_id=qid, image_ref=image_key(q), question=q.question, answer=q.answer, choices=q.choices,
                caption_index=k, caption=caption.text, caption_reward=caption_reward[(qid, k)],
                trajectory_index=n, trajectory=sample.text, outcome_reward=float(reward.reward),
                extracted_answer=reward.extracted, judge_reason=reward.reason, selected=selection.key_of(s) in chosen,
                policy_name=self.policy.name, reasoner_name=self.reasoner.name,
                caption_tokens=len(caption.tokens), trajectory_tokens=len(sample.tokens),
                trajectory_policy_tokens=s.trajectory_policy_tokens,
                caption_logprobs=caption.logprobs, caption_raw_logprobs=caption.raw_logprobs,
                trajectory_logprobs=sample.logprobs, trajectory_raw_logprobs=sample.raw_logprobs,
            ))
        report.questions_processed += len(questions)
        report.trajectories += len(records)
        report.trajectories_correct += sum(r.outcome_reward >= 1 for r in records)
        report.trajectories_selected += len(chosen)
        report.questions_with_selection += len({key[0] for key in chosen})
        report.caption_rewards.update(caption_reward.values())
        return records


def read_dataset(cfg, report: Report) -> list[Question]:
    fields = {k: (v or None) for k, v in cfg.dataset.fields.items()}
    questions = read_questions(cfg.dataset.path, FieldMap(**fields), image_root=cfg.dataset.image_root or None)
    for s in questions.skipped:
        report.skip("dataset", s.reason, s.message, s.record_id, f"{s.file}:{s.location}")
    items = []
    for q in questions:
        if len(q.images) > 1:  # captions describe one image; the method has no multi-image captioning
            report.skip("dataset", "multi_image", f"{len(q.images)} images; generate captions one image per "
                        "question", q.id, q.source)
        else:
            items.append(q)
    if cfg.dataset.limit:
        items = items[: cfg.dataset.limit]
    report.questions_read = len(items)
    return items


def generate(cfg: ml_collections.ConfigDict) -> Report:
    """Runs the behaviour model over this host's unfinished shards; returns the report."""
    require(cfg, "output_dir", "dataset.path", "policy.checkpoint", "reasoner.checkpoint")
    distributed.initialize(cfg.distributed)  # before any device is touched: each host learns its place
    report = Report()
    process_index, process_count = jax.process_index(), jax.process_count()
    store = TrajectoryStore(cfg.output_dir, process_index=process_index, process_count=process_count)
    questions = read_dataset(cfg, report)
    by_shard: dict[int, list[Question]] = collections.defaultdict(list)
    for q in questions:
        by_shard[shard_of(q.id, cfg.num_shards)].append(q)
    mine = shards_for_host(sorted(by_shard), process_index, process_count)
    done = store.finished_shards()
    todo = [s for s in mine if s not in done]
    report.shards_total, report.shards_mine, report.shards_already_done = len(by_shard), len(mine), len(mine) - len(todo)
    report.questions_in_my_shards = sum(len(by_shard[s]) for s in mine)
    logger.info("%d questions in %d shards; this host: %d shards, %d to do", len(questions), len(by_shard), len(mine), len(todo))

    if todo:
        mesh = sharding.make_mesh(sharding.MeshConfig(**cfg.mesh), jax.local_devices())
        policy = load_role(cfg.policy, cfg, mesh)
        reasoner = load_role(cfg.reasoner, cfg, mesh)
        with VerifierPool(num_workers=cfg.verifier.workers, timeout=cfg.verifier.timeout) as verifier:
            behaviour = BehaviourModel(cfg, policy, reasoner, verifier)
            loop_start = time.perf_counter()
            for i, shard_id in enumerate(todo):
                start = time.perf_counter()
                records = behaviour.run_shard(shard_id, by_shard[shard_id], report)
                store.write_shard(shard_id, records, meta={
                    "policy": policy.name, "reasoner": reasoner.name, "alpha": cfg.selection.alpha,
                    # lets `sophia-jax train` find the policy that wrote the captions by itself
                    "policy_checkpoint": os.path.abspath(cfg.policy.checkpoint),
                    "keep": cfg.selection.keep, "seconds": round(time.perf_counter() - start, 3),
                })
                report.shards_written += 1
                elapsed = time.perf_counter() - loop_start
                logger.info("shard %d done (%d/%d shards): %d trajectories in %.1fs; elapsed %.0fs, ETA %.0fs",
                            shard_id, i + 1, len(todo), len(records), time.perf_counter() - start, elapsed,
                            elapsed / (i + 1) * (len(todo) - i - 1))
    store.write_manifest()
    report.write(os.path.join(cfg.output_dir, f"report-{process_index:03d}.json"))
    return report


def reselect(store_dir: str, alpha: float, keep: int, *, name: str = "", overwrite: bool = False) -> str:
    """Writes a new selection of a finished store (``selections/<name>.json``); returns a summary line.

    ``name`` defaults to ``alpha<A>-keep<N>``. Reads only the shard markers, never the records.
    """
    if keep < 1:
        raise UserError(f"config field 'selection.keep' must be >= 1, got {keep}")
    if not os.path.isdir(store_dir):
        raise UserError(f"store {store_dir!r}: no such directory")
    store = TrajectoryStore(store_dir, clean_on_open=False)
    rows = list(store.iter_index())
    if not rows:
        raise UserError(f"store {store_dir!r}: no finished shards")
    chosen = selection.select(rows, alpha=alpha, keep=keep)
    name = name or f"alpha{alpha:g}-keep{keep}"
    try:
        store.write_selection(name, store.locate(sorted(chosen)), meta={"alpha": alpha, "keep": keep},
                              overwrite=overwrite)
    except FileExistsError as e:
        raise UserError(f"{e} (--config.overwrite=True)") from None
    questions = {r.question_id for r in rows}
    with_selection = {k[0] for k in chosen}
    return (f"{len(rows)} trajectories over {len(questions)} questions; selected {len(chosen)} "
            f"({len(with_selection)} questions, yield {len(with_selection) / len(questions):.3f})\n"
            f"selection {name!r} written to {store.root}/selections/{name}.json")
