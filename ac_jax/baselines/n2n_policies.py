"""N2N's two policies and the students their actions make (see `n2n.py` for the method):
the layer encoding both read, the bidirectional removal LSTM, the autoregressive shrinkage LSTM,
and `remove_layers` / `shrink_layers`, which turn actions into legal students."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ac_jax.arch.legalize import legalize
from ac_jax.arch.spec import Arch, LayerType

NUM_LAYER_TYPES = 9  # 0 (end) .. 8 (Linear)


def encode_layers(arch: Arch) -> np.ndarray:
    """``[T, 14]`` float features per layer: one-hot type, k/10, s/10, p/10, log2(o+1)/13,
    relative position (the policies' input; scales keep every feature near [0, 1])."""
    rows = []
    n = len(arch.layers)
    for i, (t, k, o, s, p) in enumerate(arch.layers):
        onehot = np.zeros(NUM_LAYER_TYPES, np.float32)
        onehot[t] = 1.0
        rows.append(np.concatenate([onehot, np.asarray(
            [k / 10, s / 10, p / 10, math.log2(o + 1) / 13, i / max(n - 1, 1)], np.float32)]))
    return np.stack(rows)


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------


class RemovalPolicy(nn.Module):
    """Bidirectional LSTM over the layers -> keep logit per layer."""

    hidden: int = 32

    @nn.compact
    def __call__(self, enc: jax.Array) -> jax.Array:  # [T, F] -> [T]
        h = nn.Bidirectional(
            nn.RNN(nn.OptimizedLSTMCell(self.hidden)), nn.RNN(nn.OptimizedLSTMCell(self.hidden))
        )(enc[None])
        return nn.Dense(1)(h)[0, :, 0]


class ShrinkPolicy(nn.Module):
    """One step of the autoregressive shrinkage LSTM: (carry, [layer, previous action]) ->
    (carry, logits over the width factors)."""

    hidden: int = 32
    num_actions: int = 10

    def setup(self):
        self.cell = nn.OptimizedLSTMCell(self.hidden)
        self.head = nn.Dense(self.num_actions)

    def __call__(self, carry, x):
        carry, h = self.cell(carry, x)
        return carry, self.head(h)


def removal_fns(policy: RemovalPolicy, enc: jax.Array, free: np.ndarray):
    """Jitted sample(params, keys [R]) -> keep [R, T] and logp(params, keep [R, T]) -> [R]."""
    free = jnp.asarray(free)

    @jax.jit
    def sample(params, keys):
        p = jax.nn.sigmoid(policy.apply(params, enc))
        draws = jax.vmap(lambda k: jax.random.bernoulli(k, p))(keys)
        return jnp.where(free, draws, True).astype(jnp.int32)

    def logp(params, keep):
        logits = policy.apply(params, enc)
        per_layer = jnp.where(keep == 1, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))
        return (per_layer * free).sum(axis=-1)

    return sample, logp


def shrink_scan(policy: ShrinkPolicy, params, enc, shrinkable, key, given=None):
    """Runs the shrinkage LSTM over the layers; samples (key) or scores (given) the actions.

    Layers that cannot shrink get action `num_actions - 1`, log-probability 0 and a zero
    previous-action input for the next step.
    """
    n = policy.num_actions
    carry0 = (jnp.zeros(policy.hidden), jnp.zeros(policy.hidden))

    def body(carry, t):
        lstm, prev = carry
        lstm, logits = policy.apply(params, lstm, jnp.concatenate([enc[t], prev]))
        if given is None:
            action = jax.random.categorical(jax.random.fold_in(key, t), logits)
        else:
            action = given[t]
        logp = jnp.where(shrinkable[t], jax.nn.log_softmax(logits)[action], 0.0)
        action = jnp.where(shrinkable[t], action, n - 1)
        prev = jax.nn.one_hot(action, n) * shrinkable[t]
        return (lstm, prev), (action, logp)

    _, (actions, logps) = jax.lax.scan(body, (carry0, jnp.zeros(n)), jnp.arange(enc.shape[0]))
    return actions, logps.sum()


# --------------------------------------------------------------------------------------------
# Students
# --------------------------------------------------------------------------------------------


def shrinkable_mask(arch: Arch) -> np.ndarray:
    last = len(arch.layers) - 1
    return np.asarray([(layer.t == LayerType.CONV or layer.t == LayerType.LINEAR) and i != last
                       for i, layer in enumerate(arch.layers)])


def remove_layers(arch: Arch, keep: Sequence[int]) -> Arch | None:
    """The student keeping the layers where `keep` is 1 (the classifier always), or None if
    `legalize` had to drop one of them (the sequence is not a network)."""
    kept = [layer for layer, k in zip(arch.layers, keep, strict=True) if k]
    if not kept or kept[-1] != arch.layers[-1]:
        kept.append(arch.layers[-1])
    student = legalize(np.asarray(kept, np.int64), arch.input_shape, arch.num_classes)
    return with_rates(student, kept) if len(student.layers) == len(kept) else None


def shrink_layers(arch: Arch, actions: Sequence[int], factors: Sequence[float]) -> Arch | None:
    """Conv and hidden Linear widths times ``factors[action]`` (at least 1), legalised."""
    mask = shrinkable_mask(arch)
    rows = []
    for layer, a, m in zip(arch.layers, actions, mask, strict=True):
        if m:
            layer = layer._replace(o=max(1, int(round(layer.o * factors[int(a)]))))
        rows.append(layer)
    student = legalize(np.asarray([tuple(r) for r in rows], np.int64), arch.input_shape,
                       arch.num_classes)
    return with_rates(student, rows) if len(student.layers) == len(rows) else None


def with_rates(student: Arch, layers: Sequence) -> Arch:
    """`student` (legalised from integer rows, which hold a Dropout's rate in tenths) with the
    exact dropout rates of `layers`, position by position."""
    if not any(getattr(layer, "rate", None) is not None for layer in layers):
        return student
    return student.replace_layers([
        s._replace(rate=layer.rate) if s.t == 6 and getattr(layer, "rate", None) is not None
        else s for s, layer in zip(student.layers, layers, strict=True)])
