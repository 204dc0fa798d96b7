"""``sophia-jax eval`` end to end: a tiny random InternVL on MathVista (parquet) and MV-MATH (multi-image JSON)
files, the tables against a hand computation, bad records in the report, and a killed run resumed to the same
table."""

import collections
import json
import os

import pytest

import layouts
from sophia_jax.configs.loading import load
from sophia_jax.errors import UserError
from sophia_jax.evaluation import job
from sophia_jax.evaluation.commands import eval_main
from sophia_jax.evaluation.metrics import pass_at_k
from sophia_jax.sophia import toy

K = 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-world")
    mathvista, archive = layouts.mathvista(str(root))
    mv_math, images = layouts.mv_math(str(root))
    policy = toy.write_policy(str(root / "policy"), words=layouts.POLICY_WORDS)
    return {"policy": policy, "benchmarks": f"mathvista={mathvista},mv_math={mv_math}",
            "image_roots": f"mathvista={archive},mv_math={images}"}


def overrides(world, output_dir, **extra):
    values = {"model": world["policy"], "benchmarks": world["benchmarks"], "image_roots": world["image_roots"],
              "output_dir": output_dir, "samples": K, "chunk": 4, "progress": False,
              "sampling.max_new_tokens": 6, **extra}
    return [f"--config.{k}={v}" for k, v in values.items()]


def lines(output_dir):
    with open(os.path.join(output_dir, "items", "items-p000.jsonl")) as f:
        return [json.loads(line) for line in f]


