"""The pure train step: ``train_step(state, frozen, batch) -> (state, metrics)``.

One step is one optimizer update over ``A`` micro-batches (gradient accumulation), each of
``B`` packed rows across all hosts. Every loss mode is a sum divided by a count that does not
depend on the parameters (see ``training.loss``), so the step sums gradients of the numerators
and the denominators over micro-batches and divides once: the update is exactly that of one
batch of ``A * B`` rows, whatever ``A``.

Frozen parameters (the ViT and projector by default) are a separate, non-donated argument with
no optimizer state. A step whose loss or gradient norm is not finite leaves parameters and
optimizer state unchanged and reports ``finite = False``; the host loop then stops the run.

``jit_train_step`` compiles the step with input and output shardings from the logical-axis
rules, donating the state, so parameters and Adam moments are updated in place on every chip.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from sophia_jax import sharding
from sophia_jax.training import loss as loss_lib
from sophia_jax.training.optimizer import OptimizerConfig, learning_rate, make_optimizer


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: updates applied so far
    params: nnx.State  # the trainable parameters (float32 master weights)
    opt_state: Any  # optax state for ``params`` only


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static about a step; hashable, so it keys the compilation cache."""

    optimizer: OptimizerConfig
    loss: loss_lib.LossConfig = loss_lib.LossConfig()
    loss_chunk_tokens: int = 2048  # tokens per chunk of the vocabulary-chunked loss
    loss_chunk_unroll: bool = False  # chunks written out, not looped (``sophia-jax aot``'s cost programs)
    num_sources: int = 1  # data sources, for the per-source loss metrics


def response_log_probs(model, batch: dict, chunk_tokens: int, chunk_unroll: bool = False) -> jax.Array:
    """log pi(target) for every position of a packed batch: float32[B, L].

    batch holds input_ids / targets / positions / segment_ids int32[B, L], pixel_values
    float[B, R, C, H, W] and tile_mask bool[B, R] (see ``data`` for the layout); a text-only
    model's batch has no pixel_values.
    """
    segment_ids = batch["segment_ids"]
    embeds = model.embed_rows(batch["input_ids"], batch.get("pixel_values"), batch.get("tile_mask"))
    hidden, _ = model.hidden_states(embeds, batch["positions"], segment_ids > 0, segment_ids=segment_ids)
    text = model.text_model
    return loss_lib.token_log_probs(hidden, text.head(), batch["targets"], vocab_size=text.config.vocab_size,
                                    chunk_size=chunk_tokens, unroll=chunk_unroll)


def init_state(params: nnx.State, config: StepConfig) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, make_optimizer(config.optimizer).init(params))


def _micro_loss(params, frozen, micro, graphdef, config: StepConfig):
    model = nnx.merge(graphdef, params, frozen)
    logp = response_log_probs(model, micro, config.loss_chunk_tokens, config.loss_chunk_unroll)
    numerator, denominator, metrics = loss_lib.policy_loss(logp, micro, config.loss, num_sources=config.num_sources)
    return numerator, (denominator, metrics)


def train_step(state: TrainState, frozen: nnx.State, batch: dict, *, graphdef, config: StepConfig):
    """batch: every array with a leading micro-batch axis A, e.g. input_ids int32[A, B, L]."""
    grad_fn = jax.value_and_grad(_micro_loss, has_aux=True)

    def accumulate(carry, micro):
        grads, numerator, denominator, metrics = carry
        (num, (den, m)), g = grad_fn(state.params, frozen, micro, graphdef, config)
        grads = jax.tree.map(lambda acc, x: acc + x.astype(jnp.float32), grads, g)
        return (grads, numerator + num, denominator + den, loss_lib.merge_metrics(metrics, m)), None

    first = jax.tree.map(lambda x: x[0], batch)
    metrics_shape = jax.eval_shape(lambda: _micro_loss(state.params, frozen, first, graphdef, config)[1][1])
    zeros = (
        jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params),
        jnp.zeros((), jnp.float32),
        jnp.zeros((), jnp.float32),
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
    )
    (grads, numerator, denominator, metrics), _ = jax.lax.scan(accumulate, zeros, batch)

    scale = 1.0 / jnp.maximum(denominator, 1.0)
    grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, state.params)
    loss = numerator * scale
    grad_norm = optax.tree.norm(grads)
    optimizer = make_optimizer(config.optimizer)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = TrainState(state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state))
    out = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite,
               learning_rate=learning_rate(config.optimizer)(state.step))
    return new_state, out


