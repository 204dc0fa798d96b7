"""Training examples: the three kinds of source, and one example's tokens as the policy sees them.

Sources (each a random-access list of :class:`Item`; index 0 is always the trajectory store):

* :class:`StoreSource` -- SOPHIA trajectories from a :class:`TrajectoryStore`, either the
  records the generate run selected itself (``selection=""``: their ``selected`` flag) or a
  stored selection by name (``sophia-jax select``). Reward = the record's outcome reward, which
  Eq. 6 makes 1 for every selected trajectory, unless the stored selection fixes its records'
  reward in its metadata (``{"dataset_reward": 1.0}``): the Random baseline of Table 5 trains
  on trajectories drawn regardless of their correctness.
* :class:`TextSource` -- text-only reasoning trajectories, JSONL ``{"question", "response",
  "system"?, "id"?}`` (field names overridable). Reward 1.
* :class:`VqaSource` -- general VQA, JSONL or parquet ``{"image", "question", "response"}``
  read with :func:`sophia_jax.data.datasets.read_questions` (so images may be paths, base64 or
  parquet bytes). Reward 1. Public layouts map in through the field names:

  - RLAIF-V (``openbmb/RLAIF-V-Dataset`` parquet: ``image`` {bytes, path}, ``question``,
    ``chosen``, ``rejected``): ``fields={"response": "chosen"}``; ``rejected`` is ignored.
  - WildVision battles store two responses and a winner, which no renaming can pick; write the
    winner's text into one column first (e.g. ``best_response`` = ``model_a``'s answer where
    ``winner == "model_a"``, dropping ties), then ``fields={"question": "instruction",
    "response": "best_response"}`` (or whatever the export calls the question).

Example layout (InternVL ``internvl2_5``, exactly what generation renders, plus the answer)::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<img><IMG_CONTEXT>*(tpt*tiles)</img>\\n
    {question}<|im_end|>\\n<|im_start|>assistant\\n{response}<|im_end|>

The prompt is tokenised as generation tokenises it (:func:`chat_templates.internvl_prompt_ids`),
the response on its own without special tokens (so its length is the ``trajectory_policy_tokens``
Keep-N measured), then ``<|im_end|>``. The question is
:func:`sophia_jax.sophia.prompts.format_question` of the record's question and choices -- the
caption is not in the input (method section 2 step 6). Records do not store the dataset's hint,
so none is added; this is the method's training default (section 7 item 13).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from sophia_jax.data import chat_templates
from sophia_jax.data.datasets import DatasetError, FieldMap, ImageRef, read_questions
from sophia_jax.data.images import TilingConfig
from sophia_jax.data.trajectory_record import TrajectoryRecord, decode
from sophia_jax.data.trajectory_store import StaleSelectionError, StoreError, TrajectoryStore
from sophia_jax.errors import UserError
from sophia_jax.sophia.prompts import Prompts, format_question

__all__ = ["DataError", "ExampleBuilder", "Item", "Skip", "StoreSource", "TextSource", "TokenizedExample",
           "VqaSource", "SYSTEM_RULES"]

SYSTEM_RULES = ("paper", "default", "long_cot")


class DataError(UserError):
    """A training data source cannot be used as configured; the message names the file or record."""


@dataclasses.dataclass(frozen=True)
class Skip:
    """An example left out, with a machine-readable reason."""

    source: str
    record_id: str
    reason: str  # bad_image, too_long, too_many_tiles, zero_reward, malformed_record, ...
    message: str


@dataclasses.dataclass(frozen=True)
class Item:
    """One example before tokenisation.

    behaviour_logprobs: float32[n], the behaviour policy's raw log-probs of its sampled response
    tokens (store only; the stop token included when one ended the sample), else ``None``.
    """

    record_id: str
    question: str  # already formatted (choices included)
    response: str
    image: ImageRef | None
    reward: float
    system: str | None = None  # a source's own system prompt; None = by the rule
    behaviour_logprobs: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """One example's tokens. T = prompt_len + response_len + 1 (the final ``<|im_end|>``)."""

    record_id: str
    input_ids: np.ndarray  # int32[T]
    prompt_len: int  # P: tokens before the response
    num_tiles: int
    reward: float
    behaviour_seq_logprob: float  # NaN when unknown
    behaviour_token_logprobs: np.ndarray | None  # float32[T], aligned with targets; None = unknown

    @property
    def length(self) -> int:
        return len(self.input_ids)


