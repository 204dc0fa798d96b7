"""The evaluation core: items in, sampled and judged answers out (no files, no resuming).

    results = evaluate(policy, items, EvalSettings(k=4), verifier=pool)

For each item: its images are tiled under one shared budget (``shared_budget``), the prompt is
InternVL's chat format with the long-CoT system prompt and ``Image-k: <image>`` lines for several
images, the user text is the hint, the question and the lettered options
(``prompts.format_question``); ``k`` samples are drawn; each is read and judged by the rule-based
verifier for the item's answer type, or, with a :class:`~.model_judge.ModelJudge`, extracted and
judged by a model. Every sample of an item uses keys folded from a hash of the item's id
(``Prompt.key``), so an item's outputs do not depend on which items share a sampler call: any
split (chunks, hosts, a resumed run) samples the same tokens.

Items that cannot be sampled (unreadable image, too many images for the tile budget, a prompt
longer than the largest bucket) come back as :class:`ItemSkip` with their reason.
``sophia-jax eval`` (``job.py``) and held-out evaluation during training call :func:`evaluate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from sophia_jax.data import chat_templates
from sophia_jax.data.images import ImageError, TileBudgetError, TilingConfig, shared_budget
from sophia_jax.evaluation.benchmarks import EvalItem
from sophia_jax.sampling import Prompt, SamplingParams
from sophia_jax.sampling.load import LoadedModel
from sophia_jax.sophia.prompts import format_question
from sophia_jax.verify import EVAL_SCORER, VerifierPool

__all__ = ["EvalSettings", "ItemResult", "ItemSkip", "SampleResult", "evaluate", "item_key", "user_text"]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How items are prompted and sampled (defaults: the paper's evaluation, sophia-method.md section 5)."""

    k: int = 1  # samples per item: pass@1 is averaged over them, pass@k counts an item with any correct
    temperature: float = 1.0
    top_p: float = 0.8
    top_k: int = 0
    max_new_tokens: int = 16384
    seed: int = 0
    system_prompt: str | None = None  # None = InternVL's default system message (no system turn: pass "")
    max_tiles: int = 12  # per image (InternVL's dynamic tiling, plus a thumbnail)
    total_tiles: int = 0  # tiles all images of one question share (0 = the sampler's tile_budget)
    chunk: int = 256  # items per sampler call (what a killed job loses at most)


@dataclasses.dataclass
class SampleResult:
    output: str
    extracted: str | None
    correct: bool
    reason: str
    finish_reason: str
    num_tokens: int


@dataclasses.dataclass
class ItemResult:
    """An item's ``k`` judged samples: one line of ``items-*.jsonl``."""

    id: str
    benchmark: str
    category: str
    group: str
    answer_type: str
    gold: str
    prompt: str  # the user text (images as <image> placeholders), after the system prompt
    samples: list[SampleResult]

    @property
    def num_correct(self) -> int:
        return sum(s.correct for s in self.samples)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["num_correct"], out["k"] = self.num_correct, len(self.samples)
        return out

    @classmethod
    def from_json(cls, d: dict) -> "ItemResult":
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        kwargs["samples"] = [SampleResult(**s) for s in d["samples"]]
        return cls(**kwargs)


@dataclasses.dataclass
class ItemSkip:
    """An item that was not sampled, with a machine-readable reason."""

    id: str
    benchmark: str
    reason: str  # bad_image | too_many_images | prompt_too_long
    message: str

    def to_json(self) -> dict:
        return {"id": self.id, "benchmark": self.benchmark, "skipped": self.reason, "message": self.message}


