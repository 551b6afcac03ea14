"""What a surrogate checkpoint holds and how it is built: the parameter-count normaliser, the
optimizer, and the training state (fresh, or as abstract shapes to restore into). Shared by
`train.py` (which trains) and `checkpoint.py` (which saves and restores) from below both."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ac_jax.surrogate.config import SurrogateConfig
from ac_jax.surrogate.model import Surrogate


@dataclasses.dataclass(frozen=True)
class Normaliser:
    """Maps parameter counts to the regressor's target ``(f(p) - mean) / std`` and back.

    `kind` "log" uses f = log10: counts span 10^2..10^6 in an archset, and on the raw scale
    (the paper's "linear") every small network sits at nearly the same target value, so the
    regressor cannot tell a 10K network from a 50K one, which is the range compression targets.
    """

    kind: str
    mean: float
    std: float

    @classmethod
    def fit(cls, num_params: np.ndarray, kind: str) -> "Normaliser":
        values = cls._forward(np.asarray(num_params, np.float64), kind)
        return cls(kind, float(values.mean()), float(max(values.std(), 1e-6)))

    @staticmethod
    def _forward(p, kind):
        if kind == "log":
            return np.log10(np.maximum(p, 1.0))
        if kind == "linear":
            return p
        raise ValueError(f"param_target must be 'log' or 'linear', got {kind!r}")

    def to_target(self, num_params) -> np.ndarray:
        return (self._forward(np.asarray(num_params, np.float64), self.kind) - self.mean) / self.std

    def from_target(self, target) -> np.ndarray:
        values = np.asarray(target, np.float64) * self.std + self.mean
        return 10.0**values if self.kind == "log" else values

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_optimizer(cfg: SurrogateConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    period = int(cfg.decay_every_epochs * steps_per_epoch)
    if cfg.decay_every_epochs <= 0 or period >= 2**30:  # no decay
        schedule = optax.constant_schedule(cfg.lr)
    else:
        schedule = optax.exponential_decay(
            cfg.lr, transition_steps=max(1, period), decay_rate=cfg.decay_factor, staircase=True
        )
    if cfg.optimizer == "sgd_nesterov":
        return optax.sgd(schedule, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adam":
        return optax.adam(schedule)
    if cfg.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use sgd_nesterov, adam or adamw")


def state_from(variables: dict, tx, step: int = 0) -> dict:
    """The training state pytree (what checkpoints hold) with a fresh optimizer state."""
    return {
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt_state": tx.init(variables["params"]),
        "step": jnp.asarray(step, jnp.int32),
    }


def initialiser(model: Surrogate, cfg: SurrogateConfig, tx) -> Callable:
    """`key -> fresh training state` (what `init_state` compiles)."""
    dummy = jnp.zeros((1, cfg.arch.max_len, 6), jnp.float32)
    return lambda key: state_from(model.init(key, dummy, False), tx)


def init_state(model: Surrogate, cfg: SurrogateConfig, tx) -> dict:
    # Jitted: op-by-op (eager) initialisation of the conv stack takes ~30 s on a CPU.
    return jax.jit(initialiser(model, cfg, tx))(jax.random.PRNGKey(cfg.seed))


def abstract_state(model: Surrogate, cfg: SurrogateConfig, tx) -> dict:
    """`init_state`'s structure, shapes and dtypes (on the default device), computing nothing:
    what restoring a checkpoint needs, without the ~6 s compile of the initialiser on a CPU."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(initialiser(model, cfg, tx), jax.random.PRNGKey(cfg.seed))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
