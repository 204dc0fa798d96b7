"""``sophia-jax train`` end to end on a toy store: checkpoints, kill -9 and resume, final model, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from sophia_jax import checkpoint
from sophia_jax.configs.loading import load
from sophia_jax.data.trajectory_record import TrajectoryRecord
from sophia_jax.data.trajectory_store import TrajectoryStore, shard_of
from sophia_jax.sophia import toy
from sophia_jax.training.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("the", "image", "shows", "a", "red", "square", "and", "blue", "circle", "on", "left", "so", "3", "4", "5", ".")


def _record(qid, image, k, n, text, reward=1.0, answer="3"):
    empty = np.zeros(0, np.float32)
    return TrajectoryRecord(
        question_id=qid, image_ref=image, question="How many squares are in the image?", answer=answer, choices=None,
        caption_index=k, caption="a caption", caption_reward=1.0, trajectory_index=n, trajectory=text,
        outcome_reward=reward, extracted_answer=answer, judge_reason="equal", selected=reward > 0,
        policy_name="toy-policy", reasoner_name="toy-reasoner", caption_tokens=0, trajectory_tokens=0,
        trajectory_policy_tokens=len(text.split()), caption_logprobs=empty, caption_raw_logprobs=empty,
        trajectory_logprobs=empty, trajectory_raw_logprobs=empty,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny policy checkpoint and a finished store of selected trajectories over real images."""
    root = tmp_path_factory.mktemp("toy")
    policy = toy.write_policy(str(root / "policy"))
    questions = toy.write_questions(str(root / "data"), count=6, bad_records=False)
    rng = np.random.default_rng(0)
    store = TrajectoryStore(str(root / "store"))
    by_shard = {}
    with open(questions) as f:
        for line in f:
            q = json.loads(line)
            image = os.path.join(os.path.dirname(questions), q["image"])
            for n in range(2):
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14))))
                by_shard.setdefault(shard_of(q["id"], 2), []).append(_record(q["id"], image, 0, n, text))
    for shard, records in by_shard.items():
        store.write_shard(shard, records)
    store.write_manifest()
    return {"policy": policy, "store": str(root / "store"), "root": root}


def _args(world, out):
    return [f"--config.data.store={world['store']}", f"--config.output_dir={out}",
            f"--config.model.checkpoint={world['policy']}", "--config.log.progress=False"]


def _flat(path):
    from sophia_jax.checkpoint import flat_params

    return {k: np.asarray(v.get_value()) for k, v in flat_params(checkpoint.load(path)).items()}


