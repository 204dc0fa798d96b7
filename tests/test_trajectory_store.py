"""Trajectory records and the ArrayRecord trajectory store (format, atomic shards, Grain, selections)."""

import json
import os
import pickle
import struct
import subprocess
import sys

import grain
import numpy as np
import pytest

from sophia_jax.sophia import selection
from sophia_jax.data.trajectory_record import RecordFormatError, TrajectoryRecord, decode, encode, record_key
from sophia_jax.data.trajectory_store import (
    DecodeRecord,
    ShardExistsError,
    StaleSelectionError,
    StoreError,
    TrajectoryStore,
    shard_of,
    shards_for_host,
)


def make_record(qid="q0", k=0, n=0, *, reward=1.0, length=5, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    ct, tt = 3 + k, length
    fields = dict(
        question_id=qid, image_ref=f"imgs/{qid}.png", question="What is x?", answer="4",
        choices=None, caption_index=k, caption=f"caption {k}", caption_reward=0.875,
        trajectory_index=n, trajectory=f"reasoning {k}/{n} \\boxed{{4}}", outcome_reward=reward,
        extracted_answer="4", judge_reason="numeric equal", selected=False,
        policy_name="internvl-tiny", reasoner_name="reasoner-tiny",
        caption_tokens=ct, trajectory_tokens=tt, trajectory_policy_tokens=length + 1,
        caption_logprobs=-rng.random(ct), caption_raw_logprobs=-rng.random(ct),
        trajectory_logprobs=-rng.random(tt), trajectory_raw_logprobs=-rng.random(tt),
    )
    fields.update(overrides)
    return TrajectoryRecord(**fields)


def question_records(qid, *, K=2, N=2, seed=0):
    return [make_record(qid, k, n, reward=float((k + n) % 2 == 0), length=4 + 2 * k + n, seed=seed + 10 * k + n)
            for k in range(K) for n in range(N)]


# ------------------------------------------------------------------------------------- records
def test_encode_decode_is_exact():
    special = np.array([np.nan, -0.0, -np.inf, 1e-45, -3.4e38], dtype=np.float32)
    r = make_record(
        question="图中的角 ABC 是多少度？ 🙂", caption="un café \u00e9\u0301 \ud800 lone surrogate",
        choices=["A. 30°", "B. 60°"], extracted_answer=None, caption_reward=float("nan"),
        trajectory_tokens=5, trajectory_logprobs=special, trajectory_raw_logprobs=special[::-1],
    )
    assert r.choices == ("A. 30°", "B. 60°")
    out = decode(encode(r))
    assert out == r
    assert out.choices == ("A. 30°", "B. 60°") and out.extracted_answer is None
    for name in ("caption_logprobs", "caption_raw_logprobs", "trajectory_logprobs", "trajectory_raw_logprobs"):
        a, b = getattr(r, name), getattr(out, name)
        assert b.dtype == np.float32 and a.tobytes() == b.tobytes()
        assert not b.flags.writeable
    plain = make_record()
    assert decode(encode(plain)).choices is None
    assert record_key(out) == ("q0", 0, 0)


def test_corrupt_or_unknown_payload_raises():
    payload = encode(make_record())
    flipped = bytearray(payload)
    flipped[-3] ^= 0x10
    with pytest.raises(RecordFormatError, match="CRC"):
        decode(bytes(flipped))
    with pytest.raises(RecordFormatError):
        decode(payload[:-4])
    with pytest.raises(RecordFormatError, match="too short"):
        decode(payload[:7])
    with pytest.raises(RecordFormatError, match="magic"):
        decode(b"XXXX" + payload[4:])
    future = payload[:4] + struct.pack("<H", 99) + payload[6:]
    with pytest.raises(RecordFormatError, match="version 99"):
        decode(future)


def test_record_validates_array_lengths():
    with pytest.raises(ValueError, match="caption_logprobs"):
        make_record(caption_tokens=7)


# ------------------------------------------------------------------------------------- shards
def test_write_and_read_shards(tmp_path):
    store = TrajectoryStore(tmp_path)
    shards = {3: question_records("a") + question_records("b", seed=5), 1: question_records("c")}
    for sid, recs in shards.items():
        marker = store.write_shard(sid, recs, {"alpha": 0.75})
        assert marker["num_records"] == len(recs) and marker["meta"] == {"alpha": 0.75}
    assert store.finished_shards() == {1, 3}
    assert list(store.iter_records()) == shards[1] + shards[3]
    assert list(store.iter_records([3])) == shards[3]
    store.verify_shard(3)
    assert store.marker(3)["question_ids"] == ["a", "b"]
    assert [os.path.basename(p) for p in store.paths()] == ["shard-00001.array_record", "shard-00003.array_record"]


def test_killed_shard_is_cleaned_up_and_not_listed(tmp_path):
    store = TrajectoryStore(tmp_path, process_index=0, process_count=2)
    store.write_shard(0, question_records("a"))
    shard_dir = tmp_path / "shards"
    data = (shard_dir / "shard-00000.array_record").read_bytes()
    # Host 0 was killed while writing shard 2: one temp file, one data file renamed but no marker.
    (shard_dir / ".shard-00002.array_record.tmp.p0.4242.deadbeef").write_bytes(data[:100])
    (shard_dir / "shard-00002.array_record").write_bytes(data)
    # Host 1 is writing shard 1 right now: its files must survive host 0's cleanup.
    (shard_dir / ".shard-00001.array_record.tmp.p1.77.cafe0001").write_bytes(b"partial")
    (shard_dir / "shard-00001.array_record").write_bytes(data)
    assert store.finished_shards() == {0}

    TrajectoryStore(tmp_path, process_index=0, process_count=2)  # reopen: cleanup runs
    names = sorted(p.name for p in shard_dir.iterdir())
    assert names == [".shard-00001.array_record.tmp.p1.77.cafe0001", "shard-00000.array_record",
                     "shard-00000.json", "shard-00001.array_record"]
    removed = TrajectoryStore(tmp_path, clean_on_open=False).cleanup(all_processes=True)
    assert len(removed) == 2
    assert TrajectoryStore(tmp_path).finished_shards() == {0}

    # A marker whose data file was replaced no longer counts as finished.
    (shard_dir / "shard-00000.array_record").write_bytes(data + b"x")
    assert store.finished_shards() == set()


def test_finished_shard_is_not_written_twice(tmp_path):
    store = TrajectoryStore(tmp_path)
    store.write_shard(0, question_records("a"))
    with pytest.raises(ShardExistsError):
        store.write_shard(0, question_records("a"))
    with pytest.raises(ValueError, match="twice"):
        store.write_shard(1, question_records("b") * 2)
    replacement = question_records("a", seed=99)
    store.write_shard(0, replacement, overwrite=True)
    assert list(store.iter_records()) == replacement
    assert not [p for p in (tmp_path / "shards").iterdir() if p.name.startswith(".")]


def test_manifest_from_two_hosts(tmp_path):
    hosts = [TrajectoryStore(tmp_path, process_index=i, process_count=2) for i in range(2)]
    questions = [f"q{i}" for i in range(12)]
    by_shard = {}
    for q in questions:
        by_shard.setdefault(shard_of(q, 4), []).append(q)
    for i, host in enumerate(hosts):
        for sid in shards_for_host(by_shard, i, 2):
            host.write_shard(sid, [r for q in by_shard[sid] for r in question_records(q, K=1, N=2)])
        host.write_manifest()  # both hosts rewrite the manifest; the later one sees everything
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["num_shards"] == len(by_shard)
    assert on_disk["num_records"] == 2 * len(questions)
    assert on_disk["num_questions"] == len(questions)
    assert on_disk["duplicate_question_ids"] == []
    assert [s["shard_id"] for s in on_disk["shards"]] == sorted(by_shard)
    assert {s["shard_id"]: s["process_index"] for s in on_disk["shards"]} == {s: s % 2 for s in by_shard}
    num_questions = {s["shard_id"]: s["num_questions"] for s in on_disk["shards"]}
    assert num_questions == {s: len(q) for s, q in by_shard.items()}


def test_grain_map_dataset_returns_the_records(tmp_path):
    store = TrajectoryStore(tmp_path)
    store.write_shard(0, question_records("a"))
    store.write_shard(1, [])  # a shard whose questions were all skipped is still finished
    store.write_shard(2, question_records("b"))
    ds = grain.MapDataset.source(store.data_source()).map(DecodeRecord())
    assert len(ds) == 8
    assert [ds[i] for i in range(len(ds))] == list(store.iter_records())
    assert list(ds.shuffle(seed=1))[0] in list(store.iter_records())


def test_host_split_is_disjoint_and_covering():
    ids = list(range(37))
    for count in (1, 2, 3, 8):
        parts = [shards_for_host(ids, i, count) for i in range(count)]
        assert sorted(s for p in parts for s in p) == ids
        assert parts == [shards_for_host(reversed(ids), i, count) for i in range(count)]
    with pytest.raises(ValueError):
        shards_for_host(ids, 2, 2)


def test_shard_of_is_stable_across_processes():
    ids = ["q0", "geo/17", "图-3", "x" * 200]
    here = [shard_of(q, 64) for q in ids]
    code = ("import json, sys; from sophia_jax.data.trajectory_store import shard_of; "
            "print(json.dumps([shard_of(q, 64) for q in json.loads(sys.argv[1])]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(ids)], env=env, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == here
    assert all(0 <= s < 64 for s in here)


def test_selection_index_round_trip(tmp_path):
    store = TrajectoryStore(tmp_path)
    records = {0: question_records("a", K=2, N=4), 1: question_records("b", K=2, N=4, seed=7)}
    for sid, recs in records.items():
        store.write_shard(sid, recs)
    rows = list(store.iter_index())
    assert [(r.question_id, r.caption_index, r.trajectory_index) for r in rows] == \
        [record_key(r) for r in store.iter_records()]

    chosen = sorted(selection.select(rows, alpha=0.25, keep=1))
    assert len(chosen) == 2  # every caption scores 0.5: one shortest correct trajectory per question
    keys = store.locate(chosen)
    store.write_selection("alpha0.25-keep1", keys, {"alpha": 0.25, "keep": 1})
    sel = store.read_selection("alpha0.25-keep1")
    assert sel.keys == tuple(keys) and sel.meta == {"alpha": 0.25, "keep": 1}
    assert store.selections() == ["alpha0.25-keep1"]

    source = pickle.loads(pickle.dumps(store.data_source(selection="alpha0.25-keep1")))  # as Grain workers get it
    ds = grain.MapDataset.source(source).map(DecodeRecord())
    assert [record_key(r) for r in ds] == chosen

    with pytest.raises(FileExistsError):
        store.write_selection("alpha0.25-keep1", keys)
    with pytest.raises(ValueError):
        store.write_selection("../escape", keys)
    with pytest.raises(ValueError, match="no record"):
        store.write_selection("bad", [(0, 99)])
    with pytest.raises(StoreError):
        store.read_selection("missing")

    store.write_shard(keys[0][0], records[keys[0][0]][::-1], overwrite=True)
    with pytest.raises(StaleSelectionError):
        store.read_selection("alpha0.25-keep1")


@pytest.mark.parametrize("failing", ["replace", "rename", "unlink"])
def test_overwrite_interrupted_at_every_step_leaves_old_new_or_unfinished(tmp_path, monkeypatch, failing):
    # Old and new records have the same byte size, so only the marker/data pairing can tell them apart.
    old = [make_record("a", 0, n, trajectory="old text", seed=n) for n in range(3)]
    new = [make_record("a", 0, n, trajectory="new text", seed=10 + n) for n in range(3)]
    assert [len(encode(r)) for r in old] == [len(encode(r)) for r in new]
    real = getattr(os, failing)
    outcomes = set()
    for step in range(10):
        root = tmp_path / f"{failing}-{step}"
        TrajectoryStore(root).write_shard(0, old)
        calls = []

        def flaky(*args, **kwargs):
            calls.append(args)
            if len(calls) == step + 1:
                raise OSError(f"simulated crash at {failing} call {step}")
            return real(*args, **kwargs)

        monkeypatch.setattr(os, failing, flaky)
        try:
            TrajectoryStore(root, clean_on_open=False).write_shard(0, new, overwrite=True)
            crashed = False
        except OSError:
            crashed = True
        finally:
            monkeypatch.setattr(os, failing, real)
        reopened = TrajectoryStore(root)  # what the next run sees, after its cleanup
        if 0 in reopened.finished_shards():
            reopened.verify_shard(0)
            got = list(reopened.iter_records())
            assert got in (old, new), f"{failing} #{step}: a finished shard with mixed records"
            outcomes.add("old" if got == old else "new")
        else:
            outcomes.add("unfinished")
        if not crashed:
            break
    assert crashed is False, "the overwrite never ran to completion"
    assert "new" in outcomes


def test_overwrite_is_seen_even_where_mtime_is_coarse(tmp_path):
    # Same-size records and a marker whose mtime equals the old one (1-second or coarser clocks:
    # network and FUSE file systems): the open store must still see the new marker, not its cache.
    old = [make_record("a", 0, n, trajectory="old text", seed=n) for n in range(2)]
    new = [make_record("a", 0, n, trajectory="new text", seed=10 + n) for n in range(2)]
    store = TrajectoryStore(tmp_path)
    store.write_shard(0, old)
    before = store.marker(0)
    st = store.marker_path(0).stat()
    store.write_shard(0, new, overwrite=True)
    os.utime(store.marker_path(0), ns=(st.st_atime_ns, st.st_mtime_ns))
    reader = TrajectoryStore(tmp_path, clean_on_open=False)
    assert reader.marker(0)["sha256"] != before["sha256"]
    assert store.marker(0)["sha256"] == reader.marker(0)["sha256"]
    store.verify_shard(0)
    assert list(store.iter_records()) == new
