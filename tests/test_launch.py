"""launch/ scripts: syntax, shellcheck, and what --dry-run would send to gcloud."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = sorted(f for f in os.listdir(LAUNCH) if f.endswith(".sh"))
BASE = ["--tpu-name", "sophia-v5p", "--zone", "us-east5-a", "--project", "proj"]


def dry(script, *args, tmp_path=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPHIA_")}
    out = subprocess.run(["bash", os.path.join(LAUNCH, script), *BASE, *args, "--dry-run"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck must be installed in CI")
        pytest.skip("shellcheck not installed on this machine (CI installs it)")
    subprocess.run(["shellcheck", "-x", "-P", ROOT, os.path.join(LAUNCH, script)], check=True, cwd=ROOT)


def test_create_plain_and_queued_spot():
    (plain,) = dry("create.sh", "--accelerator", "v5p-64")
    assert plain.startswith("gcloud compute tpus tpu-vm create sophia-v5p") and "--accelerator-type=v5p-64" in plain
    (queued,) = dry("create.sh", "--accelerator", "v6e-32", "--queued", "--spot")
    assert queued.startswith("gcloud compute tpus queued-resources create sophia-v5p")
    assert "--node-id=sophia-v5p" in queued and "--spot" in queued and "--accelerator-type=v6e-32" in queued


def test_create_needs_a_name():
    out = subprocess.run(["bash", os.path.join(LAUNCH, "create.sh"), "--zone", "z", "--dry-run"],
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert out.returncode == 2 and "SOPHIA_TPU_NAME" in out.stderr


def test_setup_installs_the_ref_with_the_tpu_extra_on_all_workers():
    lines = dry("setup.sh", "--ref", "v0.3", "--config", "configs/generate_internvl3_38b_v5p.py")
    assert len(lines) == 2 and all("--worker=all" in line for line in lines)
    lines = [line.replace("\\", "") for line in lines]  # undo printf %q quoting
    assert "git checkout -q v0.3" in lines[0] and ".[tpu]" in lines[0]
    assert lines[1].startswith("gcloud compute tpus tpu-vm scp configs/generate_internvl3_38b_v5p.py")


def test_multihost_stage_is_one_command_for_every_worker_with_a_pinned_coordinator(tmp_path):
    lines = dry("run_stage.sh", "--stage", "generate --config configs/generate_internvl3_38b_v5p.py",
                "--logs", "logs", tmp_path=tmp_path)
    ssh = [line for line in lines if " tpu-vm ssh " in line]
    assert len(ssh) == 1 and "--worker=all" in ssh[0]  # the same command, on all workers, at once
    assert "SOPHIA_COORDINATOR_ADDRESS=WORKER0_IP:8476" in ssh[0]  # not JAX>=0.8.1's default 8482
    assert "sophia-jax generate --config configs/generate_internvl3_38b_v5p.py" in ssh[0].replace("\\", "")
    assert any("describe" in line and "networkEndpoints" in line for line in lines)
    assert any(" tpu-vm scp sophia-v5p:" in line and "--worker=all" in line for line in lines)  # per-worker logs


def test_settings_from_the_environment():
    env = {"PATH": os.environ["PATH"], "SOPHIA_TPU_NAME": "envtpu", "SOPHIA_ZONE": "europe-west4-a",
           "SOPHIA_ACCELERATOR": "v6e-16", "SOPHIA_DRY_RUN": "1"}
    out = subprocess.run(["bash", os.path.join(LAUNCH, "create.sh")], env=env, capture_output=True, text=True, check=True)
    assert "envtpu" in out.stdout and "--zone=europe-west4-a" in out.stdout and "v6e-16" in out.stdout


def test_delete_plain_and_queued():
    assert [line.split()[4] for line in dry("delete.sh")] == ["stop", "delete"]
    (queued,) = dry("delete.sh", "--queued")
    assert queued.startswith("gcloud compute tpus queued-resources delete sophia-v5p")
