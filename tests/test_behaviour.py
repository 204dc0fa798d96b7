"""End to end: the SOPHIA behaviour model on tiny random models and generated images."""

import collections
import os

import numpy as np
import pytest

from sophia_jax.configs.loading import load
from sophia_jax.sophia import behaviour, commands, selection, toy
from sophia_jax.data.trajectory_store import TrajectoryStore

K, N = 2, 3  # captions per image, trajectories per caption


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return toy.build(str(tmp_path_factory.mktemp("world")), num_questions=6)


def overrides(world, output_dir, **changes):
    """Command-line overrides of the runlocal generate config for the toy world."""
    values = {
        "output_dir": output_dir, "dataset.path": world.questions, "policy.checkpoint": world.policy,
        "reasoner.checkpoint": world.reasoner, "num_shards": 6, "policy.sampling.n": K, "reasoner.sampling.n": N,
        "reasoner.sampling.max_new_tokens": 12, "policy.sampling.max_new_tokens": 8, "selection.alpha": 0.3,
        "verifier.workers": 1, "sampler.progress": False, **changes,
    }
    return [f"--config.{k}={v}" for k, v in values.items()]


def config(world, output_dir):
    return load("generate:runlocal", overrides(world, output_dir))


def snapshot(store):
    """Every record as comparable plain data, keyed by (question, caption, trajectory)."""
    out = {}
    for r in store.iter_records():
        key = (r.question_id, r.caption_index, r.trajectory_index)
        assert key not in out, f"duplicate record {key}"
        out[key] = (r.caption, r.trajectory, r.outcome_reward, r.caption_reward, r.selected,
                    r.caption_logprobs.tobytes(), r.trajectory_raw_logprobs.tobytes())
    return out


