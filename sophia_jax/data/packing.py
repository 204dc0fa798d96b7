"""Packing tokenized examples into fixed-length rows with segment ids and a per-row tile budget.

Why packing and not length bucketing: SOPHIA trajectories run from a few hundred to 32K tokens,
and one compiled shape (B, L) with R tile slots serves the whole run on TPU -- no recompiles, and
a global batch is a fixed number of rows on every host. Bucketing would need one compiled step
per bucket and still pad each sequence to its bucket. The price of packing is segment-aware
attention and per-segment RoPE positions, which the model takes from ``segment_ids`` /
``positions``.

Placement is first-fit over a window of open rows, in the (shuffled) example order: an example
goes into the first open row with room for its tokens and its tiles, else opens a row; when more
than ``window`` rows are open the oldest is closed. It is a pure function of the lengths, so every
host computes the same rows. Nothing is cut: an example longer than L or with more tiles than R
must be filtered out (and reported) before planning.

Row arrays follow the batch contract (``notes/batch-contract.md``): for a row with segments
``1..k`` laid out left to right,

* ``targets[i] = input_ids[i + 1]`` inside a segment, 0 at a segment's last position and padding;
* ``loss_weights[i]`` = the segment's reward where ``targets[i]`` is a response token or the final
  ``<|im_end|>``, i.e. ``i`` in ``[P - 1, T - 2]`` of the segment; 0 elsewhere;
* ``positions`` restart at 0 at every segment; ``segment_ids`` 0 and ``source`` -1 on padding;
* ``behaviour_*`` are NaN wherever unknown (use ``where``, not multiplication, in the loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sophia_jax.data.training_examples import TokenizedExample

__all__ = ["ROW_KEYS", "empty_rows", "pack_row", "plan_rows", "stack_rows"]

ROW_KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "positions", "pixel_values", "tile_mask",
            "source", "behaviour_seq_logprob", "behaviour_token_logprob")


def plan_rows(lengths: Sequence[int], tiles: Sequence[int], seq_len: int, tiles_per_row: int,
              window: int) -> list[list[int]]:
    """Rows as lists of example indices (into ``lengths``), in the order they close.

    Every example must fit a row on its own (``length <= seq_len``, ``tiles <= tiles_per_row``).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    closed: list[list[int]] = []
    open_rows: list[tuple[list[int], int, int]] = []  # (members, tokens left, tiles left)
    for i, (n, t) in enumerate(zip(lengths, tiles)):
        if n > seq_len or t > tiles_per_row:
            raise ValueError(f"example {i} ({n} tokens, {t} tiles) does not fit a row ({seq_len}, {tiles_per_row})")
        for j, (members, room, tile_room) in enumerate(open_rows):
            if n <= room and t <= tile_room:
                members.append(i)
                open_rows[j] = (members, room - n, tile_room - t)
                break
        else:
            open_rows.append(([i], seq_len - n, tiles_per_row - t))
            if len(open_rows) > window:
                closed.append(open_rows.pop(0)[0])
    closed.extend(members for members, _, _ in open_rows)
    return closed


def empty_rows(rows: int, seq_len: int, tiles_per_row: int, tile_size: int, pad_id: int) -> dict[str, np.ndarray]:
    """``rows`` all-padding rows (zero weight everywhere): the arrays of the batch contract."""
    return {
        "input_ids": np.full((rows, seq_len), pad_id, np.int32),
        "targets": np.zeros((rows, seq_len), np.int32),
        "loss_weights": np.zeros((rows, seq_len), np.float32),
        "segment_ids": np.zeros((rows, seq_len), np.int32),
        "positions": np.zeros((rows, seq_len), np.int32),
        "pixel_values": np.zeros((rows, tiles_per_row, 3, tile_size, tile_size), np.float32),
        "tile_mask": np.zeros((rows, tiles_per_row), bool),
        "source": np.full((rows, seq_len), -1, np.int32),
        "behaviour_seq_logprob": np.full((rows, seq_len), np.nan, np.float32),
        "behaviour_token_logprob": np.full((rows, seq_len), np.nan, np.float32),
    }


def pack_row(out: dict[str, np.ndarray], row: int, examples: Sequence[TokenizedExample],
             pixels: Sequence[np.ndarray | None], sources: Sequence[int]) -> None:
    """Write one row's examples into row ``row`` of ``out`` (from :func:`empty_rows`), in order.

    pixels: per example ``float32[num_tiles, 3, H, W]`` or ``None`` (no image).
    """
    seq_len, budget = out["input_ids"].shape[1], out["tile_mask"].shape[1]
    at, tile_at = 0, 0
    for seg, (ex, px, src) in enumerate(zip(examples, pixels, sources), start=1):
        n, p = ex.length, ex.prompt_len
        if at + n > seq_len or tile_at + ex.num_tiles > budget:
            raise ValueError(f"row {row}: {ex.record_id} does not fit ({at}+{n} tokens, {tile_at}+{ex.num_tiles} tiles)")
        sl = slice(at, at + n)
        out["input_ids"][row, sl] = ex.input_ids
        out["targets"][row, at:at + n - 1] = ex.input_ids[1:]
        out["loss_weights"][row, at + p - 1:at + n - 1] = ex.reward
        out["segment_ids"][row, sl] = seg
        out["positions"][row, sl] = np.arange(n, dtype=np.int32)
        out["source"][row, sl] = src
        if not np.isnan(ex.behaviour_seq_logprob):
            out["behaviour_seq_logprob"][row, at + p - 1:at + n - 1] = ex.behaviour_seq_logprob
        if ex.behaviour_token_logprobs is not None:
            out["behaviour_token_logprob"][row, sl] = ex.behaviour_token_logprobs
        if ex.num_tiles:
            if px is None or len(px) != ex.num_tiles:
                raise ValueError(f"{ex.record_id}: planned {ex.num_tiles} tiles, got {None if px is None else len(px)}")
            out["pixel_values"][row, tile_at:tile_at + ex.num_tiles] = px
            out["tile_mask"][row, tile_at:tile_at + ex.num_tiles] = True
        at += n
        tile_at += ex.num_tiles


def stack_rows(rows: int, seq_len: int, tiles_per_row: int, tile_size: int, pad_id: int,
               content: Sequence[tuple[Sequence[TokenizedExample], Sequence[np.ndarray | None], Sequence[int]]]
               ) -> dict[str, np.ndarray]:
    """A batch of ``rows`` rows; ``content[b]`` = (examples, pixels, sources) of row b, the rest padding."""
    out = empty_rows(rows, seq_len, tiles_per_row, tile_size, pad_id)
    for b, (examples, pixels, sources) in enumerate(content):
        pack_row(out, b, examples, pixels, sources)
    return out
