"""Held-out evaluation during training: the eval core on the current weights every N steps.

The train config's ``eval`` section names held-out items the way ``sophia-jax eval`` does
(``benchmarks``, e.g. ``questions=heldout.jsonl``) and how to sample and judge them. At every
``eval.every``-th step (and the last) the trainable parameters and the frozen ones are merged
into the model, a sampler over it is built once and handed each new state's weights
(``Sampler.update_params``: nothing recompiles), and :func:`~sophia_jax.evaluation.evaluate` runs
on the items; the caller logs pass@1 per benchmark and their average (``eval/<benchmark>/pass@1``,
``eval/average/pass@1``; pass@k too when ``eval.samples`` > 1) to TensorBoard and metrics.jsonl,
and every item's samples and verdicts go to ``output_dir/held_out/step-NNNNNNNN.jsonl`` (the lines
of ``sophia-jax eval``).

One process only: the sampler's host loop would have to run in lockstep over a mesh that spans
hosts. A multi-host run says so and points at ``sophia-jax eval`` on a saved checkpoint.
"""

from __future__ import annotations

import json
import logging
import os

import jax
from flax import nnx

from sophia_jax.errors import UserError
from sophia_jax.models import decoder
from sophia_jax.sampling.load import LoadedModel, sampler_config

log = logging.getLogger(__name__)


class HeldOutEval:
    """``evaluator(step, params, frozen) -> {metric name: value}`` for the trainer's writer."""

    def __init__(self, section, *, graphdef, tokenizer, mesh, output_dir: str, name: str = "policy"):
        from sophia_jax.evaluation.job import load_items, settings_of
        from sophia_jax.verify import EVAL_SCORER, VerifierPool

        if jax.process_count() > 1:
            raise UserError("eval.every: held-out evaluation during training runs on one host; evaluate the saved "
                            "checkpoints with `sophia-jax eval` instead")
        if section.images.total_tiles > section.sampler.tile_budget:
            raise UserError(f"eval.images.total_tiles ({section.images.total_tiles}) exceeds eval.sampler.tile_budget "
                            f"({section.sampler.tile_budget})")
        self.every = section.every
        self.settings = settings_of(section)
        self.sets = load_items(section)
        self.items = [item for s in self.sets for item in s.items]
        for s in self.sets:
            for sk in s.skipped:
                log.warning("held-out %s: skipped %s", s.name, sk)
        if not self.items:
            raise UserError(f"eval.benchmarks {section.benchmarks!r} holds no usable item")
        self.graphdef, self.tokenizer, self.mesh, self.name = graphdef, tokenizer, mesh, name
        self.sampler_section = section.sampler
        self.output_dir = os.path.join(output_dir, "held_out")
        self.policy: LoadedModel | None = None
        self.verifier = VerifierPool(num_workers=section.verifier.workers, timeout=section.verifier.timeout,
                                     scorer=EVAL_SCORER)

    def due(self, step: int, last: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == last)

    def __call__(self, step: int, params, frozen) -> dict[str, float]:
        from sophia_jax.evaluation import ItemResult, evaluate, summarize
        from sophia_jax.sampling import Sampler

        model = decoder.for_sampling(nnx.merge(self.graphdef, params, frozen))
        if self.policy is None:
            config = sampler_config(self.sampler_section, int(self.tokenizer.pad_token_id or 0))
            self.policy = LoadedModel(self.name, model, self.tokenizer,
                                      Sampler(model, config, mesh=self.mesh, tokenizer=self.tokenizer))
        else:
            self.policy.sampler.update_params(model)
            self.policy.model = model
        results = evaluate(self.policy, self.items, self.settings, verifier=self.verifier)
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"step-{step:08d}.jsonl")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in results)
        os.replace(path + ".tmp", path)
        judged = [r for r in results if isinstance(r, ItemResult)]
        skipped: dict[str, dict[str, int]] = {}
        for r in results:
            if not isinstance(r, ItemResult):
                skipped.setdefault(r.benchmark, {}).setdefault(r.reason, 0)
                skipped[r.benchmark][r.reason] += 1
        summary = summarize(judged, skipped, k=self.settings.k, order=[s.name for s in self.sets])
        keys = ["pass@1"] + ([f"pass@{self.settings.k}"] if self.settings.k > 1 else [])
        values = {f"eval/{name}/{key}": b[key] for name, b in summary["benchmarks"].items() for key in keys
                  if b[key] is not None}
        values.update({f"eval/average/{key}": summary["average"][key] for key in keys
                       if summary["average"][key] is not None})
        log.info("step %d held-out: %s", step, ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
        return values

    def close(self) -> None:
        self.verifier.close()