@pytest.fixture(scope="module")
def full_run(world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    report = behaviour.generate(config(world, out))
    return out, report


def test_store_and_report_are_consistent(full_run):
    out, report = full_run
    store = TrajectoryStore(out)
    records = list(store.iter_records())
    by_question = collections.Counter(r.question_id for r in records)
    assert set(by_question) == {f"toy-{i}" for i in range(6)}
    assert all(count == K * N for count in by_question.values())

    # Caption reward is the mean outcome of its N trajectories; selection follows alpha and Keep-1.
    outcomes = collections.defaultdict(list)
    for r in records:
        assert r.outcome_reward in (0.0, 1.0)
        outcomes[(r.question_id, r.caption_index)].append(r.outcome_reward)
        assert len(r.caption_logprobs) == r.caption_tokens and len(r.trajectory_logprobs) == r.trajectory_tokens
        assert np.all(r.trajectory_raw_logprobs <= 0)
    for r in records:
        assert r.caption_reward == pytest.approx(np.mean(outcomes[(r.question_id, r.caption_index)]))
    expected = selection.select(records, alpha=0.3, keep=1)
    assert {selection.key_of(r) for r in records if r.selected} == expected
    rewards = [r.outcome_reward for r in records]
    assert 0 < sum(rewards) < len(rewards), "the toy reasoner should be right sometimes, not always"

    counts = report.as_dict()["counts"]
    assert counts["trajectories"] == len(records) and counts["trajectories_selected"] == len(expected)
    assert counts["trajectories_correct"] == sum(rewards)
    reasons = {(s["id"], s["reason"]) for s in report.skipped}
    assert reasons == {("toy-missing", "bad_image"), ("toy-broken", "bad_image")}
    assert os.path.exists(os.path.join(out, "report-000.json")) and os.path.exists(os.path.join(out, "manifest.json"))


def test_rerun_skips_finished_shards(world, full_run):
    out, first = full_run
    again = behaviour.generate(config(world, out))
    assert again.shards_written == 0 and again.shards_already_done == first.shards_written


def test_killed_run_resumes_to_the_same_records(world, full_run, tmp_path, monkeypatch):
    out = str(tmp_path / "resumed")
    original = behaviour.BehaviourModel.run_shard
    calls = []

    def dies_on_second_shard(self, shard_id, questions, report):
        calls.append(shard_id)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return original(self, shard_id, questions, report)

    monkeypatch.setattr(behaviour.BehaviourModel, "run_shard", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        behaviour.generate(config(world, out))
    assert len(TrajectoryStore(out).finished_shards()) == 1
    # what a kill during the write of a shard leaves behind
    open(os.path.join(out, "shards", f".shard-{calls[1]:05d}.array_record.tmp.p0.1.ab12"), "wb").close()
    monkeypatch.setattr(behaviour.BehaviourModel, "run_shard", original)
    behaviour.generate(config(world, out))
    assert snapshot(TrajectoryStore(out)) == snapshot(TrajectoryStore(full_run[0]))
    assert not [f for f in os.listdir(os.path.join(out, "shards")) if ".tmp" in f]


def test_select_command_reselects_without_regenerating(full_run, capsys):
    out, _ = full_run
    assert commands.select_main([f"--config.store={out}", "--config.selection.alpha=0.0", "--config.selection.keep=2"]) == 0
    store = TrajectoryStore(out, clean_on_open=False)
    records = list(store.iter_records())
    expected = selection.select(records, alpha=0.0, keep=2)
    chosen = store.read_selection("alpha0-keep2")
    assert len(chosen.keys) == len(expected)
    assert "selected" in capsys.readouterr().out


def test_sigkill_at_an_arbitrary_moment_then_resume(world, full_run, tmp_path):
    """A real kill -9 of `sophia-jax generate` while it writes shards; the rerun completes the
    store with no duplicates, no leftovers, and the same records as an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    reference = full_run[0]
    out = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "sophia_jax.cli", "generate", "--config", "generate:runlocal",
                             *overrides(world, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard_dir = os.path.join(out, "shards")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(shard_dir) and any(f.endswith(".json") for f in os.listdir(shard_dir)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total = len(TrajectoryStore(reference).finished_shards())
    assert len(TrajectoryStore(out, clean_on_open=False).finished_shards()) < total, "killed too late to test"
    behaviour.generate(config(world, out))
    assert snapshot(TrajectoryStore(out)) == snapshot(TrajectoryStore(reference))
    assert not [f for f in os.listdir(shard_dir) if ".tmp" in f]


def test_keep_n_length_is_the_policy_tokenizers_count(world, full_run):
    """Gap (b) of issue 9: the stored Keep-N length, checked against the policy tokenizer itself."""
    import transformers

    policy_tok = transformers.AutoTokenizer.from_pretrained(world.policy, trust_remote_code=False)
    records = list(TrajectoryStore(full_run[0]).iter_records())
    for r in records:
        policy_len = len(policy_tok(r.trajectory, add_special_tokens=False)["input_ids"])
        assert r.trajectory_policy_tokens == policy_len, (r.question_id, r.caption_index, r.trajectory_index)
    # The reasoner's count (its sampled tokens, stop token included) differs for some records, so
    # storing it instead would fail the check above.
    assert any(r.trajectory_tokens != r.trajectory_policy_tokens for r in records)


def test_training_pipeline_reads_the_generated_store(world, full_run):
    """The training data pipeline over what generate wrote: every selected, usable record once."""
    import transformers

    from sophia_jax import checkpoint
    from sophia_jax.configs.train_data import get_data_config
    from sophia_jax.data.training_pipeline import TrainingPipeline

    out = full_run[0]
    tok = transformers.AutoTokenizer.from_pretrained(world.policy, trust_remote_code=False)
    model_config = checkpoint.load(world.policy).config
    cfg = get_data_config(runlocal=True)
    cfg.store = out
    p = TrainingPipeline(cfg, global_batch_rows=2, tokenizer=tok, tokens_per_tile=model_config.tokens_per_tile,
                         image_token_id=model_config.image_token_id, tile_size=model_config.vision.image_size)
    selected = {f"{r.question_id}/{r.caption_index}/{r.trajectory_index}"
                for r in TrajectoryStore(out).iter_records() if r.selected}
    assert selected
    seen = []
    for arrays, meta in p:
        seen += [rid for row in meta for rid, _ in row]
        assert np.array_equal((arrays["input_ids"] == model_config.image_token_id).sum(axis=1),
                              arrays["tile_mask"].sum(axis=1) * model_config.tokens_per_tile)
    skipped = {s["id"] for s in p.report()["skipped"]}
    assert sorted(seen) == sorted(selected - skipped) and len(seen) == p.report()["examples"] > 0
    assert len(seen) + len(skipped) == len(selected)


def test_the_paper_generation_cap_is_an_ordinary_setting(world, full_run, tmp_path):
    """generate's built-in cap (the paper's 32,768 new tokens per sample) on the toy world: samples
    end at their stop tokens, KV use follows what they hold (a cache sized by the cap would hold
    8 rows x 32K tokens), nothing is preempted, and the run takes about as long as with the
    8/12-token caps of the other tests (both are mostly compilation on the toy models)."""
    paper = load("generate")
    cap = paper.reasoner.sampling.max_new_tokens
    assert cap == paper.policy.sampling.max_new_tokens == 32768
    out = str(tmp_path / "paper-cap")
    cfg = load("generate:runlocal", overrides(world, out, **{"reasoner.sampling.max_new_tokens": cap,
                                                               "policy.sampling.max_new_tokens": cap}))
    report = behaviour.generate(cfg)
    records = list(TrajectoryStore(out).iter_records())
    short = full_run[1]
    assert len(records) == short.trajectories
    assert all(r.caption_tokens < cap and r.trajectory_tokens < cap for r in records)
    assert max(r.trajectory_tokens for r in records) > 12, "no sample ran past the short cap; the test shows nothing"
    rows, block = cfg.sampler.batch_size, cfg.sampler.block_size
    for stage, longest in (("captions", max(r.caption_tokens for r in records)),
                           ("reasoning", max(r.trajectory_tokens for r in records))):
        long_run, short_run = report.stages[stage], short.stages[stage]
        assert long_run.kv_preempted == 0 and 0 < short_run.kv_peak_tokens <= long_run.kv_peak_tokens
        # Beyond the short run, each row holds at most its longer sample (+ one block).
        assert long_run.kv_peak_tokens <= short_run.kv_peak_tokens + rows * (longest + block)
    seconds = lambda r: r.stages["captions"].seconds + r.stages["reasoning"].seconds  # noqa: E731
    assert seconds(report) < 4 * seconds(short) + 10
