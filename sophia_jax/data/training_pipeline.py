"""The training input pipeline: sources -> mixed, shuffled examples -> packed rows -> host batches.

Plan first, then read. At construction every host reads every source once (tokens and image
sizes, no pixels kept), drops what cannot be used (counted and named in :meth:`report`), mixes
and shuffles for ``num_epochs`` with the seed, packs the stream into rows (:mod:`packing`), and
cuts the rows into global batches of ``global_batch_rows``. The last global batch is filled up
with all-zero-weight padding rows rather than dropped. The plan is a pure function of the data,
the config and the seed, so every host computes the same plan without talking to the others,
and therefore yields the same number of batches (a multi-host step would deadlock otherwise);
:meth:`count_batches` is exact before the first batch is read.

Host slices: global batch ``g`` is rows ``[g * G, (g + 1) * G)`` of the plan; host ``p`` of
``P`` builds rows ``[p * G / P, (p + 1) * G / P)`` of it and reads only those examples' images.

Mixing: an epoch is one pass over the first present source (the store, index 0, when it is
configured). Another source ``s`` contributes ``round(n_first * w_s / w_first)`` examples per
epoch, walking through its own shuffled order and reshuffling each time it runs out, so weights
are shares of the stream. The epoch's examples are then shuffled together.

Batches are built by a Grain ``MapDataset`` over the host's batch plans (threads prefetch the
next ones). Iterator state is the index of the next global batch -- Grain's own
``next_index``, exact for a map dataset -- plus a fingerprint of the plan:
``set_state`` on a fresh pipeline continues with exactly the next batch, with no re-reading, and
refuses a state made from other data or another config. The index is global, so a run may be
resumed with another number of hosts.

Each batch is a pair ``(arrays, meta)``: ``arrays`` the contract's numpy dict (B = G / P rows),
``meta`` per row the list of ``(record_id, source_name)`` of its segments.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from typing import Any

import grain
import ml_collections
import numpy as np

from sophia_jax.data import packing
from sophia_jax.data.images import ImageError, TilingConfig, num_tiles_for_size
from sophia_jax.data.training_examples import (
    DataError,
    ExampleBuilder,
    Item,
    Skip,
    StoreSource,
    TextSource,
    VqaSource,
)
from sophia_jax.sophia.prompts import Prompts

__all__ = ["TrainingPipeline"]

log = logging.getLogger(__name__)
STATE_FORMAT = "sophia_jax.training_pipeline.v1"


def _rng(*parts: Any) -> np.random.Generator:
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class TrainingPipeline:
    """Deterministic packed training batches for this host.

    Args:
        cfg: the data config (:func:`sophia_jax.configs.train_data.get_data_config`).
        global_batch_rows: packed rows per global (micro-)batch, over all hosts; a multiple of
            ``process_count``.
        tokenizer: the policy's transformers tokenizer.
        tokens_per_tile, image_token_id, tile_size: the policy model's (``config.tokens_per_tile``,
            ``config.image_token_id``, ``config.vision.image_size``).
        process_index, process_count: this host's place (``jax.process_index()`` / ``count()``).
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, global_batch_rows: int, tokenizer, tokens_per_tile: int,
                 image_token_id: int, tile_size: int, process_index: int = 0, process_count: int = 1):
        if global_batch_rows < 1 or global_batch_rows % process_count:
            raise DataError(f"global_batch_rows ({global_batch_rows}) must be a positive multiple of the "
                            f"process count ({process_count})")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        self.cfg = cfg
        self.global_rows = global_batch_rows
        self.host_rows = global_batch_rows // process_count
        self.process_index = process_index
        self.seq_len, self.tiles_per_row, self.tile_size = int(cfg.seq_len), int(cfg.tiles_per_row), tile_size
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.tiling = TilingConfig(tile_size=tile_size, max_tiles=int(cfg.max_tiles))
        overrides = {"long_cot_system": cfg.system_prompt.long_cot_file or None,
                     "default_system": cfg.system_prompt.default_file or None}
        try:
            prompts = Prompts.load({k: v for k, v in overrides.items() if v})
        except ValueError as e:
            raise DataError(f"data.system_prompt: {e}") from None
        self.builder = ExampleBuilder(tokenizer, tokens_per_tile=tokens_per_tile, image_token_id=image_token_id,
                                      tiling=self.tiling, prompts=prompts, rule=cfg.system_prompt.rule,
                                      reasoner_tokenizer_is_policy=bool(cfg.reasoner_tokenizer_is_policy))
        self.sources, self.weights = self._open_sources(cfg)
        self.skipped: list[Skip] = [s for src in self.sources if src is not None for s in getattr(src, "skipped", [])]
        self._tiles_of: dict[str, int | ImageError] = {}
        self.entries = self._scan()  # per source: [(item index, length, tiles)]
        self.rows = self._plan()  # rows of (source, item index)
        n = len(self.rows)
        self.num_batches = -(-n // self.global_rows)
        self.fingerprint = hashlib.sha256(json.dumps(
            [self.rows, self.global_rows, self.seq_len, self.tiles_per_row, tile_size]).encode()).hexdigest()[:16]
        self._iter = None
        self._start = 0

    # -------------------------------------------------------------------------------- sources
    @staticmethod
    def _open_sources(cfg) -> tuple[list, list[float]]:
        sources: list = [None]  # index 0 is the store, present or not, so source ids are stable
        weights = [float(cfg.store_weight)]
        if cfg.store:
            sources[0] = StoreSource(cfg.store, cfg.selection, questions=cfg.store_questions,
                                     image_field=cfg.store_questions_image_field)
        for kind, entries in ((TextSource, cfg.text_sources), (VqaSource, cfg.vqa_sources)):
            for e in entries:
                if not e["path"]:
                    raise DataError(f"a data source entry has no path: {dict(e)}")
                sources.append(kind(e["path"], dict(e.get("fields", {}) or {})))
                weights.append(float(e.get("weight", 1.0)))
        if all(s is None for s in sources):
            raise DataError("no training data: set data.store and/or data.text_sources / data.vqa_sources")
        if any(w < 0 for w in weights):
            raise DataError(f"mixture weights must be >= 0, got {weights}")
        return sources, weights

    def source_names(self) -> list[str]:
        return [s.name if s is not None else "store" for s in self.sources]

    def _item(self, s: int, i: int) -> Item | Skip:
        return self.sources[s].item(i)

    def _num_tiles(self, item: Item) -> int:
        """Tiles of the item's image; a full decode, so a corrupt image is found now, not mid-training.

        Cached per image: a store holds K x N trajectories of every image.
        """
        if item.image is None:
            return 0
        ref = item.image
        key = str(ref.path) if ref.path is not None else hashlib.sha256(ref.data).hexdigest()
        if key not in self._tiles_of:
            try:
                image = ref.open()
                self._tiles_of[key] = num_tiles_for_size(image.width, image.height, self.tiling)
            except ImageError as e:
                self._tiles_of[key] = e
        found = self._tiles_of[key]
        if isinstance(found, ImageError):
            raise found
        return found

    def _scan(self) -> list[list[tuple[int, int, int]]]:
        """Tokenise every item once; keep (index, length, tiles) of the usable ones."""
        entries: list[list[tuple[int, int, int]]] = []
        for s, src in enumerate(self.sources):
            kept: list[tuple[int, int, int]] = []
            entries.append(kept)
            if src is None:
                continue
            for i in range(len(src)):
                item = self._item(s, i)
                if isinstance(item, Skip):
                    self.skipped.append(item)
                    continue
                skip = self._check(src.name, item, i, kept)
                if skip is not None:
                    self.skipped.append(skip)
        return entries

    def _check(self, name: str, item: Item, i: int, kept: list) -> Skip | None:
        if not item.reward > 0:
            return Skip(name, item.record_id, "zero_reward", f"reward {item.reward} carries no loss")
        try:
            tiles = self._num_tiles(item)
        except ImageError as e:
            reason = "missing_image" if "not found" in str(e) else "bad_image"
            return Skip(name, item.record_id, reason, str(e))
        if tiles > self.tiles_per_row:
            return Skip(name, item.record_id, "too_many_tiles",
                        f"{tiles} tiles > data.tiles_per_row {self.tiles_per_row}")
        ex = self.builder.tokens(item, tiles)
        if ex.length > self.seq_len:
            return Skip(name, item.record_id, "too_long", f"{ex.length} tokens > data.seq_len {self.seq_len}")
        kept.append((i, ex.length, tiles))
        return None

    # -------------------------------------------------------------------------------- plan
    def _epoch(self, epoch: int, cursors: dict[int, tuple[int, np.ndarray]]) -> list[tuple[int, int]]:
        """One epoch's (source, entry position) pairs, mixed and shuffled."""
        present = [s for s, e in enumerate(self.entries) if e and self.weights[s] > 0]
        if not present:
            return []
        first = present[0]
        out: list[tuple[int, int]] = []
        for s in present:
            n = len(self.entries[s])
            want = n if s == first else int(round(len(self.entries[first]) * self.weights[s] / self.weights[first]))
            for _ in range(want):
                # walk this source's own order, reshuffled each time it is used up
                k, perm = cursors.get(s, (0, None))
                if k % n == 0:
                    perm = _rng(self.cfg.seed, "source", s, k // n).permutation(n) if self.cfg.shuffle else np.arange(n)
                out.append((s, int(perm[k % n])))
                cursors[s] = (k + 1, perm)
        if self.cfg.shuffle:
            out = [out[j] for j in _rng(self.cfg.seed, "epoch", epoch).permutation(len(out))]
        return out

    def _plan(self) -> list[list[tuple[int, int]]]:
        cursors: dict[int, tuple[int, np.ndarray | None]] = {}
        stream: list[tuple[int, int]] = []
        for epoch in range(int(self.cfg.num_epochs)):
            stream += self._epoch(epoch, cursors)
        if not stream:
            counts = collections.Counter(s.reason for s in self.skipped)
            raise DataError(f"no usable training examples (skipped by reason: {dict(counts)})")
        lengths = [self.entries[s][j][1] for s, j in stream]
        tiles = [self.entries[s][j][2] for s, j in stream]
        rows = packing.plan_rows(lengths, tiles, self.seq_len, self.tiles_per_row, int(self.cfg.pack_window))
        return [[(stream[k][0], self.entries[stream[k][0]][stream[k][1]][0]) for k in row] for row in rows]

    def count_batches(self) -> int:
        """Global batches in the whole run (all epochs); the same on every host."""
        return self.num_batches

    # -------------------------------------------------------------------------------- batches
    def host_plan(self, batch: int) -> list[list[tuple[int, int]]]:
        """This host's rows of global batch ``batch``: per row the (source, item index) pairs."""
        start = batch * self.global_rows + self.process_index * self.host_rows
        return self.rows[start:start + self.host_rows]

    def build_batch(self, batch: int) -> tuple[dict[str, np.ndarray], list[list[tuple[str, str]]]]:
        """The arrays and row metadata of this host's slice of global batch ``batch``."""
        names = self.source_names()
        content, meta = [], []
        for row in self.host_plan(batch):
            examples, pixels, sources = [], [], []
            for s, i in row:
                item = self._item(s, i)
                if isinstance(item, Skip):  # usable at planning time, so the data changed under us
                    raise DataError(f"{names[s]} record {item.record_id} changed since the plan: {item.message}")
                try:
                    px = item.image.load(self.tiling) if item.image is not None else None
                except ImageError as e:
                    raise DataError(f"{names[s]} record {item.record_id}: image became unreadable after "
                                    f"planning: {e}") from None
                examples.append(self.builder.tokens(item, 0 if px is None else len(px)))
                pixels.append(px)
                sources.append(s)
            content.append((examples, pixels, sources))
            meta.append([(ex.record_id, names[s]) for ex, s in zip(examples, sources)])
        arrays = packing.stack_rows(self.host_rows, self.seq_len, self.tiles_per_row, self.tile_size, self.pad_id,
                                    content)
        meta += [[] for _ in range(self.host_rows - len(meta))]
        return arrays, meta

    def _dataset(self) -> grain.MapDataset:
        return grain.MapDataset.range(self.num_batches).map(self.build_batch)

    def __iter__(self):
        return self

    def __next__(self):
        if self._iter is None:
            options = grain.ReadOptions(num_threads=int(self.cfg.prefetch_threads),
                                        prefetch_buffer_size=int(self.cfg.prefetch_batches))
            self._iter = iter(self._dataset().to_iter_dataset(options))
            if self._start:
                self._iter.set_state({"next_index": self._start})
        return next(self._iter)

    def get_state(self) -> dict:
        """JSON-serialisable position: the next global batch and the plan it belongs to."""
        nxt = self._iter.get_state()["next_index"] if self._iter is not None else self._start
        return {"format": STATE_FORMAT, "next_batch": int(nxt), "plan": self.fingerprint,
                "num_batches": self.num_batches}

    def set_state(self, state: dict) -> None:
        """Continue with exactly the batch after the one ``state`` was taken at."""
        if state.get("format") != STATE_FORMAT:
            raise DataError(f"data iterator state has format {state.get('format')!r}, expected {STATE_FORMAT!r}")
        if state["plan"] != self.fingerprint:
            raise DataError(f"the data iterator state belongs to another data plan ({state['plan']}, now "
                            f"{self.fingerprint}): the data, the data config or the batch size changed since "
                            "the checkpoint; resuming would skip or repeat examples")
        if not 0 <= state["next_batch"] <= self.num_batches:
            raise DataError(f"data iterator state next_batch {state['next_batch']} is outside [0, {self.num_batches}]")
        self._start = int(state["next_batch"])
        self._iter = None

    # -------------------------------------------------------------------------------- report
    def report(self) -> dict:
        """Planned examples per source, padding, and every skipped record by reason."""
        names = self.source_names()
        used = collections.Counter(names[s] for row in self.rows for s, _ in row)
        tokens = sum(self.entries_length(s, i) for row in self.rows for s, i in row)
        total_rows = self.num_batches * self.global_rows
        return {
            "examples": sum(used.values()),
            "examples_by_source": dict(used),
            "rows": len(self.rows),
            "padding_rows": total_rows - len(self.rows),
            "batches": self.num_batches,
            "token_fill": tokens / max(1, total_rows * self.seq_len),
            "skipped_by_reason": dict(collections.Counter(s.reason for s in self.skipped)),
            "skipped": [{"source": s.source, "id": s.record_id, "reason": s.reason, "message": s.message}
                        for s in self.skipped],
        }

    def entries_length(self, s: int, i: int) -> int:
        if not hasattr(self, "_lengths"):
            self._lengths = {(src, idx): n for src, e in enumerate(self.entries) for idx, n, _ in e}
        return self._lengths[(s, i)]
