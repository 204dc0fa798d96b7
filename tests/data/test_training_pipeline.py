"""The training pipeline: example layout, packing, determinism, host slices, exact resume, bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from sophia_jax.configs.train_data import extra_source, get_data_config
from sophia_jax.data import chat_templates
from sophia_jax.data.datasets import ImageRef
from sophia_jax.data.images import TilingConfig
from sophia_jax.data.trajectory_record import TrajectoryRecord
from sophia_jax.data.trajectory_store import TrajectoryStore
from sophia_jax.data.training_examples import DataError
from sophia_jax.data.training_pipeline import TrainingPipeline
from sophia_jax.sampling.testing import WORDS, tiny_tokenizer
from sophia_jax.sophia.prompts import Prompts

TPT, TILE = 4, 56  # tokens per tile, tile side (the toy policy's)
TOK = tiny_tokenizer(image_token_id=None, words=(*WORDS, "<think>", "</think>"))
IMG_ID = TOK.convert_tokens_to_ids("<IMG_CONTEXT>")
RESPONSES = ["so the answer is 3 .", "<think> think step by step </think> the answer is 4 .",
             "the image is red so 2", "because 1 + 1 = 2 therefore 2"]


def write_image(path, size):
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def record(qid, image, trajectory, *, k=0, n=0, selected=True, reward=1.0, choices=None, lp_len=None):
    lp_len = len(TOK(trajectory, add_special_tokens=False)["input_ids"]) + 1 if lp_len is None else lp_len
    lp = -np.linspace(0.1, 1.0, lp_len).astype(np.float32)
    return TrajectoryRecord(
        question_id=qid, image_ref=image, question="what is this ?", answer="3", choices=choices,
        caption_index=k, caption="a red cat", caption_reward=1.0, trajectory_index=n, trajectory=trajectory,
        outcome_reward=reward, extracted_answer="3", judge_reason="ok", selected=selected, policy_name="p",
        reasoner_name="r", caption_tokens=2, trajectory_tokens=lp_len,
        trajectory_policy_tokens=len(TOK(trajectory, add_special_tokens=False)["input_ids"]),
        caption_logprobs=np.zeros(2), caption_raw_logprobs=np.zeros(2), trajectory_logprobs=lp,
        trajectory_raw_logprobs=lp)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """12 selected records over 3 shards, images of 1 and 3 tiles (56-px tiles, max_tiles 2)."""
    root = tmp_path_factory.mktemp("store")
    wide = write_image(root / "wide.png", (120, 60))  # 2x1 grid + thumbnail = 3 tiles
    square = write_image(root / "square.png", (50, 50))  # 1 tile
    s = TrajectoryStore(root / "s")
    for shard in range(3):
        s.write_shard(shard, [record(f"q{shard}-{j}", [wide, square][j % 2], RESPONSES[(shard + j) % 4],
                                     choices=["3", "4"] if j == 1 else None) for j in range(4)]
                      + [record(f"q{shard}-x", square, "no", selected=False)])
    return str(root / "s")


def data_cfg(store="", **overrides):
    cfg = get_data_config(runlocal=True)
    cfg.store = store
    cfg.max_tiles = 2
    cfg.seq_len = 1024  # the long-CoT system prompt alone is ~650 tiny-vocabulary tokens
    cfg.tiles_per_row = 6
    cfg.reasoner_tokenizer_is_policy = True
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def pipeline(cfg, rows=2, index=0, count=1):
    return TrainingPipeline(cfg, global_batch_rows=rows, tokenizer=TOK, tokens_per_tile=TPT, image_token_id=IMG_ID,
                            tile_size=TILE, process_index=index, process_count=count)


def all_batches(p):
    return list(p)


def same(a, b):
    (xa, ma), (xb, mb) = a, b
    assert ma == mb
    assert set(xa) == set(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and xa[k].tobytes() == xb[k].tobytes(), k


def test_packed_row_layout_by_hand(store):
    p = pipeline(data_cfg(store, shuffle=False), rows=1)
    arrays, meta = next(iter(p))
    assert set(arrays) == set(("input_ids", "targets", "loss_weights", "segment_ids", "positions", "pixel_values",
                               "tile_mask", "source", "behaviour_seq_logprob", "behaviour_token_logprob"))
    ids, seg, pos, tgt, w = (arrays[k][0] for k in ("input_ids", "segment_ids", "positions", "targets", "loss_weights"))
    reader = TrajectoryStore(store, clean_on_open=False)
    records = {f"{r.question_id}/{r.caption_index}/{r.trajectory_index}": r for r in reader.iter_records()}
    prompts = Prompts.load()
    assert len(meta[0]) >= 2, "the row should pack several examples"
    tile_at = 0
    for s, (rid, name) in enumerate(meta[0], start=1):
        assert name == "store"
        r = records[rid]
        where = np.flatnonzero(seg == s)
        assert where.tolist() == list(range(where[0], where[-1] + 1)) and pos[where].tolist() == list(range(len(where)))
        text = TOK.decode(ids[where].tolist())
        system = prompts.long_cot_system if "<think>" in r.trajectory else prompts.default_system
        tiles = TilingConfig(tile_size=TILE, max_tiles=2)
        pixels = ImageRef(path=r.image_ref).load(tiles)
        question = "what is this ?" + ("\nChoices: (A) 3 (B) 4" if r.choices else "")
        expected = chat_templates.render_internvl2_5(question, num_tiles=[len(pixels)], tokens_per_tile=TPT,
                                                     system_message=system) + r.trajectory + "<|im_end|>"
        # The tiny vocabulary has no CJK, so compare ids (the two system prompts differ in length).
        assert ids[where].tolist() == TOK(expected)["input_ids"] and r.caption not in text
        # Weight exactly on positions whose target is a response token or the closing <|im_end|>.
        weighted = where[w[where] > 0]
        assert TOK.decode(tgt[weighted].tolist()) == r.trajectory + "<|im_end|>"
        assert np.all(w[weighted] == 1.0) and tgt[where[-1]] == 0 and w[where[-1]] == 0
        assert np.array_equal(tgt[where[:-1]], ids[where[1:]])
        # Image tokens: tokens_per_tile per tile, tiles in segment order.
        assert (ids[where] == IMG_ID).sum() == TPT * len(pixels)
        np.testing.assert_array_equal(arrays["pixel_values"][0, tile_at:tile_at + len(pixels)], pixels)
        tile_at += len(pixels)
        # Behaviour log-probs: the sequence sum on loss positions, per token aligned with targets.
        lp = r.trajectory_raw_logprobs
        np.testing.assert_allclose(arrays["behaviour_seq_logprob"][0, weighted], lp.sum(), rtol=1e-6)
        np.testing.assert_array_equal(arrays["behaviour_token_logprob"][0, weighted], lp)
        assert np.all(arrays["source"][0, where] == 0)
    assert arrays["tile_mask"][0].sum() == tile_at and not arrays["pixel_values"][0, tile_at:].any()
    pad = seg == 0
    assert np.all(w[pad] == 0) and np.all(arrays["source"][0, pad] == -1)


def test_count_determinism_and_seed(store):
    a, b = pipeline(data_cfg(store, seed=3)), pipeline(data_cfg(store, seed=3))
    batches = all_batches(a)
    assert len(batches) == a.count_batches() == b.count_batches()
    for x, y in zip(batches, all_batches(b)):
        same(x, y)
    ids = [rid for _, meta in batches for row in meta for rid, _ in row]
    assert sorted(ids) == sorted(f"q{s}-{j}/0/0" for s in range(3) for j in range(4))  # each selected once
    other = [rid for _, meta in pipeline(data_cfg(store, seed=4)) for row in meta for rid, _ in row]
    assert other != ids and sorted(other) == sorted(ids)


def test_host_slices_are_disjoint_and_cover_the_global_batch(store):
    cfg = data_cfg(store, num_epochs=2)
    whole = all_batches(pipeline(cfg, rows=4))
    hosts = [all_batches(pipeline(cfg, rows=4, index=i, count=2)) for i in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == len(whole)
    for g, (arrays, meta) in enumerate(whole):
        parts = [hosts[i][g] for i in range(2)]
        assert parts[0][1] + parts[1][1] == meta  # rows [0, 2) on host 0, [2, 4) on host 1
        for k in arrays:
            joined = np.concatenate([part[0][k] for part in parts])
            assert joined.tobytes() == arrays[k].tobytes(), k


@pytest.mark.parametrize("threads", [1, 3])
def test_resume_continues_with_exactly_the_next_batch(store, threads):
    cfg = data_cfg(store, num_epochs=3, prefetch_threads=threads, prefetch_batches=4)
    uninterrupted = all_batches(pipeline(cfg))
    assert len(uninterrupted) >= 5
    first = pipeline(cfg)
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    resumed = pipeline(cfg)
    resumed.set_state(state)
    rest = all_batches(resumed)
    assert len(rest) == len(uninterrupted) - 3
    for x, y in zip(rest, uninterrupted[3:]):
        same(x, y)
    with pytest.raises(DataError, match="another data plan"):
        pipeline(data_cfg(store, num_epochs=2)).set_state(state)


def test_mixture_weights_and_extra_sources(store, tmp_path):
    text = tmp_path / "text.jsonl"
    text.write_text("\n".join(json.dumps({"question": "what is 1 + 1 ?", "response": f"the answer is {i}"})
                              for i in range(1, 5)) + "\nnot json\n")
    vqa = tmp_path / "vqa.jsonl"
    img = write_image(tmp_path / "v.png", (50, 50))
    vqa.write_text("\n".join(json.dumps({"id": f"v{i}", "image": img, "question": "describe this image",
                                         "chosen": "a red cat"}) for i in range(3)) + "\n")
    cfg = data_cfg(store, text_sources=[extra_source(str(text), 0.5)],
                   vqa_sources=[extra_source(str(vqa), 0.25, response="chosen")])
    p = pipeline(cfg)
    report = p.report()
    assert report["examples_by_source"] == {"store": 12, "text:text.jsonl": 6, "vqa:vqa.jsonl": 3}
    assert report["skipped_by_reason"] == {"malformed_record": 1}
    for arrays, meta in p:
        for b, row in enumerate(meta):
            for s, (rid, name) in enumerate(row, start=1):
                src = arrays["source"][b][arrays["segment_ids"][b] == s]
                assert np.all(src == p.source_names().index(name))
                if name.startswith("text"):
                    assert np.all(np.isnan(arrays["behaviour_seq_logprob"][b][arrays["segment_ids"][b] == s]))


def test_bad_records_are_skipped_and_named(tmp_path):
    good = write_image(tmp_path / "good.png", (50, 50))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    s = TrajectoryStore(tmp_path / "s")
    s.write_shard(0, [record("ok", good, RESPONSES[0]), record("gone", str(tmp_path / "nowhere.png"), RESPONSES[0]),
                      record("broken", str(broken), RESPONSES[0]),
                      record("long", good, " ".join(["the"] * 200)),
                      record("wide", write_image(tmp_path / "wide.png", (120, 60)), RESPONSES[0]),
                      record("inline", "inline:" + "0" * 64, RESPONSES[0])])
    p = pipeline(data_cfg(str(tmp_path / "s"), seq_len=200, tiles_per_row=2))
    r = p.report()
    assert r["examples"] == 1
    assert {(x["id"], x["reason"]) for x in r["skipped"]} == {
        ("gone/0/0", "missing_image"), ("broken/0/0", "bad_image"), ("long/0/0", "too_long"),
        ("wide/0/0", "too_many_tiles"), ("inline/0/0", "unresolved_image")}
    assert [rid for _, meta in p for row in meta for rid, _ in row] == ["ok/0/0"]


def test_a_selection_may_fix_the_dataset_reward(tmp_path):
    """Table 5's Random baseline trains on drawn trajectories whatever their outcome: a stored selection
    with ``dataset_reward`` gives its records that weight; otherwise a wrong one carries no loss."""
    image = write_image(tmp_path / "a.png", (50, 50))
    s = TrajectoryStore(tmp_path / "s")
    s.write_shard(0, [record("right", image, RESPONSES[0]), record("wrong", image, RESPONSES[2], reward=0.0)])
    s.write_selection("outcome", [(0, 0), (0, 1)])
    s.write_selection("drawn", [(0, 0), (0, 1)], meta={"dataset_reward": 1.0})
    plain = pipeline(data_cfg(str(tmp_path / "s"), selection="outcome", shuffle=False), rows=1)
    assert [(x["id"], x["reason"]) for x in plain.report()["skipped"]] == [("wrong/0/0", "zero_reward")]
    drawn = pipeline(data_cfg(str(tmp_path / "s"), selection="drawn", shuffle=False), rows=1)
    arrays, meta = next(iter(drawn))
    assert [rid for rid, _ in meta[0]] == ["right/0/0", "wrong/0/0"] and drawn.report()["skipped"] == []
    weights = arrays["loss_weights"][0]
    assert set(np.unique(weights[arrays["segment_ids"][0] == 2])) == {0.0, 1.0}  # the wrong one trains at weight 1


def test_bad_stores_raise_one_clear_error(tmp_path, store):
    with pytest.raises(DataError, match="does not exist"):
        pipeline(data_cfg(str(tmp_path / "nothing")))
    (tmp_path / "empty" / "shards").mkdir(parents=True)
    with pytest.raises(DataError, match="no finished shards"):
        pipeline(data_cfg(str(tmp_path / "empty")))
    s = TrajectoryStore(tmp_path / "unselected")
    s.write_shard(0, [record("q", "x.png", "so 3", selected=False)])
    with pytest.raises(DataError, match="selection.*is empty"):
        pipeline(data_cfg(str(tmp_path / "unselected")))
    s.write_selection("none", [])
    with pytest.raises(DataError, match="'none' is empty"):
        pipeline(data_cfg(str(tmp_path / "unselected"), selection="none"))
    with pytest.raises(DataError, match="no selection 'missing'"):
        pipeline(data_cfg(str(tmp_path / "unselected"), selection="missing"))
    path = s.write_selection("edited", [(0, 0)]) and s.selection_dir / "edited.json"
    raw = json.loads(path.read_text())
    raw["keys"] += [[0, 7], [5, 0]]
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"names 2 records.*\(0, 7\), \(5, 0\)"):
        pipeline(data_cfg(str(tmp_path / "unselected"), selection="edited"))
    with pytest.raises(DataError, match="multiple of the process count"):
        pipeline(data_cfg(store), rows=3, count=2)


def test_vqa_only_from_parquet_in_the_rlaif_v_layout(tmp_path):
    """The warm-up shape: no store, RLAIF-V parquet (image {bytes, path}, question, chosen, rejected)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    png = open(write_image(tmp_path / "a.png", (120, 60)), "rb").read()
    pq.write_table(pa.table({
        "image": [{"bytes": png, "path": "a.png"}] * 3,
        "question": ["describe this image", "what is this ?", "is the sky blue ?"],
        "chosen": ["a red cat", "a dog", "the sky is blue"], "rejected": ["no", "no", "no"],
    }), tmp_path / "rlaif.parquet")
    cfg = data_cfg("", vqa_sources=[extra_source(str(tmp_path / "rlaif.parquet"), 1.0, response="chosen")],
                   tiles_per_row=9)
    p = pipeline(cfg, rows=1)
    (arrays, meta), = list(p)
    assert [name for _, name in meta[0]] == ["vqa:rlaif.parquet"] * 3
    weighted = arrays["loss_weights"][0] > 0
    text = TOK.decode(arrays["targets"][0][weighted].tolist())
    assert sorted(text.split("<|im_end|>")[:-1]) == ["a dog", "a red cat", "the sky is blue"]
    assert arrays["tile_mask"][0].sum() == 9 and np.all(arrays["source"][0][arrays["segment_ids"][0] > 0] == 1)


def test_stale_selection_is_a_clear_error(tmp_path):
    s = TrajectoryStore(tmp_path / "s")
    s.write_shard(0, [record("q", "x.png", "so 3")])
    s.write_selection("mine", [(0, 0)])
    s.write_shard(0, [record("q", "x.png", "so 4")], overwrite=True)
    with pytest.raises(DataError, match="rewritten"):
        pipeline(data_cfg(str(tmp_path / "s"), selection="mine"))
