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
