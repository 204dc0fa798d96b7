"""First-fit packing plans and row layout on hand-made examples."""

import numpy as np
import pytest

from sophia_jax.data.packing import plan_rows, stack_rows
from sophia_jax.data.training_examples import TokenizedExample


def test_first_fit_within_a_window():
    # seq_len 10, 4 tiles: 6 opens row A, 5 opens B, 4 fits A, 3 fits B (A is full at 10).
    assert plan_rows([6, 5, 4, 3], [0, 0, 0, 0], 10, 4, window=4) == [[0, 2], [1, 3]]
    # The tile budget also closes a row: 3 tiles + 2 tiles > 4.
    assert plan_rows([2, 2, 2], [3, 2, 1], 10, 4, window=4) == [[0, 2], [1]]
    # window 1: only the newest row stays open, so an older row's room is given up.
    assert plan_rows([6, 5, 4], [0, 0, 0], 10, 4, window=1) == [[0], [1, 2]]
    with pytest.raises(ValueError, match="does not fit"):
        plan_rows([11], [0], 10, 4, window=1)


def example(rid, ids, prompt_len, tiles=0, reward=1.0):
    return TokenizedExample(record_id=rid, input_ids=np.asarray(ids, np.int32), prompt_len=prompt_len,
                            num_tiles=tiles, reward=reward, behaviour_seq_logprob=-2.5,
                            behaviour_token_logprobs=None)


def test_row_layout_by_hand():
    a = example("a", [10, 11, 12, 13, 14], prompt_len=3, tiles=2, reward=0.5)  # response 13, end 14
    b = example("b", [20, 21, 22], prompt_len=1, tiles=1)  # response 21, end 22
    px = [np.full((2, 3, 2, 2), 1.0, np.float32), np.full((1, 3, 2, 2), 2.0, np.float32)]
    out = stack_rows(2, 10, 4, 2, 0, [([a, b], px, [0, 3])])
    assert out["input_ids"][0].tolist() == [10, 11, 12, 13, 14, 20, 21, 22, 0, 0]
    assert out["targets"][0].tolist() == [11, 12, 13, 14, 0, 21, 22, 0, 0, 0]
    assert out["loss_weights"][0].tolist() == [0, 0, 0.5, 0.5, 0, 1, 1, 0, 0, 0]
    assert out["segment_ids"][0].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 0, 0]
    assert out["positions"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 0]
    assert out["source"][0].tolist() == [0] * 5 + [3] * 3 + [-1] * 2
    seq = out["behaviour_seq_logprob"][0]
    assert np.all(seq[[2, 3, 5, 6]] == -2.5) and np.isnan(np.delete(seq, [2, 3, 5, 6])).all()
    assert out["tile_mask"][0].tolist() == [True, True, True, False]
    assert out["pixel_values"][0, :, 0, 0, 0].tolist() == [1, 1, 2, 0]
    # The second row is padding: no weight, no tiles, segment 0.
    assert not out["loss_weights"][1].any() and not out["tile_mask"][1].any() and not out["segment_ids"][1].any()
    with pytest.raises(ValueError, match="does not fit"):
        stack_rows(1, 7, 4, 2, 0, [([a, b], px, [0, 0])])