def item_key(item: EvalItem) -> int:
    """The 31-bit number an item's sampling keys fold in (stable across runs, hosts and chunks)."""
    digest = hashlib.sha256(f"{item.benchmark}/{item.id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def user_text(item: EvalItem) -> str:
    """What the user turn says: ``Image-k: <image>`` lines (several images), the hint, question and options."""
    return chat_templates.number_images(format_question(item.question, item.choices, item.hint), len(item.images))


class _Unusable(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def _tiles(item: EvalItem, tiling: TilingConfig, total_tiles: int) -> list[np.ndarray]:
    if not item.images:
        return []
    try:
        per_image = shared_budget(tiling, len(item.images), total_tiles)
        return [ref.load(per_image) for ref in item.images]
    except TileBudgetError as e:
        raise _Unusable("too_many_images", str(e)) from None
    except ImageError as e:
        raise _Unusable("bad_image", str(e)) from None


def build_prompt(item: EvalItem, policy: LoadedModel, settings: EvalSettings, buckets: Sequence[int]) -> tuple[str, Prompt]:
    """The user text and the sampler prompt of one item; raises ``_Unusable`` with the reason it cannot be."""
    text = user_text(item)
    config = policy.model.config
    if item.images and not policy.multimodal:
        raise _Unusable("bad_image", f"{policy.name} is a text model and the question has images")
    tiling = TilingConfig(tile_size=config.vision.image_size, max_tiles=settings.max_tiles) if item.images else None
    tiles = _tiles(item, tiling, settings.total_tiles or policy.sampler.config.tile_budget) if tiling else []
    if policy.multimodal:
        ids = chat_templates.internvl_prompt_ids(
            policy.tokenizer, text, num_tiles=[len(t) for t in tiles], tokens_per_tile=config.tokens_per_tile,
            **({} if settings.system_prompt is None else {"system_message": settings.system_prompt or None}))
    else:
        messages = [{"role": "user", "content": text}]
        if settings.system_prompt:
            messages.insert(0, {"role": "system", "content": settings.system_prompt})
        ids = chat_templates.chat_prompt_ids(policy.tokenizer, messages)
    if len(ids) - 1 > max(buckets):
        raise _Unusable("prompt_too_long", f"{len(ids)} prompt tokens > largest bucket {max(buckets)}")
    pixel_values = np.concatenate(tiles) if tiles else None
    return text, Prompt(tokens=ids, pixel_values=pixel_values, key=item_key(item))


def _judge_rules(verifier, batch: list[tuple[EvalItem, str, str | None]]) -> list:
    """Rule-based verdicts for (item, output, model-extracted answer or None), in worker processes."""
    requests = []
    for item, output, extracted in batch:
        options = {"answer_type": item.answer_type, "precision": item.precision, "tolerance": item.tolerance,
                   "alternatives": list(item.alternatives)}
        if extracted:
            options["extracted"] = extracted
        requests.append({"gold": item.answer, "text": output, "choices": item.choices, "options": options})
    return verifier.score(requests) if requests else []


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + max(1, size)]


def evaluate(
    policy: LoadedModel,
    items: Iterable[EvalItem],
    settings: EvalSettings = EvalSettings(),
    *,
    verifier=None,
    judge=None,
    on_chunk: Callable[[list[ItemResult | ItemSkip]], None] | None = None,
) -> list[ItemResult | ItemSkip]:
    """Samples, reads and judges every item; returns one :class:`ItemResult` or :class:`ItemSkip` per item.

    Args:
      policy: the model under evaluation with its sampler (``sampling.load.load_sampler``, or a
        ``LoadedModel`` over weights in memory).
      items: evaluation items (``benchmarks.load_benchmark`` / ``items_from_questions``).
      settings: prompting and sampling.
      verifier: a ``VerifierPool(scorer=verify.EVAL_SCORER)`` (rule-based reading and judging per answer
        type, in worker processes); None opens one with one worker for this call.
      judge: an optional ``model_judge.ModelJudge`` for model-based extraction and judging.
      on_chunk: called with each chunk's results as soon as they are judged (the job appends them to disk).
    """
    if verifier is None:
        with VerifierPool(num_workers=1, scorer=EVAL_SCORER) as pool:
            return evaluate(policy, items, settings, verifier=pool, judge=judge, on_chunk=on_chunk)
    if verifier.scorer != EVAL_SCORER:
        raise ValueError(f"the verifier must score with {EVAL_SCORER!r} (VerifierPool(scorer=EVAL_SCORER)), "
                         f"not {verifier.scorer!r}")
    items = list(items)
    params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                            top_p=settings.top_p, top_k=settings.top_k, n=settings.k,
                            stop_token_ids=policy.stop_token_ids, seed=settings.seed)
    buckets = policy.sampler.config.buckets
    out: list[ItemResult | ItemSkip] = []
    for chunk in _chunks(items, settings.chunk):
        done: list[ItemResult | ItemSkip] = []
        ready, texts, prompts = [], [], []
        for item in chunk:
            try:
                text, prompt = build_prompt(item, policy, settings, buckets)
            except _Unusable as e:
                done.append(ItemSkip(item.id, item.benchmark, e.reason, e.message))
                continue
            ready.append(item)
            texts.append(text)
            prompts.append(prompt)
        generations = policy.sampler.generate(prompts, params) if prompts else []
        rows = [(item, sample) for item, g in zip(ready, generations) for sample in g.samples]
        extracted = judge.extract([(item, s.text) for item, s in rows]) if judge is not None else [None] * len(rows)
        verdicts = _judge_rules(verifier, [(item, s.text, e) for (item, s), e in zip(rows, extracted)])
        if judge is not None:
            verdicts = judge.judge([(item, v.extracted) for (item, _), v in zip(rows, verdicts)], verdicts)
        per_item = iter(zip(rows, verdicts))
        for item, text in zip(ready, texts):
            samples = []
            for _ in range(settings.k):
                (_, sample), verdict = next(per_item)
                samples.append(SampleResult(output=sample.text, extracted=verdict.extracted,
                                            correct=verdict.reward >= 1.0, reason=verdict.reason,
                                            finish_reason=sample.finish_reason, num_tokens=len(sample.tokens)))
            done.append(ItemResult(item.id, item.benchmark, item.category, item.group, item.answer_type,
                                   item.answer, text, samples))
        if on_chunk is not None:
            on_chunk(done)
        out.extend(done)
    return out