# ------------------------------------------------------------------------------------------ sources
class StoreSource:
    """Selected trajectories of a store, read at random by index (decoded on each access)."""

    name = "store"

    def __init__(self, root: str, selection: str = "", *, questions: str = "", image_field: str = "image"):
        if not os.path.isdir(root):
            raise DataError(f"trajectory store {root!r} does not exist")
        store = TrajectoryStore(root, clean_on_open=False)  # training never deletes a writer's files
        finished = sorted(store.finished_shards())
        if not finished:
            raise DataError(f"trajectory store {root!r} has no finished shards (has `sophia-jax generate` run?)")
        counts = {s: store.marker(s)["num_records"] for s in finished}
        offsets = dict(zip(finished, np.cumsum([0] + [counts[s] for s in finished]).tolist()))
        if selection:
            try:
                sel = store.read_selection(selection)
            except StaleSelectionError as e:
                raise DataError(f"trajectory store {root!r}: {e}") from None
            except StoreError as e:
                raise DataError(str(e)) from None
            missing = [(s, i) for s, i in sel.keys if s not in counts or not 0 <= i < counts[s]]
            if missing:
                raise DataError(f"selection {selection!r} of {root!r} names {len(missing)} records that are not in "
                                f"a finished shard, as (shard, record): {missing[:10]}")
            keys = list(sel.keys)
            what = f"selection {selection!r}"
            self._reward = sel.meta.get("dataset_reward")
        else:
            keys = [(r.shard_id, r.record_index) for r in store.iter_index() if r.selected]
            self._reward = None
            what = "the generate run's own selection (records with selected=true)"
        if not keys:
            raise DataError(f"trajectory store {root!r}: {what} is empty; nothing to train on")
        import grain  # the same random-access reader the store hands out

        self._source = grain.sources.ArrayRecordDataSource(store.paths(finished))
        self._indices = np.array([offsets[s] + i for s, i in keys], dtype=np.int64)
        self._inline = _inline_images(questions, image_field) if questions else {}
        self.root = root

    def __len__(self) -> int:
        return len(self._indices)

    def record(self, i: int) -> TrajectoryRecord:
        return decode(self._source[int(self._indices[i])])

    def item(self, i: int) -> Item | Skip:
        r = self.record(i)
        rid = f"{r.question_id}/{r.caption_index}/{r.trajectory_index}"
        if r.image_ref.startswith("inline:"):
            data = self._inline.get(r.image_ref[len("inline:"):])
            if data is None:
                return Skip(self.name, rid, "unresolved_image",
                            f"image {r.image_ref[:20]}... was embedded in the question dataset; set "
                            "data.store_questions to that dataset so it can be found")
            image = ImageRef(data=data, origin=rid)
        else:
            image = ImageRef(path=Path(r.image_ref), origin=rid)
        return Item(record_id=rid, question=format_question(r.question, r.choices), response=r.trajectory,
                    image=image, reward=r.outcome_reward if self._reward is None else float(self._reward),
                    behaviour_logprobs=r.trajectory_raw_logprobs)


def _inline_images(path: str, image_field: str) -> dict[str, bytes]:
    """sha256 hex -> bytes of every inline image of a question dataset (how records name them)."""
    try:
        qs = read_questions(path, FieldMap(image=image_field, answer=_ANY_FIELD, question=_ANY_FIELD,
                                           choices=None, hint=None))
    except DatasetError as e:
        raise DataError(f"data.store_questions: {e}") from None
    return {hashlib.sha256(q.image_ref.data).hexdigest(): q.image_ref.data
            for q in qs if q.image_ref is not None and q.image_ref.data is not None}


_ANY_FIELD = "question"  # answer/question are irrelevant when only images are wanted


class TextSource:
    """Text-only trajectories from JSONL; every line is read once at construction."""

    def __init__(self, path: str, fields: Mapping[str, str] | None = None, *, name: str | None = None):
        f = {"id": "id", "question": "question", "response": "response", "system": "system"} | dict(fields or {})
        self.name = name or f"text:{Path(path).name}"
        self.items: list[Item] = []
        self.skipped: list[Skip] = []
        try:
            fh = open(path, encoding="utf-8")
        except OSError as e:
            raise DataError(f"text source {path!r} cannot be read: {e}") from None
        with fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                rid = f"{Path(path).stem}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    self.skipped.append(Skip(self.name, rid, "malformed_record", f"{path}:{lineno}: invalid JSON: {e}"))
                    continue
                if not isinstance(row, dict):
                    self.skipped.append(Skip(self.name, rid, "malformed_record", f"{path}:{lineno}: not an object"))
                    continue
                rid = str(row.get(f["id"], rid))
                q, resp, system = row.get(f["question"]), row.get(f["response"]), row.get(f["system"])
                if not (isinstance(q, str) and q.strip() and isinstance(resp, str) and resp.strip()):
                    self.skipped.append(Skip(self.name, rid, "empty_field",
                                             f"{path}:{lineno}: needs non-empty {f['question']!r} and {f['response']!r}"))
                    continue
                self.items.append(Item(record_id=rid, question=q.strip(), response=resp, image=None, reward=1.0,
                                       system=system if isinstance(system, str) and system else None))

    def __len__(self) -> int:
        return len(self.items)

    def item(self, i: int) -> Item:
        return self.items[i]