def _examples(out):
    with open(os.path.join(out, "examples-0.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """One uninterrupted runlocal run, in this process."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return out, train(load("train:runlocal", _args(world, out)))


def test_runlocal_trains_checkpoints_and_writes_a_loadable_final_model(world, reference):
    out, report = reference
    assert report.steps == 8 and not report.preempted and report.examples > 0
    assert (out / "final").is_dir() and checkpoint.is_checkpoint(out / "final")
    steps = sorted(int(p) for p in os.listdir(out / "checkpoints") if p.isdigit())
    assert steps[-1] == 8 and len(steps) <= 3
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [x["step"] for x in lines] == list(range(1, 9))
    assert all(np.isfinite(x["loss"]) for x in lines)
    assert os.listdir(out / "tensorboard")
    saved = json.load(open(out / "train_report.json"))
    assert saved["steps"] == 8 and saved["data"]["skipped_by_reason"] == {}
    # Frozen parts are exactly the policy's; the language model moved.
    before, after = _flat(world["policy"]), _flat(out / "final")
    assert set(before) == set(after)
    for name in before:
        if name.startswith(("vision", "projector")):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert any(not np.array_equal(after[n], before[n]) for n in before if n.startswith("language_model"))


def _cli(args):
    return [sys.executable, "-m", "sophia_jax.cli", "train", "--config", "train:runlocal", *args]


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _finished_checkpoints(out):
    directory = out / "checkpoints"
    return [int(p) for p in os.listdir(directory) if p.isdigit()] if directory.exists() else []


def test_kill_and_resume_ends_bitwise_equal_with_the_same_examples(world, reference, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(_args(world, out)), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _finished_checkpoints(out):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(_finished_checkpoints(out)) < 8

    resumed = subprocess.run(_cli(_args(world, out)), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stdout

    want, got = _flat(reference[0] / "final"), _flat(out / "final")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert _examples(out) == _examples(reference[0])
    seen = [r for line in _examples(out) for r in line["records"]]
    assert len(seen) == sum(len(line["records"]) for line in _examples(reference[0]))


def test_sigterm_saves_and_asks_for_a_rerun(world, tmp_path, capsys):
    """SIGTERM (a preemption notice) -> checkpoint at the next step boundary, exit code 143."""
    from sophia_jax.training.commands import train_main

    out = tmp_path / "term"

    def notice():
        while not (out / "metrics.jsonl").exists() or os.path.getsize(out / "metrics.jsonl") == 0:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=notice, daemon=True).start()
    assert train_main(["--config", "train:runlocal", *_args(world, out)]) == 143
    assert "rerun the same command" in capsys.readouterr().out
    steps = _finished_checkpoints(out)
    assert steps and max(steps) < 8 and not (out / "final").exists()


def test_warmup_is_the_same_trainer_on_vqa_records(world, tmp_path):
    data = tmp_path / "vqa.jsonl"
    with open(data, "w") as f:
        for i in range(4):
            image = str(world["root"] / "data" / "images" / f"shape-{i}.png")
            f.write(json.dumps({"id": f"v{i}", "image": image, "question": "Describe the image.",
                                "chosen": "the image shows a red square on the left ."}) + "\n")
    sources = repr([{"path": str(data), "weight": 1.0, "fields": {"response": "chosen"}}])
    out = tmp_path / "warm"
    report = train(load("warmup:runlocal", [f"--config.data.vqa_sources={sources}", f"--config.output_dir={out}",
                                            f"--config.model.checkpoint={world['policy']}", "--config.log.progress=False"]))
    assert report.steps == 8 and report.data["examples_by_source"] == {f"vqa:{data.name}": report.data["examples"]}
    assert checkpoint.is_checkpoint(out / "final")


def test_resume_onto_another_mesh_shape(world, reference, tmp_path):
    """Checkpoints restore into the new mesh's shardings; the run then continues as before."""
    out = tmp_path / "remeshed"
    shutil.copytree(reference[0] / "checkpoints", out / "checkpoints")
    for step in _finished_checkpoints(out):
        if step > 6:
            shutil.rmtree(out / "checkpoints" / str(step))
    truncated = [line for line in _examples(reference[0]) if line["step"] <= 6]
    with open(out / "examples-0.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in truncated)
    report = train(load("train:runlocal", _args(world, out) + [
        "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]))
    assert report.resumed_from == 6 and report.steps == 8
    want, got = _flat(reference[0] / "final"), _flat(out / "final")
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
    assert _examples(out) == _examples(reference[0])

def test_an_empty_selection_is_one_clear_error(world, tmp_path):
    store = TrajectoryStore(world["store"], clean_on_open=False)
    store.write_selection("nothing", [], overwrite=True)
    result = subprocess.run(_cli(_args(world, tmp_path / "o") + ["--config.data.selection=nothing"]),
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "nothing" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_held_out_eval_every_n_steps_matches_the_eval_core_on_the_final_model(world, tmp_path):
    from sophia_jax.evaluation import evaluate, items_from_questions, summarize
    from sophia_jax.evaluation.job import settings_of
    from sophia_jax.sampling.load import load_sampler

    questions = os.path.join(world["root"], "data", "questions.jsonl")
    out = tmp_path / "with-eval"
    cfg = load("train:runlocal", _args(world, out) + [
        "--config.train.steps=4", "--config.eval.every=2", f"--config.eval.benchmarks=questions={questions}",
        "--config.eval.limit=3", "--config.eval.samples=2", "--config.eval.sampling.max_new_tokens=4"])
    report = train(cfg)
    with open(out / "metrics.jsonl") as f:
        logged = {row["step"]: row for row in map(json.loads, f)}
    assert [s for s, row in logged.items() if "eval/questions/pass@1" in row] == [2, 4]
    assert {"eval/questions/pass@2", "eval/average/pass@1"} <= set(logged[4])
    events = os.listdir(out / "tensorboard")
    assert events and any("tfevents" in e for e in events)

    # What was sampled and logged at the last step is the eval core's on the saved final model.
    policy = load_sampler(report.final, cfg.eval.sampler, dtype=cfg.model.dtype, mesh=None)
    items = items_from_questions(questions, limit=3).items
    results = evaluate(policy, items, settings_of(cfg.eval))
    with open(out / "held_out" / "step-00000004.jsonl") as f:
        assert [json.loads(line) for line in f] == [r.to_json() for r in results]
    with open(out / "held_out" / "step-00000002.jsonl") as f:
        assert [json.loads(line) for line in f] != [r.to_json() for r in results]  # other weights, other outputs
    table = summarize(results, {}, k=2)
    assert logged[4]["eval/questions/pass@1"] == table["benchmarks"]["questions"]["pass@1"]
    assert logged[4]["eval/questions/pass@2"] == table["benchmarks"]["questions"]["pass@2"]
