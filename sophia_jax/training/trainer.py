"""The host loop of ``sophia-jax train`` (and of the warm-up stage, the same trainer on VQA data).

    policy checkpoint -> model on the mesh -> split trainable / frozen
    data pipeline (this host's rows) -> A micro-batches per step -> jitted train step
    every N steps, and on SIGTERM: checkpoint (state + every host's iterator position)
    at the end: ``<output_dir>/final``, a model checkpoint ``checkpoint.load`` reads

Starting the same command again resumes from the latest checkpoint by itself: parameters,
optimizer state, step and data position come back exactly, so a killed and resumed run ends
bitwise equal to an uninterrupted one on the same mesh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from sophia_jax import checkpoint, distributed, sharding
from sophia_jax.errors import UserError
from sophia_jax.models.config import RuntimeConfig
from sophia_jax.training import loss as loss_lib
from sophia_jax.training import step as step_lib
from sophia_jax.training.checkpoints import TrainCheckpoints
from sophia_jax.training.metrics import MetricsWriter, ProgressBar, truncate_jsonl
from sophia_jax.training.optimizer import OptimizerConfig, trainable_filter

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the launcher reruns the same command to resume


class NonFiniteLossError(UserError):
    """A step's loss or gradient norm was not finite; the last checkpoint is left as it was."""


@dataclasses.dataclass
class TrainReport:
    steps: int = 0  # updates in the final parameters
    steps_this_run: int = 0
    resumed_from: int | None = None
    tokens: int = 0  # real (non-padding) tokens fed this run
    loss_tokens: int = 0  # tokens that carried loss this run
    examples: int = 0  # packed examples (segments) trained on this run
    seconds: float = 0.0
    preempted: bool = False
    final: str = ""
    data: dict = dataclasses.field(default_factory=dict)  # the pipeline's report: used / skipped by reason

    def summary(self) -> str:
        lines = [f"steps: {self.steps} ({self.steps_this_run} this run"
                 + (f", resumed from step {self.resumed_from}" if self.resumed_from is not None else "") + ")",
                 f"examples this run: {self.examples:,}",
                 f"tokens this run: {self.tokens:,} ({self.loss_tokens:,} with loss) in {self.seconds:.1f}s"
                 f" ({self.tokens / max(self.seconds, 1e-9):,.0f} tokens/s)"]
        if self.data:
            skipped = self.data.get("skipped_by_reason", {})
            lines.append(f"data plan: {self.data.get('examples', 0):,} examples in {self.data.get('rows', 0):,} rows "
                         f"(fill {self.data.get('token_fill', 0):.2f}); skipped: {skipped or 'none'} "
                         f"(records named in train_report.json)")
        lines.append("preempted: state saved; rerun the same command to resume" if self.preempted
                     else f"final model: {self.final}")
        return "\n".join(lines)


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (a save mid-step would be torn)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def model_runtime(cfg) -> RuntimeConfig:
    m = cfg.model
    return RuntimeConfig(dtype=m.dtype, param_dtype=m.param_dtype, attention=m.attention, remat=m.remat,
                         scan_layers=m.scan_layers)


def _stack(batches: list[dict]) -> dict:
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _policy_of_store(store: str) -> str:
    """The policy checkpoint a trajectory store's captions came from (recorded by generate)."""
    from sophia_jax.data.trajectory_store import TrajectoryStore

    if not store:
        raise UserError("model.checkpoint is required (--config.model.checkpoint=CKPT)")
    if not os.path.isdir(store):
        raise UserError(f"data.store {store}: no such directory")
    ts = TrajectoryStore(store, clean_on_open=False)
    paths = {(ts.marker(s) or {}).get("meta", {}).get("policy_checkpoint") for s in ts.finished_shards()}
    if len(paths) != 1 or None in paths or not os.path.isdir(next(iter(paths))):
        raise UserError(f"model.checkpoint is not set and the store {store} does not name one existing policy "
                        f"checkpoint (found {sorted(map(str, paths))}); pass --config.model.checkpoint=CKPT")
    path = next(iter(paths))
    log.info("policy checkpoint from the store: %s", path)
    return path


def plan(cfg, micro_batches: int) -> tuple[int, int]:
    """(accumulation steps A, total optimizer steps) from the config and the data size."""
    t = cfg.train
    if t.micro_rows <= 0 or t.global_rows % t.micro_rows:
        raise UserError(f"train.global_rows ({t.global_rows}) must be a multiple of train.micro_rows ({t.micro_rows})")
    accumulation = t.global_rows // t.micro_rows
    available = micro_batches // accumulation
    steps = t.steps or available
    if steps < 1 or steps > available:
        raise UserError(f"the data gives {micro_batches} micro-batches of {t.micro_rows} rows = {available} steps "
                        f"of {t.global_rows} rows, but train.steps = {t.steps or steps}; lower train.steps or "
                        f"raise data.num_epochs")
    return accumulation, steps


