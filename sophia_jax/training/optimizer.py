"""AdamW with the paper's schedule, and which parameters train.

SOPHIA (sophia-method.md section 4): AdamW, weight decay 0.05, peak learning rate 2e-5, cosine
decay to a quarter of the peak; a short linear warm-up (section 7, item 2). Gradients are clipped
by global norm before the update. Weight decay skips one-dimensional parameters (norm scales
and biases), the usual practice: decaying a norm's scale towards zero only fights the norm.
"""

from __future__ import annotations

import dataclasses

import jax
import optax
from flax import nnx

from sophia_jax.errors import UserError

# Which top-level submodules of an InternVL stay frozen (no gradient, no optimizer state). The
# paper trains the language backbone only (section 7, item 4). A text-only model trains whole.
FROZEN_PARTS = {
    "language": ("vision", "projector"),
    "language+projector": ("vision",),
    "all": (),
}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    peak_learning_rate: float = 2e-5
    end_learning_rate_ratio: float = 0.25  # cosine decays to this fraction of the peak
    warmup_steps: int = 0
    total_steps: int = 1
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # <= 0 turns clipping off

    def __post_init__(self):
        if self.total_steps < 1:
            raise UserError(f"optimizer: total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps < max(self.total_steps, 2):
            raise UserError(f"optimizer: warmup_steps {self.warmup_steps} must be in [0, total_steps)")
        if self.peak_learning_rate <= 0:
            raise UserError(f"optimizer: peak_learning_rate must be > 0, got {self.peak_learning_rate}")


def learning_rate(config: OptimizerConfig) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then cosine from the peak to ``end ratio * peak``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if config.warmup_steps else config.peak_learning_rate,
        peak_value=config.peak_learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.total_steps,
        end_value=config.peak_learning_rate * config.end_learning_rate_ratio,
    )


def _decay_mask(params):
    """Weight decay on matrices only; a stacked layer parameter (leading axis ``layers``, see
    ``RuntimeConfig.scan_layers``) is judged by the rank of one layer's slice."""
    def is_matrix(variable):
        axes = variable.get_metadata().get("axes") or ()
        return variable.get_value().ndim - (tuple(axes[:1]) == ("layers",)) > 1

    return jax.tree.map(is_matrix, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on the schedule above."""
    adamw = optax.adamw(learning_rate(config), b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay, mask=_decay_mask)
    if config.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)
    return adamw


def trainable_filter(parts: str):
    """An NNX filter ``(path, value) -> bool`` selecting the parameters that train."""
    if parts not in FROZEN_PARTS:
        raise UserError(f"train.trainable: unknown value {parts!r}; expected one of {sorted(FROZEN_PARTS)}")
    frozen = FROZEN_PARTS[parts]

    def is_trainable(path, value) -> bool:
        return not (path and str(path[0]) in frozen)

    return is_trainable
