"""jax.distributed for multi-host stages: the plan from config/environment, and a real two-process
``sophia-jax generate`` over 127.0.0.1 that must split the shards and equal a one-process run."""

import json
import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from sophia_jax import distributed
from sophia_jax.configs.loading import load
from sophia_jax.data.trajectory_store import TrajectoryStore
from sophia_jax.sophia import behaviour, toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def section(**kw):
    base = {"mode": "auto", "coordinator_address": "", "num_processes": -1, "process_id": -1}
    return ml_collections.ConfigDict({**base, **kw})


def test_plan_one_process_is_a_noop():
    assert distributed.plan(section(), environ={}).kind == "none"
    assert distributed.plan(section(coordinator_address="h:1", num_processes=1, process_id=0), environ={}).kind == "none"
    assert distributed.plan(section(mode="off"), environ={distributed.ENV_ADDRESS: "h:1"}).kind == "none"


def test_plan_config_wins_over_environment():
    env = {distributed.ENV_ADDRESS: "envhost:9", distributed.ENV_COUNT: "4", distributed.ENV_ID: "3"}
    p = distributed.plan(section(coordinator_address="cfg:8476", num_processes=2, process_id=1), environ=env)
    assert (p.kind, p.coordinator_address, p.num_processes, p.process_id) == ("explicit", "cfg:8476", 2, 1)
    p = distributed.plan(section(), environ=env)
    assert (p.kind, p.coordinator_address, p.num_processes, p.process_id) == ("explicit", "envhost:9", 4, 3)


def test_plan_tpu_vm_uses_jax_detection():
    p = distributed.plan(section(), environ={"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"})
    assert (p.kind, p.coordinator_address, p.num_processes) == ("tpu", None, None)
    # a pinned address on a TPU VM leaves count and id to JAX's TPU detection
    p = distributed.plan(section(), environ={"TPU_WORKER_HOSTNAMES": "w0,w1", distributed.ENV_ADDRESS: "10.0.0.2:8476"})
    assert (p.kind, p.coordinator_address, p.num_processes, p.process_id) == ("explicit", "10.0.0.2:8476", None, None)
    assert distributed.plan(section(), environ={"TPU_WORKER_HOSTNAMES": "localhost"}).kind == "none"


@pytest.mark.parametrize("kw, env, needle", [
    ({"mode": "everywhere"}, {}, "distributed.mode"),
    ({"coordinator_address": "nohostport", "num_processes": 2, "process_id": 0}, {}, "host:port"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {}, "process_id 2"),
    ({}, {distributed.ENV_ADDRESS: "h:1", distributed.ENV_COUNT: "two"}, "SOPHIA_COORDINATOR_ADDRESS"),
])
def test_plan_rejects_bad_settings_naming_the_source(kw, env, needle):
    with pytest.raises(distributed.DistributedConfigError, match=needle):
        distributed.plan(section(**kw), environ=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot(store):
    """Every record as plain data keyed by (question, caption, trajectory); a repeated key fails."""
    out = {}
    for r in store.iter_records():
        key = (r.question_id, r.caption_index, r.trajectory_index)
        assert key not in out, f"record {key} stored twice"
        out[key] = (r.caption, r.trajectory, r.outcome_reward, r.caption_reward, r.selected,
                    r.caption_logprobs, r.trajectory_raw_logprobs)
    return out


def _assert_same_records(a, b):
    """Text, rewards and selection exactly; log-probs to float32 rounding, since each process here
    shards the model over its 4 local devices and the in-process reference over this pytest's own
    devices, which changes reduction order (seen: last-ULP differences)."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][:5] == b[key][:5], key
        for x, y in zip(a[key][5:], b[key][5:]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=str(key))


def test_two_processes_split_the_shards_and_equal_one_process(tmp_path):
    world = toy.build(str(tmp_path / "world"), num_questions=6)
    values = {
        "dataset.path": world.questions, "policy.checkpoint": world.policy, "reasoner.checkpoint": world.reasoner,
        "num_shards": 6, "policy.sampling.n": 2, "reasoner.sampling.n": 2, "policy.sampling.max_new_tokens": 6,
        "reasoner.sampling.max_new_tokens": 8, "verifier.workers": 1, "sampler.progress": False,
    }
    overrides = [f"--config.{k}={v}" for k, v in values.items()]
    two = str(tmp_path / "two")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4",
               **{distributed.ENV_ADDRESS: f"127.0.0.1:{_free_port()}", distributed.ENV_COUNT: "2"})
    procs = [subprocess.Popen([sys.executable, "-m", "sophia_jax.cli", "generate", "--config", "generate:runlocal",
                               *overrides, f"--config.output_dir={two}"],
                              env={**env, distributed.ENV_ID: str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"

    reports = [json.load(open(os.path.join(two, f"report-{i:03d}.json"))) for i in range(2)]
    written = [r["shards"]["written"] for r in reports]
    store = TrajectoryStore(two)
    total = len(store.finished_shards())
    assert all(w > 0 for w in written) and sum(written) == total, (written, total)  # none done twice, none skipped

    one = str(tmp_path / "one")
    behaviour.generate(load("generate:runlocal", [*overrides, f"--config.output_dir={one}"]))
    reference = TrajectoryStore(one)
    assert store.finished_shards() == reference.finished_shards()
    _assert_same_records(_snapshot(store), _snapshot(reference))
