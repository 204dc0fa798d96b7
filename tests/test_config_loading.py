"""--config file[:variant] loading and --config.a.b=value overrides."""

import pytest

from sophia_jax.configs.loading import ConfigFileError, load


def test_builtin_by_name_with_variant_and_overrides():
    cfg = load("generate:runlocal", ["--config.selection.alpha=0.5", "--config.num_shards=3",
                                     "--config.output_dir=123", "--config.sampler.buckets=[32, 64]",
                                     "--config.verifier.timeout=2"])
    assert cfg.selection.alpha == 0.5 and cfg.num_shards == 3
    assert cfg.output_dir == "123"  # stays a string where a string is expected
    assert cfg.sampler.buckets == (32, 64)
    assert cfg.verifier.timeout == 2.0 and isinstance(cfg.verifier.timeout, float)
    assert cfg.policy.sampling.n == 2  # runlocal
    with pytest.raises(AttributeError):
        cfg.new_field = 1  # locked


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigFileError, match="unknown field 'selection.alpah'"):
        load("generate", ["--config.selection.alpah=0.5"])
    with pytest.raises(ConfigFileError, match="no config section 'nope'"):
        load("generate", ["--config.nope.x=1"])
    with pytest.raises(ConfigFileError, match="must look like"):
        load("generate", ["--config.num_shards"])
    with pytest.raises(ConfigFileError, match="num_shards"):
        load("generate", ["--config.num_shards=many"])
    with pytest.raises(ConfigFileError, match="not found"):
        load(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigFileError, match="no get_config"):
        load(str(bad))
    with pytest.raises(ConfigFileError, match="unknown generate config variant"):
        load("generate:fast")
