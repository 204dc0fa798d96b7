"""Bad checkpoints fail with one CheckpointError naming the file and tensor, and leave no output."""

import json
import os
import shutil

import numpy as np
import pytest

import hf_models
from sophia_jax import checkpoint, cli
from sophia_jax.checkpoint import CheckpointError, convert, hf_source, testing
from sophia_jax.checkpoint.safetensors_io import INDEX_FILE, index_directory, read_tensor, write_tensors


@pytest.fixture(scope="module")
def good_dirs(tmp_path_factory):
    """A text-only Qwen2 (one file) and an original-layout InternLM2 InternVL (sharded)."""
    root = tmp_path_factory.mktemp("good")
    hf_models.causal_lm("qwen2").save_pretrained(root / "qwen2")
    model = hf_models.internvl("300m", "llama")
    tensors, config = testing.original_internvl(hf_models.state_dict_numpy(model), model.config.to_dict(), "internlm2")
    testing.write_checkpoint(str(root / "internlm2"), tensors, config, max_shard_bytes=400_000)
    return root


def _copy(good_dirs, name, tmp_path):
    target = tmp_path / name
    shutil.copytree(good_dirs / name, target)
    return target


def _rewrite_tensors(directory, edit):
    tensors = {name: read_tensor(info) for name, info in index_directory(directory).items()}
    edit(tensors)
    for name in os.listdir(directory):
        if name.endswith(".safetensors") or name == INDEX_FILE:
            os.remove(directory / name)
    write_tensors(directory, tensors)


def _edit_config(directory, edit):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _convert_fails(hf_dir, tmp_path, *fragments):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as error:
        checkpoint.convert_hf(hf_dir, out, progress=False)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.")], "temporary output left behind"
    return message


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_missing_tensor(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    _rewrite_tensors(hf, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    _convert_fails(hf, tmp_path, str(hf), "missing tensor", "model.layers.1.mlp.up_proj.weight")


def test_unexpected_tensor(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    _rewrite_tensors(hf, lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros((2, 2), np.float32)}))
    _convert_fails(hf, tmp_path, str(hf / "model.safetensors"), "unexpected tensor", "model.layers.0.mlp.extra.weight")


def test_shape_mismatch(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    _rewrite_tensors(hf, lambda t: t.update({"model.layers.0.mlp.gate_proj.weight": np.zeros((120, 64), np.float32)}))
    _convert_fails(hf, tmp_path, str(hf / "model.safetensors"), "model.layers.0.mlp.gate_proj.weight",
                   "[120, 64]", "[128, 64]")


def test_unknown_architecture(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    _edit_config(hf, lambda c: c.update(model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    _convert_fails(hf, tmp_path, str(hf / "config.json"), "unknown", "gpt2")


def test_missing_config_field(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    _edit_config(hf, lambda c: c.pop("hidden_size"))
    _convert_fails(hf, tmp_path, str(hf / "config.json"), "'hidden_size'")


def test_missing_original_llm_config(good_dirs, tmp_path):
    hf = _copy(good_dirs, "internlm2", tmp_path)
    _edit_config(hf, lambda c: c.pop("llm_config"))
    _convert_fails(hf, tmp_path, str(hf / "config.json"), "'llm_config'")


def test_truncated_safetensors(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    path = hf / "model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    _convert_fails(hf, tmp_path, str(path), "truncated", "tensor '")


def test_corrupt_safetensors_header(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    path = hf / "model.safetensors"
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"#not json")
    _convert_fails(hf, tmp_path, str(path), "corrupt safetensors header")


def test_index_lists_missing_shard(good_dirs, tmp_path):
    hf = _copy(good_dirs, "internlm2", tmp_path)
    os.remove(hf / "model-00002-of-00003.safetensors")
    _convert_fails(hf, tmp_path, str(hf / INDEX_FILE), "model-00002-of-00003.safetensors")


def test_packed_wqkv_with_wrong_rows(good_dirs, tmp_path):
    hf = _copy(good_dirs, "internlm2", tmp_path)
    key = "language_model.model.layers.0.attention.wqkv.weight"
    _rewrite_tensors(hf, lambda t: t.update({key: t[key][:-16]}))
    _convert_fails(hf, tmp_path, str(hf / "model.safetensors"), key, "packed wqkv has 112 rows")


def test_only_pytorch_weights(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    os.rename(hf / "model.safetensors", hf / "pytorch_model.bin")
    _convert_fails(hf, tmp_path, str(hf), "only safetensors is supported")


def test_failure_mid_stream_leaves_nothing(good_dirs, tmp_path, monkeypatch):
    hf = _copy(good_dirs, "internlm2", tmp_path)
    calls = []
    real = hf_source.read_tensor

    def flaky(info):
        calls.append(info.name)
        if len(calls) == 20:
            raise CheckpointError(f"{info.file}: disk went away while reading {info.name!r}")
        return real(info)

    monkeypatch.setattr(hf_source, "read_tensor", flaky)
    _convert_fails(hf, tmp_path, "disk went away")
    assert len(calls) == 20


def test_existing_output_needs_overwrite(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        checkpoint.convert_hf(hf, out, progress=False)
    checkpoint.convert_hf(hf, out, progress=False, overwrite=True)
    assert checkpoint.is_checkpoint(out)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []


def test_command_line_reports_the_error(good_dirs, tmp_path, capsys):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    _edit_config(hf, lambda c: c.pop("num_hidden_layers"))
    assert cli.main(["convert", f"--config.hf_dir={hf}", f"--config.out={tmp_path / 'out'}",
                     "--config.progress=False"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sophia-jax convert: error: ") and err.count("\n") == 1 and "num_hidden_layers" in err and str(hf / "config.json") in err


def test_load_rejects_other_directories(tmp_path):
    with pytest.raises(CheckpointError, match="neither a sophia_jax checkpoint"):
        checkpoint.load(tmp_path)


def test_restore_with_mismatched_config_names_the_params(good_dirs, tmp_path):
    hf = _copy(good_dirs, "qwen2", tmp_path)
    out = checkpoint.convert_hf(hf, tmp_path / "ckpt", progress=False)
    meta_path = os.path.join(out, "sophia_checkpoint.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["config"]["intermediate_size"] = 96
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    pattern = r"params: parameter 'layers.0.mlp.down' is stored as \[128, 64\], .* implies \[96, 64\]"
    with pytest.raises(CheckpointError, match=pattern):
        checkpoint.load(out)