def train(cfg: ml_collections.ConfigDict) -> TrainReport:
    """Runs (or resumes) a training stage described by ``cfg`` (see ``configs/train.py``)."""
    from sophia_jax.data.training_pipeline import TrainingPipeline

    if not cfg.output_dir:
        raise UserError("output_dir is required (--config.output_dir=DIR)")
    distributed.initialize(cfg.distributed)  # before any device is touched: each host learns its place
    # Settings are checked before anything is loaded or written.
    loss_config = loss_lib.LossConfig(normalization=cfg.loss.normalization,
                                      importance_sampling=cfg.loss.importance_sampling, is_clip=cfg.loss.is_clip)
    is_trainable = trainable_filter(cfg.train.trainable)
    policy_checkpoint = cfg.model.checkpoint or _policy_of_store(cfg.data.store)
    tokenizer = checkpoint.load_tokenizer(policy_checkpoint)  # before the weights: an unusable one fails fast
    mesh = sharding.make_mesh(sharding.MeshConfig(**cfg.mesh))
    model = checkpoint.load(policy_checkpoint, mesh, runtime=model_runtime(cfg))
    model_config = model.config
    graphdef, params, frozen = step_lib.split_model(model, is_trainable)
    del model

    pipeline = TrainingPipeline(
        cfg.data, global_batch_rows=cfg.train.micro_rows, tokenizer=tokenizer,
        tokens_per_tile=model_config.tokens_per_tile, image_token_id=model_config.image_token_id,
        tile_size=model_config.vision.image_size, process_index=jax.process_index(),
        process_count=jax.process_count())
    accumulation, total_steps = plan(cfg, pipeline.count_batches())
    o = cfg.optimizer
    step_config = step_lib.StepConfig(
        optimizer=OptimizerConfig(
            peak_learning_rate=o.peak_learning_rate, end_learning_rate_ratio=o.end_learning_rate_ratio,
            warmup_steps=int(round(o.warmup_ratio * total_steps)), total_steps=total_steps,
            weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, max_grad_norm=o.max_grad_norm),
        loss=loss_config,
        loss_chunk_tokens=cfg.loss.chunk_tokens,
        num_sources=len(pipeline.source_names()),
    )

    program = step_lib.TrainProgram(graphdef, params, frozen, mesh, step_config)
    os.makedirs(cfg.output_dir, exist_ok=True)
    ckpts = TrainCheckpoints(os.path.join(cfg.output_dir, "checkpoints"), every=cfg.checkpoint.every,
                             keep=cfg.checkpoint.keep, asynchronous=cfg.checkpoint.asynchronous)
    report = TrainReport()
    restored = ckpts.restore(program.abstract_state)
    if restored is None:
        state = program.init(params)
        start = 0
    else:
        state, data_state = restored
        pipeline.set_state(data_state)
        start = int(state.step)
        report.resumed_from = start
        log.info("resumed from %s at step %d", ckpts.directory, start)
    del params

    evaluator = None
    if cfg.eval.every:
        from sophia_jax.training.held_out import HeldOutEval

        evaluator = HeldOutEval(cfg.eval, graphdef=graphdef, tokenizer=tokenizer, mesh=mesh, output_dir=cfg.output_dir,
                                name=os.path.basename(os.path.normpath(policy_checkpoint)))

    final_dir = os.path.join(cfg.output_dir, "final")
    examples_log = os.path.join(cfg.output_dir, f"examples-{jax.process_index()}.jsonl")
    truncate_jsonl(examples_log, start)
    writer = MetricsWriter(cfg.output_dir, start_step=start, tensorboard=cfg.log.tensorboard)
    bar = ProgressBar(total_steps, start, enabled=cfg.log.progress)
    iterator = iter(pipeline)
    t0 = time.perf_counter()
    try:
        with _Preemption() as preemption, open(examples_log, "a") as examples:
            for step in range(start, total_steps):
                micro = [next(iterator) for _ in range(accumulation)]
                local = _stack([arrays for arrays, _ in micro])
                records = [record for _, meta in micro for row in meta for record, _ in row]
                state, metrics = program(state, frozen, program.global_batch(local, cfg.train.micro_rows))
                metrics = step_lib.host_metrics(metrics)
                if not metrics["finite"]:
                    raise NonFiniteLossError(
                        f"step {step + 1}: loss {metrics['loss']} / grad norm {metrics['grad_norm']} is not finite; "
                        f"records in this batch: {records}; parameters were not updated, and the last checkpoint "
                        f"in {ckpts.directory} is intact")
                examples.write(json.dumps({"step": step + 1, "records": records}) + "\n")
                examples.flush()
                values = loss_lib.finalize_metrics(metrics, pipeline.source_names())
                values.update(grad_norm=metrics["grad_norm"], learning_rate=metrics["learning_rate"])
                real_tokens = int(np.sum(local["segment_ids"] > 0)) * jax.process_count()
                values["tokens_per_s"] = bar.update(values["loss"], real_tokens)
                if evaluator is not None and evaluator.due(step + 1, total_steps):
                    values.update(evaluator(step + 1, state.params, frozen))
                writer.write(step + 1, values)
                report.tokens += real_tokens
                report.loss_tokens += int(metrics.get("tokens", 0))
                report.examples += len(records)
                report.steps_this_run += 1
                preempted = preemption.requested or ckpts.reached_preemption(step + 1)
                if step + 1 == total_steps or preempted:
                    ckpts.save(step + 1, state, pipeline.get_state(), force=True)
                else:
                    ckpts.save(step + 1, state, pipeline.get_state())
                if preempted:
                    report.preempted = True
                    break
        ckpts.wait()
    finally:
        bar.close()
        writer.close()
        ckpts.close()
        if evaluator is not None:
            evaluator.close()
    report.seconds = time.perf_counter() - t0
    report.steps = int(state.step)
    report.data = pipeline.report()
    if not report.preempted:
        final = nnx.merge(graphdef, state.params, frozen)
        report.final = checkpoint.save(final, final_dir, assets=policy_checkpoint, overwrite=True)
    if jax.process_index() == 0:
        with open(os.path.join(cfg.output_dir, "train_report.json"), "w") as f:
            json.dump(dataclasses.asdict(report), f, indent=1, sort_keys=True)
    return report

