"""RuntimeConfig.scan_layers: stacked decoder layers under lax.scan, per-layer checkpoints."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from sophia_jax import checkpoint
from sophia_jax.checkpoint.params import flat_params
from sophia_jax.configs import models
from sophia_jax.models import decoder


def _model(scan=False, remat=False, seed=2):
    cfg = models.get_config("tiny")
    cfg.runtime.scan_layers, cfg.runtime.remat = scan, remat
    return models.build_model(cfg, seed=seed)


def _hidden(model, ids, segments):
    embeds = model.embed_rows(ids)
    return model.text_model.hidden_states(embeds, jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape),
                                          segments > 0, segment_ids=segments)[0]


def test_scanned_decoder_equals_the_per_layer_one():
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 400, (2, 10)))
    segments = jnp.asarray([[1] * 6 + [2] * 4, [1] * 8 + [0] * 2])
    per_layer, scanned = _model(), _model(scan=True, remat=True)
    lm = scanned.text_model
    assert isinstance(lm.layers, decoder.DecoderLayer)
    assert lm.layers.attn.q.get_value().shape[0] == lm.config.num_layers
    assert lm.layers.attn.q.get_metadata()["axes"][0] == "layers"
    np.testing.assert_allclose(_hidden(scanned, ids, segments), _hidden(per_layer, ids, segments), atol=1e-6)


def test_switching_in_place_round_trips():
    model = _model()
    before = {k: np.asarray(v.get_value()) for k, v in flat_params(model).items()}
    decoder.set_scan_layers(model, True)
    assert not any(k.startswith("language_model.layers.0.") for k in flat_params(model))
    assert "language_model.layers.attn.q" in flat_params(model)
    decoder.set_scan_layers(model, False)
    after = {k: np.asarray(v.get_value()) for k, v in flat_params(model).items()}
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_checkpoints_hold_per_layer_parameters_either_way(tmp_path):
    scanned = _model(scan=True)
    checkpoint.save(scanned, tmp_path / "ckpt")
    assert scanned.text_model.runtime.scan_layers  # saving does not change the model
    plain = checkpoint.load(tmp_path / "ckpt")
    assert not plain.text_model.runtime.scan_layers and len(plain.text_model.layers) == plain.text_model.config.num_layers
    runtime = dataclasses.replace(plain.runtime, scan_layers=True)
    again = checkpoint.load(tmp_path / "ckpt", runtime=runtime)
    want = {k: np.asarray(v.get_value()) for k, v in flat_params(scanned).items()}
    got = {k: np.asarray(v.get_value()) for k, v in flat_params(again).items()}
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_a_scanned_model_refuses_a_kv_cache():
    lm = _model(scan=True).text_model
    cache = decoder.init_cache(lm.config, 1, 8)
    with pytest.raises(ValueError, match="scan_layers"):
        lm.hidden_states(jnp.zeros((1, 1, lm.config.hidden_size)), jnp.zeros((1, 1), jnp.int32),
                         jnp.ones((1, 8), bool), cache=cache)


def test_a_training_model_viewed_for_sampling_runs_with_a_cache():
    """for_sampling: per-layer, no remat, splash -> xla; the training model itself is untouched."""
    cfg = models.get_config("tiny")
    cfg.runtime.scan_layers, cfg.runtime.remat, cfg.runtime.attention = True, True, "splash"
    trained = models.build_model(cfg, seed=2)
    view = decoder.for_sampling(trained)
    lm = view.text_model
    assert not lm.runtime.scan_layers and lm.runtime.attention == "xla" and lm.runtime.remat_policy == "none"
    assert lm.layers[0].attn.runtime.attention == "xla"
    assert trained.text_model.runtime.scan_layers and trained.text_model.runtime.attention == "splash"
    ids = jnp.asarray([[5, 6, 7, 8]])
    np.testing.assert_allclose(view.text_model(ids), _model(seed=2).text_model(ids), atol=1e-6)
    cache = decoder.init_cache(lm.config, 1, 8, jnp.float32)
    lm.hidden_states(lm.embed_tokens(ids), jnp.arange(4)[None], jnp.ones((1, 8), bool), cache=cache)
