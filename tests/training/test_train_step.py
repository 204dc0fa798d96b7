"""The policy update: packed forward, parity with transformers, mesh equivalence, accumulation, overfitting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import hf_models
from sophia_jax import checkpoint, sharding
from sophia_jax.configs import models
from sophia_jax.models import decoder
from sophia_jax.training import loss as loss_lib
from sophia_jax.training import step as step_lib
from sophia_jax.training.optimizer import OptimizerConfig, trainable_filter

IMG = hf_models.IMAGE_TOKEN
TILE = 4  # tokens per 56-pixel tile in the tiny models

# Two examples: (prompt ids, number of tiles, response ids). Image tokens follow the first id.
EXAMPLES = [
    ([11, 12, 13, 14], 1, [15, 16, 17, 18]),
    ([21, 22], 2, [23, 24, 25]),
    ([31, 32, 33], 0, [34, 35]),
]


def example_ids(prompt, tiles, response):
    ids = prompt[:1] + [IMG] * (TILE * tiles) + prompt[1:]
    return ids, ids + response


def packed_batch(examples, length=48, tile_budget=4, rows=1, seed=0):
    """Packs ``examples`` greedily into ``rows`` rows, by the data pipeline's contract."""
    b = {
        "input_ids": np.zeros((rows, length), np.int32), "targets": np.zeros((rows, length), np.int32),
        "loss_weights": np.zeros((rows, length), np.float32), "segment_ids": np.zeros((rows, length), np.int32),
        "positions": np.zeros((rows, length), np.int32),
        "pixel_values": np.zeros((rows, tile_budget, 3, 56, 56), np.float32),
        "tile_mask": np.zeros((rows, tile_budget), bool), "source": np.full((rows, length), -1, np.int32),
        "behaviour_seq_logprob": np.full((rows, length), np.nan, np.float32),
        "behaviour_token_logprob": np.full((rows, length), np.nan, np.float32),
    }
    pixels = []
    row, col, tile, seg = 0, 0, 0, 0
    for prompt, tiles, response in examples:
        prompt_ids, ids = example_ids(prompt, tiles, response)
        if col + len(ids) > length or tile + tiles > tile_budget:
            row, col, tile, seg = row + 1, 0, 0, 0
        seg += 1
        n = len(ids)
        b["input_ids"][row, col:col + n] = ids
        b["targets"][row, col:col + n - 1] = ids[1:]
        b["loss_weights"][row, col + len(prompt_ids) - 1:col + n - 1] = 1.0
        b["segment_ids"][row, col:col + n] = seg
        b["positions"][row, col:col + n] = np.arange(n)
        b["source"][row, col:col + n] = 0
        rng = np.random.default_rng(seed * 1000 + prompt[0])  # an example's pixels do not depend on its row
        tile_pixels = rng.standard_normal((tiles, 3, 56, 56)).astype(np.float32)
        b["pixel_values"][row, tile:tile + tiles] = tile_pixels
        b["tile_mask"][row, tile:tile + tiles] = True
        pixels.append(tile_pixels)
        col, tile = col + n, tile + tiles
    return b, pixels


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A tiny transformers InternVL and ours, loaded through the real checkpoint path."""
    torch_model = hf_models.internvl("300m", "qwen2", seed=3)
    directory = tmp_path_factory.mktemp("hf") / "internvl"
    torch_model.save_pretrained(directory)
    return torch_model, checkpoint.load(directory)


def test_packed_segments_never_attend_to_each_other(hf_pair):
    _, model = hf_pair
    batch, _ = packed_batch(EXAMPLES)
    alone, _ = packed_batch(EXAMPLES[1:2])
    logp = step_lib.response_log_probs(model, {k: jnp.asarray(v) for k, v in batch.items()}, chunk_tokens=16)
    logp_alone = step_lib.response_log_probs(model, {k: jnp.asarray(v) for k, v in alone.items()}, chunk_tokens=16)
    seg2 = batch["segment_ids"][0] == 2
    n = int(seg2.sum())
    np.testing.assert_allclose(np.asarray(logp)[0, seg2], np.asarray(logp_alone)[0, :n], atol=1e-5)
    # Not vacuous: without segment ids the second example sees the first and changes.
    merged = dict(batch, segment_ids=(batch["segment_ids"] > 0).astype(np.int32))
    logp_merged = step_lib.response_log_probs(model, {k: jnp.asarray(v) for k, v in merged.items()}, chunk_tokens=16)
    assert np.abs(np.asarray(logp_merged)[0, seg2] - np.asarray(logp)[0, seg2]).max() > 1e-3


def test_packed_loss_matches_transformers_on_unpacked_examples(hf_pair):
    torch_model, model = hf_pair
    batch, pixels = packed_batch(EXAMPLES)
    logp = step_lib.response_log_probs(model, {k: jnp.asarray(v) for k, v in batch.items()}, chunk_tokens=16)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    numerator, denominator, _ = loss_lib.policy_loss(logp, jb, loss_lib.LossConfig(), num_sources=1)
    ours = float(numerator / denominator)

    total, count, per_example = 0.0, 0, []
    for (prompt, tiles, response), tile_pixels in zip(EXAMPLES, pixels):
        prompt_ids, ids = example_ids(prompt, tiles, response)
        labels = torch.full((1, len(ids)), -100, dtype=torch.long)
        labels[0, len(prompt_ids):] = torch.tensor(response)
        kwargs = dict(input_ids=torch.tensor([ids]), labels=labels)
        if tiles:
            kwargs["pixel_values"] = torch.tensor(tile_pixels)
        with torch.no_grad():
            out = torch_model(**kwargs)
        per_example.append(float(out.loss))
        total += float(out.loss) * len(response)
        count += len(response)
    np.testing.assert_allclose(ours, total / count, atol=1e-4)

    seq = loss_lib.LossConfig(normalization="sequence_mean")
    numerator, denominator, _ = loss_lib.policy_loss(logp, jb, seq, num_sources=1)
    np.testing.assert_allclose(float(numerator / denominator), np.mean(per_example), atol=1e-4)


_PROGRAMS = {}


def _single():
    return sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])


def _program(mesh_name="single", remat=False, scan=False):
    """One tiny model and compiled step per mesh, shared by the tests (compiling dominates their time)."""
    if (mesh_name, remat, scan) not in _PROGRAMS:
        mesh = _single() if mesh_name == "single" else sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, tensor=4))
        cfg = models.get_config("tiny")
        cfg.runtime.remat = remat
        cfg.runtime.scan_layers = scan
        model = models.build_model(cfg, mesh, seed=1)
        graphdef, params, frozen = step_lib.split_model(model, trainable_filter("language"))
        config = step_lib.StepConfig(optimizer=OptimizerConfig(peak_learning_rate=3e-3, total_steps=60, warmup_steps=1),
                                     loss_chunk_tokens=32)
        _PROGRAMS[mesh_name, remat, scan] = (step_lib.TrainProgram(graphdef, params, frozen, mesh, config), params, frozen)
    return _PROGRAMS[mesh_name, remat, scan]


def _stacked(examples, accumulation, rows, seed=0):
    micro = [packed_batch(examples[i::accumulation], rows=rows, seed=seed + i)[0] for i in range(accumulation)]
    return {k: np.stack([m[k] for m in micro]) for k in micro[0]}


def _run(mesh_name, local, steps=1, remat=False, scan=False):
    program, params, frozen = _program(mesh_name, remat, scan)
    state = program.init(params)
    for _ in range(steps):
        state, metrics = program(state, frozen, program.global_batch(local, local["input_ids"].shape[1]))
    if scan:  # compare per-layer parameters, as checkpoints store them
        model = nnx.merge(program.graphdef, state.params, frozen)
        decoder.set_scan_layers(model, False)
        return jax.device_get(nnx.split(model, trainable_filter("language"), ...)[1]), step_lib.host_metrics(metrics)
    return jax.device_get(state.params), step_lib.host_metrics(metrics)


def test_step_on_a_2x4_mesh_equals_the_single_device_step():
    local = _stacked(EXAMPLES * 2, accumulation=1, rows=2)
    want, m1 = _run("single", local)
    got, m2 = _run("2x4", local)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_gradient_accumulation_equals_one_large_batch():
    """Two micro-batches of one row give the update of one batch of the same two rows."""
    split = _stacked(EXAMPLES, accumulation=2, rows=1)  # [2, 1, ...]
    whole = {k: v.reshape(1, 2, *v.shape[2:]) for k, v in split.items()}  # [1, 2, ...]
    a, ma = _run("single", split)
    b, mb = _run("single", whole)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_rematerialised_layers_give_the_same_update():
    """Remat inside the step's value_and_grad and scan (the TPU configs' default) traces and changes nothing."""
    local = _stacked(EXAMPLES * 2, accumulation=1, rows=2)
    a, ma = _run("single", local)
    b, mb = _run("single", local, remat=True)
    np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(b), jax.tree.leaves(a)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_scanned_layers_give_the_same_update():
    """Stacked layers under lax.scan (with remat, on the 2x4 mesh) update as the per-layer model
    does. Three steps: the first has learning rate 0 (warm-up), so the last step's loss and
    gradient norm are taken after two real updates. Adam turns float noise in near-zero
    gradients into up to ~1% of one update (lr 3e-3), hence the parameter tolerance."""
    local = _stacked(EXAMPLES * 2, accumulation=1, rows=2)
    a, ma = _run("single", local, steps=3)
    b, mb = _run("2x4", local, steps=3, remat=True, scan=True)
    np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=1e-5)
    np.testing.assert_allclose(mb["grad_norm"], ma["grad_norm"], rtol=1e-5)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(b), jax.tree.leaves(a)):
        np.testing.assert_allclose(x, y, atol=3e-5)


def test_weight_decay_mask_reads_stacked_layers_per_layer():
    """Norm scales and biases stay undecayed when stacked to [layers, D] (matrices are decayed)."""
    from sophia_jax.training.optimizer import _decay_mask

    def masks(scan):
        _, params, _ = _program("single", scan=scan)
        flat = jax.tree_util.tree_flatten_with_path(_decay_mask(params))[0]
        return {jax.tree_util.keystr(path).replace(".value", ""): bool(m) for path, m in flat}

    per_layer, stacked = masks(False), masks(True)
    assert stacked and sum(stacked.values()) < len(stacked)
    for path, decayed in per_layer.items():
        assert stacked[path.replace("['layers'][0]", "['layers']").replace("['layers'][1]", "['layers']")] == decayed, path


def test_frozen_parts_do_not_move_and_have_no_optimizer_state():
    program, params, frozen = _program()
    assert set(params.keys()) == {"language_model"}
    assert set(frozen.keys()) == {"vision", "projector"}
    state = program.init(params)
    opt_leaves = sum(x.size for x in jax.tree.leaves(state.opt_state))
    param_leaves = sum(x.size for x in jax.tree.leaves(params))
    assert opt_leaves <= 2 * param_leaves + 16  # Adam's two moments of the trainable part only


def test_a_tiny_model_overfits_a_handful_of_trajectories():
    program, params, frozen = _program()
    local = _stacked(EXAMPLES * 2, accumulation=1, rows=2)
    batch = program.global_batch(local, 2)
    state = program.init(params)
    losses = []
    for _ in range(60):
        state, metrics = program(state, frozen, batch)
        losses.append(step_lib.host_metrics(metrics)["loss"])
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def test_a_non_finite_step_changes_nothing():
    program, params, frozen = _program()
    local = _stacked(EXAMPLES * 2, accumulation=1, rows=2)
    local["loss_weights"] = np.where(local["loss_weights"] > 0, np.inf, 0).astype(np.float32)
    state = program.init(params)
    before = jax.device_get(state.params)
    state, metrics = program(state, frozen, program.global_batch(local, 2))
    assert not step_lib.host_metrics(metrics)["finite"]
    for x, y in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before)):
        np.testing.assert_array_equal(x, y)