def results(output_dir):
    with open(os.path.join(output_dir, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def full(world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    assert eval_main(["--config", "eval:runlocal", *overrides(world, out)]) == 0
    return out


def test_items_table_and_report(full, capsys):
    rows = lines(full)
    judged = [r for r in rows if "skipped" not in r]
    assert {(r["benchmark"], r["id"]) for r in judged} == {("mathvista", p) for p in "1234"} | {
        ("mv_math", p) for p in "123"}
    assert [(r["benchmark"], r["id"], r["skipped"]) for r in rows if "skipped" in r] == [("mv_math", "4", "bad_image")]
    for r in judged:
        assert r["k"] == K and len(r["samples"]) == K and r["num_correct"] == sum(s["correct"] for s in r["samples"])
        assert {"output", "extracted", "correct", "reason"} <= set(r["samples"][0]) and r["prompt"]
    mv = {r["id"]: r for r in judged if r["benchmark"] == "mv_math"}
    assert mv["2"]["prompt"].startswith("Image-1: <image>\nImage-2: <image>\nImage-3: <image>\n")

    table = results(full)
    for name in ("mathvista", "mv_math"):
        mine = [r for r in judged if r["benchmark"] == name]
        entry = table["benchmarks"][name]
        assert entry["items"] == len(mine)
        assert entry["pass@1"] == round(100 * sum(r["num_correct"] / K for r in mine) / len(mine), 2)
        assert entry[f"pass@{K}"] == round(100 * sum(r["num_correct"] > 0 for r in mine) / len(mine), 2)
        by_cat = collections.defaultdict(list)
        for r in mine:
            by_cat[r["category"]].append(r)
        assert {c: v["items"] for c, v in entry["categories"].items()} == {c: len(v) for c, v in by_cat.items()}
        for c, v in by_cat.items():
            expected = 100 * sum(pass_at_k(K, r["num_correct"], 1) for r in v) / len(v)
            assert entry["categories"][c]["pass@1"] == round(expected, 2)
    assert table["benchmarks"]["mathvista"]["skipped"] == {"unknown_answer_type": 1}
    assert table["benchmarks"]["mv_math"]["skipped"] == {"unknown_answer_type": 1, "bad_image": 1}
    assert table["average"]["pass@1"] == round(
        (table["benchmarks"]["mathvista"]["pass@1"] + table["benchmarks"]["mv_math"]["pass@1"]) / 2, 2)

    with open(os.path.join(full, "report.json")) as f:
        report = json.load(f)
    listed = {(s["benchmark"], s["id"], s["reason"]) for s in report["skipped"]}
    assert listed == {("mathvista", "5", "unknown_answer_type"), ("mv_math", "5", "unknown_answer_type"),
                      ("mv_math", "4", "bad_image")}

    with open(os.path.join(full, "results.md")) as f:
        md = f.read().splitlines()
    assert md[2] == f"| Benchmark | items | skipped | pass@1 | pass@{K} |"
    mv_row = next(line for line in md if line.startswith("| MV-MATH |"))
    assert mv_row == (f"| MV-MATH | 3 | 2 | {table['benchmarks']['mv_math']['pass@1']:.2f} | "
                      f"{table['benchmarks']['mv_math'][f'pass@{K}']:.2f} |")
    assert any(line.startswith("| **Average** |") for line in md) and "### MathVista by category" in md


def test_killed_run_resumes_to_the_same_table(world, full, tmp_path, monkeypatch):
    out = str(tmp_path / "resumed")
    real = job.evaluate
    chunks = []

    def killed_after_one_chunk(*args, on_chunk, **kwargs):
        def once(chunk):
            on_chunk(chunk)
            chunks.append(len(chunk))
            raise KeyboardInterrupt("killed")
        return real(*args, on_chunk=once, **kwargs)

    loaded = []  # both runs sample with the same weights: load them once

    def load_once(cfg, mesh, real_load=job._load_models):
        loaded[:] = loaded or [real_load(cfg, mesh)]
        return loaded[0]

    monkeypatch.setattr(job, "_load_models", load_once)
    monkeypatch.setattr(job, "evaluate", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        job.run(load("eval:runlocal", overrides(world, out)))
    assert len(lines(out)) == chunks[0] == 4
    with open(os.path.join(out, "items", "items-p000.jsonl"), "a") as f:
        f.write('{"id": "3", "benchmark": "mathvista", "sam')  # what a kill during a write leaves
    monkeypatch.setattr(job, "evaluate", real)
    job.run(load("eval:runlocal", overrides(world, out)))
    assert results(out) == results(full)
    key = lambda r: (r["benchmark"], r["id"])  # noqa: E731
    assert sorted(lines(out), key=key) == sorted(lines(full), key=key)


def test_rerun_of_a_finished_run_loads_no_model_and_other_settings_are_refused(world, full, monkeypatch):
    before = results(full)
    monkeypatch.setattr(job, "_load_models", lambda *a: pytest.fail("a finished run must not load models"))
    job.run(load("eval:runlocal", overrides(world, full)))
    assert results(full) == before
    with pytest.raises(UserError, match="samples"):
        job.run(load("eval:runlocal", overrides(world, full, samples=3)))


def test_two_processes_split_the_items_and_write_the_same_table(world, full, tmp_path):
    """A real two-process ``sophia-jax eval`` over 127.0.0.1: each host judges its share, process 0 writes the
    table after the barrier, and it equals the one-process table (an item's samples depend on its id only)."""
    import socket
    import subprocess
    import sys

    from sophia_jax import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "two")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               **{distributed.ENV_ADDRESS: f"127.0.0.1:{port}", distributed.ENV_COUNT: "2"})
    mathvista = world["benchmarks"].split(",")[0]  # one benchmark keeps the two fresh processes short
    procs = [subprocess.Popen([sys.executable, "-m", "sophia_jax.cli", "eval", "--config", "eval:runlocal",
                               *overrides(world, out, benchmarks=mathvista)], env={**env, distributed.ENV_ID: str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-3000:]}"
    per_host = [len(lines_of(os.path.join(out, "items", f"items-p{i:03d}.jsonl"))) for i in range(2)]
    expected = [r for r in lines(full) if r["benchmark"] == "mathvista"]
    assert all(n > 0 for n in per_host) and sum(per_host) == len(expected)  # each item once, on one host
    assert results(out)["benchmarks"]["mathvista"] == results(full)["benchmarks"]["mathvista"]


def lines_of(path):
    with open(path) as f:
        return [json.loads(line) for line in f]
