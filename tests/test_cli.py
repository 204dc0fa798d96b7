"""The sophia-jax entry point: every command's shape and the one error contract."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from sophia_jax import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_forward_runs_on_a_mesh(capsys):
    assert cli.main(["forward", "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                     "--config.steps=1"]) == 0
    out = capsys.readouterr().out
    assert "logits (3, 64, 512) float32, finite: True" in out
    assert "'data': 2, 'fsdp': 2, 'tensor': 2" in out


def test_unknown_command_lists_the_known_ones(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "demo" in err and err.count("\n") == 1


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sophia-jax 0.")


def test_demo_runs_every_stage_and_train_reads_its_store(tmp_path, capsys):
    """The README's main command, shrunken (``demo:quick``, its own sizes): base pass@1 -> generate ->
    selections -> four trainings -> pass@1 each -> table, JSON, PNG. Every figure of the table is
    recomputed here from what the run left on disk, and every setting must have trained, for the
    configured steps, on its own non-empty selection. Then the training contract: ``train:runlocal``
    on ``D/store`` finds the policy by itself, trains on the store's selection and writes ``O/final``."""
    import json

    from PIL import Image

    from sophia_jax.configs.demo import SETTINGS, get_config
    from sophia_jax.data.trajectory_store import TrajectoryStore
    from sophia_jax.sophia import selection

    cfg = get_config("quick")
    assert cli.main(["demo", "--config", "demo:quick", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(f"] {i}/6 " in out for i in range(1, 7))
    q = cfg.questions
    assert f"questions: {q + 2} read, {q} processed, 2 skipped {{'bad_image': 2}}" in out
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["base", *SETTINGS]
    for name, row in rows.items():  # pass@1 is the mean verdict of that policy's held-out samples
        verdicts = [json.loads(line)["correct"] for line in open(tmp_path / "results" / f"heldout-{name}.jsonl")]
        assert len(verdicts) == cfg.heldout * cfg.eval.samples and row["pass_at_1"] == sum(verdicts) / len(verdicts)
    store = TrajectoryStore(tmp_path / "store", clean_on_open=False)
    index = list(store.iter_index())
    assert len(index) == q * cfg.captions * cfg.trajectories
    chosen = {
        "random": selection.select_random(index, keep=cfg.keep, seed=cfg.seed),
        "no_caption_reward": selection.select(index, alpha=0.0, keep=cfg.keep),
        "no_shortest": selection.select(index, alpha=cfg.alpha, keep=cfg.keep, shortest=False, seed=cfg.seed),
        "sophia": selection.select(index, alpha=cfg.alpha, keep=cfg.keep),
    }
    assert len(chosen["random"]) == q and sorted(store.selections()) == ["no_caption_reward", "no_shortest", "random"]
    for name in SETTINGS:
        wanted = {f"{qid}/{c}/{t}" for qid, c, t in chosen[name]}
        assert wanted and rows[name]["trajectories"] == len(wanted), name  # an empty selection trains nothing
        steps = [json.loads(line) for line in open(tmp_path / "runs" / name / "examples-0.jsonl")]
        assert [s["step"] for s in steps] == list(range(1, cfg.train.steps + 1)), name
        trained = {r for s in steps for r in s["records"]}
        assert trained and trained <= wanted, name  # trained on that setting's selection and nothing else
        if name != "random":  # the others keep only correct trajectories
            assert rows[name]["kept_correct"] == 1.0, name
    table = (tmp_path / "results" / "table.md").read_text()
    assert "+ SOPHIA w/o CR" in table and f"{100 * rows['base']['pass_at_1']:.1f}%" in table
    assert Image.open(tmp_path / "results" / "demo.png").size == (1100, 440)

    run = tmp_path / "train"
    assert cli.main(["train", "--config", "train:runlocal", f"--config.data.store={tmp_path / 'store'}",
                     f"--config.output_dir={run}", "--config.log.progress=False", "--config.train.steps=4"]) == 0
    assert "final model:" in capsys.readouterr().out
    from sophia_jax import checkpoint

    assert type(checkpoint.load(run / "final")).__name__ == "InternVL"
    saved = {int(p) for p in os.listdir(run / "checkpoints") if p.isdigit()}
    assert 2 in saved and max(saved) == 4  # every checkpoint.every (2) steps, and at the last
    own = {f"{qid}/{c}/{t}" for qid, c, t in chosen["sophia"]}  # no data.selection: the store's own
    assert {r for line in open(run / "examples-0.jsonl") for r in json.loads(line)["records"]} <= own


def test_readme_main_command_is_what_ci_runs():
    spec = importlib.util.spec_from_file_location("readme_command", ROOT / ".ci" / "readme_command.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.readme_command("main") == "pip install -e . && sophia-jax demo"
    assert module.readme_command("test").startswith('pip install -e ".[test,tpu]"')
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_command.py main" in ci and 'bash -euo pipefail -c "$main_cmd"' in ci


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_and_show_config(command, capsys):
    assert cli.main([command, "--help"]) == 0
    assert f"sophia-jax {command} --show-config" in " ".join(capsys.readouterr().out.split())
    assert cli.main([command, "--show-config"]) == 0
    out = capsys.readouterr().out
    default = {"aot": "train"}.get(command, command)  # aot compiles a training stage's step
    assert out.startswith(f"# sophia-jax {command} --config {default}") and "  # " in out


# Per command: (misspelt field, missing file, bad value), each with what the one error line must name.
CASES = {
    "demo": [("--config.questons=3", "questons"), ("--config=missing.py", "missing.py"),
             ("--config.questions=many", "questions")],
    "forward": [("--config.sed=3", "sed"), ("--config=missing.py", "missing.py"), ("--config.dtype=int8", "dtype")],
    "generate": [("--config.selection.alpah=0.5", "alpah"), ("--config=missing.py", "missing.py"),
                 ("--config.num_shards=many", "num_shards")],
    "select": [("--config.stor=x", "stor"), ("--config.store=/nonexistent/store", "/nonexistent/store"),
               ("--config.selection.keep=0", "selection.keep")],
    "convert": [("--config.hfdir=x", "hfdir"), ("--config.hf_dir=/nonexistent/hf", "/nonexistent/hf"),
                ("--config.dtype=int8", "dtype")],
    "train": [("--config.train.setps=3", "setps"), ("--config.data.store=/nonexistent/store", "/nonexistent/store"),
              ("--config.loss.normalization=median", "normalization")],
    "warmup": [("--config.optimizer.peak_lr=1", "peak_lr"), ("--config.model.checkpoint=/nonexistent/ckpt",
               "/nonexistent/ckpt"), ("--config.train.trainable=vision", "trainable")],
    "aot": [("--config.aot.topolgy=x", "topolgy"), ("--config=missing.py", "missing.py"),
            ("--config.aot.topology=v9x:2x2", "v9x")],
    "export": [("--config.chekpoint=x", "chekpoint"), ("--config.checkpoint=/nonexistent/ckpt", "/nonexistent/ckpt"),
               ("--config.max_shard_gb=0", "max_shard_gb")],
    "eval": [("--config.sampling.top_pp=1", "top_pp"), ("--config.benchmarks=mathvista=/nonexistent/mv.parquet",
             "/nonexistent/mv.parquet"), ("--config.benchmarks=mathvist=/x", "mathvist")],
}
EXTRA = {"convert": ["--config.out=/tmp/never-written"], "export": ["--config.out=/tmp/never-written"],
         "train": ["--config.output_dir=/tmp/never-written"], "warmup": ["--config.output_dir=/tmp/never-written"],
         "eval": ["--config.model=/nonexistent/ckpt", "--config.output_dir=/tmp/never-written"]}


@pytest.mark.parametrize("command,arg,names", [(c, a, n) for c, cases in CASES.items() for a, n in cases])
def test_user_errors_are_one_line_and_exit_2(command, arg, names, capsys):
    argv = [command, *EXTRA.get(command, []), arg]
    required = {("export", "max_shard_gb"): "--config.checkpoint=.", ("select", "selection.keep"): "--config.store=.",
                ("convert", "dtype"): "--config.hf_dir=/nonexistent/hf"}  # the value is checked before the path
    if (command, names) in required:
        argv.insert(1, required[command, names])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sophia-jax {command}: error: ") and err.count("\n") == 1, err
    assert names in err and "Traceback" not in err


@pytest.mark.parametrize("command", list(CASES))
def test_real_process_stderr(command):
    """The installed entry point's real stderr: one line without --debug, the traceback with it."""
    arg, names = CASES[command][0]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("SOPHIA_JAX_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "sophia_jax.cli", command, arg], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"sophia-jax {command}: error: ") and names in lines[0]
    if command == "forward":
        debug = subprocess.run([sys.executable, "-m", "sophia_jax.cli", command, arg, "--debug"], env=env,
                               capture_output=True, text=True, timeout=120)
        assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_argparse_errors_are_user_errors(capsys):
    assert cli.main(["select", "--frob"]) == 2
    err = capsys.readouterr().err
    assert err == "sophia-jax select: error: unrecognized arguments: --frob (see --help)\n"
