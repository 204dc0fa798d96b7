"""Safetensors I/O without torch, the InternLM2 wqkv layout, tokenizer ids, shard planning."""

import json

import ml_dtypes
import numpy as np
import safetensors.torch
import torch

from sophia_jax.checkpoint import hf_source, original_layout, testing
from sophia_jax.checkpoint.safetensors_io import TensorSpec, index_directory, plan_shards, read_tensor, write_tensors
from sophia_jax.models.config import TextConfig


def test_bf16_files_interoperate_with_the_reference_library(tmp_path):
    rng = np.random.default_rng(0)
    ours = {"a": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16), "b": np.arange(7, dtype=np.int64),
            "c": rng.standard_normal((2, 2, 2)).astype(np.float32)}
    (tmp_path / "ours").mkdir()
    write_tensors(tmp_path / "ours", ours)
    loaded = safetensors.torch.load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert loaded["a"].dtype == torch.bfloat16
    np.testing.assert_array_equal(loaded["a"].float().numpy(), ours["a"].astype(np.float32))
    np.testing.assert_array_equal(loaded["b"].numpy(), ours["b"])

    theirs = {"x": torch.randn(4, 6, dtype=torch.bfloat16), "y": torch.randn(3)}
    safetensors.torch.save_file(theirs, str(tmp_path / "theirs.safetensors"))
    infos = index_directory(tmp_path)
    x = read_tensor(infos["x"])
    assert x.dtype == ml_dtypes.bfloat16 and x.shape == (4, 6)
    np.testing.assert_array_equal(x.astype(np.float32), theirs["x"].float().numpy())
    np.testing.assert_array_equal(read_tensor(infos["y"]), theirs["y"].numpy())


def test_wqkv_split_follows_the_internlm2_forward():
    """InternLM2 reads q/k/v from ``rearrange(qkv, 'b q (h gs d) -> b q h gs d')``: head h's group is
    [q_{hG}, ..., q_{hG+G-1}, k_h, v_h]. Our split must give the same projections."""
    n, k, h, d = 4, 2, 3, 5
    g = n // k
    text = TextConfig(hidden_size=d, num_heads=n, num_kv_heads=k, head_dim=h, architecture="internlm2")
    rng = np.random.default_rng(0)
    wqkv = rng.standard_normal(((n + 2 * k) * h, d))
    x = rng.standard_normal((7, d))
    groups = (x @ wqkv.T).reshape(7, k, g + 2, h)  # the original forward
    q_ref, k_ref, v_ref = groups[:, :, :g].reshape(7, n * h), groups[:, :, -2].reshape(7, k * h), groups[:, :, -1].reshape(7, k * h)
    pieces = {name.split(".")[-2]: piece(wqkv) for name, _, piece in
              original_layout.causal_lm_tensor("model.layers.0.attention.wqkv.weight", wqkv.shape, text)}
    np.testing.assert_allclose(x @ pieces["q_proj"].T, q_ref)
    np.testing.assert_allclose(x @ pieces["k_proj"].T, k_ref)
    np.testing.assert_allclose(x @ pieces["v_proj"].T, v_ref)
    packed = testing.pack_wqkv(pieces["q_proj"], pieces["k_proj"], pieces["v_proj"], k, h)
    np.testing.assert_array_equal(packed, wqkv)


def test_image_token_from_each_tokenizer_file(tmp_path):
    (tmp_path / "a").mkdir()
    testing.write_tokenizer(str(tmp_path / "a"), 37)
    assert hf_source.token_id(str(tmp_path / "a"), "<IMG_CONTEXT>") == 37
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer_config.json").write_text(
        json.dumps({"added_tokens_decoder": {"92546": {"content": "<IMG_CONTEXT>", "special": True}}}))
    assert hf_source.token_id(str(tmp_path / "b"), "<IMG_CONTEXT>") == 92546
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "added_tokens.json").write_text(json.dumps({"<IMG_CONTEXT>": 151667}))
    assert hf_source.token_id(str(tmp_path / "c"), "<IMG_CONTEXT>") == 151667
    assert hf_source.token_id(str(tmp_path), "<IMG_CONTEXT>") is None


def test_shards_respect_the_size_limit():
    specs = [TensorSpec(f"t{i}", np.dtype(np.float32), (n,)) for i, n in enumerate([10, 10, 30, 5, 5, 5])]
    shards = plan_shards(specs, 80)
    assert [[s.name for s in shard] for shard in shards] == [["t0", "t1"], ["t2"], ["t3", "t4", "t5"]]
    assert all(sum(s.nbytes for s in shard) <= 80 or len(shard) == 1 for shard in shards)
