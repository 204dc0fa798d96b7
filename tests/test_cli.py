"""The sophia-jax entry point and the demo command."""

from sophia_jax import cli


def test_forward_runs_on_a_mesh(capsys):
    assert cli.main(["forward", "--mesh", "2,2,2", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "logits (3, 64, 512) float32, finite: True" in out
    assert "'data': 2, 'fsdp': 2, 'tensor': 2" in out


def test_unknown_command_lists_the_known_ones(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "demo" in capsys.readouterr().err


def test_demo_runs_the_behaviour_model_end_to_end(tmp_path, capsys):
    """The README's main command: toy world -> sophia-jax generate -> select."""
    assert cli.main(["demo", "--dir", str(tmp_path), "--questions", "3"]) == 0
    out = capsys.readouterr().out
    assert "questions: 5 read, 3 processed, 2 skipped {'bad_image': 2}" in out
    assert "selection 'alpha0-keep2' written" in out
    assert (tmp_path / "store" / "manifest.json").exists()