# ------------------------------------------------------------------------------------------------
# Shardings and compilation


def batch_sharding(mesh, shape: tuple[int, ...]) -> NamedSharding:
    """[A, B, ...]: rows split over the data-parallel axes (those that divide B), A whole."""
    spec = sharding.logical_to_spec((None, "batch") + (None,) * (len(shape) - 2), shape, mesh)
    return NamedSharding(mesh, spec)


def state_shardings(abstract_state: TrainState, params_shardings: nnx.State, mesh, config: StepConfig):
    """Adam moments are sharded like their parameters; scalars are replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = optax.tree_map_params(
        make_optimizer(config.optimizer), lambda _, s: s, abstract_state.opt_state, params_shardings,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(replicated, params_shardings, opt_shardings)


class TrainProgram:
    """The train step of one model split, mesh and config: shardings, state init, compiled step.

    ``params`` and ``frozen`` may be real arrays or abstract (``jax.ShapeDtypeStruct`` with a
    sharding, for ahead-of-time compilation); only their shapes and shardings are used here.
    """

    def __init__(self, graphdef, params, frozen, mesh, config: StepConfig):
        self.graphdef, self.mesh, self.config = graphdef, mesh, config
        params_sh = jax.tree.map(lambda x: x.sharding, params)
        abstract = jax.eval_shape(lambda p: init_state(p, config), params)
        self.state_shardings = state_shardings(abstract, params_sh, mesh, config)
        self.frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
        # What a checkpoint restores into: this run's shapes with this run's shardings.
        self.abstract_state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                           abstract, self.state_shardings)
        self._steps = {}  # batch shapes -> jitted step

    def init(self, params: nnx.State) -> TrainState:
        return jax.jit(lambda p: init_state(p, self.config), out_shardings=self.state_shardings)(params)

    def jitted(self, batch_shapes: dict):
        """The jitted step for batches of ``batch_shapes`` (each key's global shape, with the A axis)."""
        key = tuple(sorted((k, tuple(v)) for k, v in batch_shapes.items()))
        if key not in self._steps:
            batch_sh = {k: batch_sharding(self.mesh, shape) for k, shape in batch_shapes.items()}

            def step(state, frozen, batch):
                with sharding.use_mesh(self.mesh):  # activation constraints refer to this mesh while tracing
                    return train_step(state, frozen, batch, graphdef=self.graphdef, config=self.config)

            self._steps[key] = jax.jit(step, in_shardings=(self.state_shardings, self.frozen_shardings, batch_sh),
                                       out_shardings=(self.state_shardings, None), donate_argnums=0)
        return self._steps[key]

    def __call__(self, state: TrainState, frozen: nnx.State, batch: dict):
        """One update; ``batch`` holds global arrays [A, B, ...] (see ``global_batch``)."""
        return self.jitted({k: v.shape for k, v in batch.items()})(state, frozen, batch)

    def global_batch(self, local: dict, micro_rows: int) -> dict:
        """This host's [A, b, ...] numpy arrays -> global [A, micro_rows, ...] arrays."""
        out = {}
        for name, value in local.items():
            shape = (value.shape[0], micro_rows) + value.shape[2:]
            out[name] = jax.make_array_from_process_local_data(batch_sharding(self.mesh, shape), value, shape)
        return out


def split_model(model, trainable_filter):
    """(graphdef, trainable params, frozen params) of an NNX model."""
    return nnx.split(model, trainable_filter, ...)


def host_metrics(metrics: dict) -> dict:
    """Device metrics -> host floats (one transfer)."""
    return {k: np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v) for k, v in jax.device_get(metrics).items()}