class VqaSource:
    """General VQA records (image, question, response) from JSONL or parquet."""

    def __init__(self, path: str, fields: Mapping[str, str] | None = None, *, name: str | None = None):
        f = {"id": "id", "image": "image", "question": "question", "response": "response"} | dict(fields or {})
        self.name = name or f"vqa:{Path(path).name}"
        try:
            qs = read_questions(path, FieldMap(id=f["id"], image=f["image"], question=f["question"],
                                               answer=f["response"], choices=f.get("choices"), hint=None))
        except DatasetError as e:
            raise DataError(f"VQA source: {e}") from None
        self.skipped = [Skip(self.name, s.record_id or f"{s.file}:{s.location}", s.reason, str(s)) for s in qs.skipped]
        # One image per example: the packer and the train step place one image's tiles per segment.
        self.skipped += [Skip(self.name, q.id, "multi_image", f"{q.source}: {len(q.images)} images; training takes "
                              "one image per example") for q in qs if len(q.images) > 1]
        self.items = [Item(record_id=q.id, question=format_question(q.question, q.choices), response=q.answer,
                           image=q.image_ref, reward=1.0) for q in qs if len(q.images) <= 1]

    def __len__(self) -> int:
        return len(self.items)

    def item(self, i: int) -> Item:
        return self.items[i]


# ------------------------------------------------------------------------------------------ tokens
class ExampleBuilder:
    """Turns an :class:`Item` (and its tile count) into policy tokens.

    Args:
        tokenizer: the policy's transformers tokenizer (has ``<|im_end|>`` and ``<IMG_CONTEXT>``).
        tokens_per_tile: image tokens per tile (the model config's).
        image_token_id: the model's ``<IMG_CONTEXT>`` id; must be the tokenizer's.
        tiling: the generation tiling (tile size of the vision tower, max_tiles of generate).
        prompts: long-CoT and default system prompts; rule: one of :data:`SYSTEM_RULES`.
        reasoner_tokenizer_is_policy: the behaviour log-probs of a store record are per policy
            token (the reasoner used the same tokenizer), so they may be aligned per token.
    """

    def __init__(self, tokenizer, *, tokens_per_tile: int, image_token_id: int, tiling: TilingConfig,
                 prompts: Prompts, rule: str = "paper", reasoner_tokenizer_is_policy: bool = False):
        if rule not in SYSTEM_RULES:
            raise DataError(f"data.system_prompt.rule must be one of {SYSTEM_RULES}, got {rule!r}")
        context = tokenizer.convert_tokens_to_ids(chat_templates.IMG_CONTEXT)
        if context != image_token_id:
            raise DataError(f"the tokenizer maps {chat_templates.IMG_CONTEXT} to {context}, the model expects "
                            f"{image_token_id}; is this the policy's tokenizer?")
        self.tokenizer = tokenizer
        self.tokens_per_tile = tokens_per_tile
        self.tiling = tiling
        self.prompts = prompts
        self.rule = rule
        self.per_token = reasoner_tokenizer_is_policy
        self.im_end = chat_templates.internvl_stop_token_ids(tokenizer)[0]

    def system_prompt(self, item: Item) -> str:
        if item.system is not None:
            return item.system
        if self.rule == "paper":
            return self.prompts.training_system_prompt(item.response)
        return self.prompts.long_cot_system if self.rule == "long_cot" else self.prompts.default_system

    @functools.lru_cache(maxsize=4096)  # a store repeats each question K x N times, in a row
    def _prompt_ids(self, system: str, question: str, num_tiles: int) -> tuple[int, ...]:
        return tuple(chat_templates.internvl_prompt_ids(
            self.tokenizer, question, num_tiles=[num_tiles] if num_tiles else [],
            tokens_per_tile=self.tokens_per_tile, system_message=system))

    def tokens(self, item: Item, num_tiles: int) -> TokenizedExample:
        prompt = list(self._prompt_ids(self.system_prompt(item), item.question,
                                       num_tiles if item.image is not None else 0))
        response = list(self.tokenizer(item.response, add_special_tokens=False)["input_ids"])
        ids = np.asarray(prompt + response + [self.im_end], dtype=np.int32)
        p, n = len(prompt), len(response)
        seq, per_token = math.nan, None
        lp = item.behaviour_logprobs
        if lp is not None:
            seq = float(np.sum(lp, dtype=np.float64))
            # Same tokenizer and the same count (n, or n + 1 with the sampled stop token): the
            # policy's tokens of the text are taken to be the behaviour's tokens.
            if self.per_token and len(lp) in (n, n + 1):
                per_token = np.full(len(ids), np.nan, np.float32)
                per_token[p - 1:p - 1 + len(lp)] = lp
        return TokenizedExample(record_id=item.record_id, input_ids=ids, prompt_len=p,
                                num_tiles=num_tiles if item.image is not None else 0, reward=float(item.reward),
                                behaviour_seq_logprob=seq, behaviour_token_logprobs=per_token)

