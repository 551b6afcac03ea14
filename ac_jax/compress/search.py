"""Gradient descent in the surrogate's embedding (paper Section 4.4, Algorithm 1 COMPRESS).

For each input network and each lambda of a grid, starting from ``y0 = encoder(x)``, K steps

    y <- y - eta * clip(d/dy [ L_a(acc(y), a0) + lambda * L_p(params(y), p0) ] / (1 + lambda))

run inside one `lax.scan` (the paper's eq. 18 prints ``+``; we descend the loss it defines). Both
the network axis and the lambda axis are `jax.vmap`ped, so one compiled call searches a whole
batch of networks over the whole lambda grid, and the decoder turns every visited embedding into a
``[T, 6]`` sequence, rounded to a ``[T, 5]`` integer matrix, legalized and canonicalized
(`arch.batch`, the same rules as on the host, traced with jax.numpy) in the same call, so the
host receives finished candidate matrices. Everything after that is discrete and exact
(`candidates`).

Anchored decoding (the default, `SearchConfig.anchored`): a visited embedding y becomes the
input's own features plus what the decoder changes between y0 and y,

    x(y) = x + (decoder(y) - decoder(y0)),

so step 0 is the input network exactly, whatever the decoder's reconstruction error (on the
shipped Fashion-MNIST surrogate, decoding CONV-7's own embedding gave a network with 0.11x its
parameters: the whole 9.18x "compression" it reported was decoder error). The decoder is read as a map of edits
around the input, not as a generator from scratch. A trust region keeps the walk within
`trust_radius` x |y0| of the start, where those edits are small enough for the decoder's local
picture and the regressors to mean something. ``anchored=False`` is the paper's plain decoding.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import optax

from ac_jax.arch.batch import batch_canonicalize, batch_legalize
from ac_jax.surrogate.checkpoint import TrainedSurrogate
from ac_jax.surrogate.encoding import decode_features
from ac_jax.surrogate.model import Surrogate


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Embedding-search settings (hashable: part of the compiled program's identity)."""

    steps: int = 60  # K gradient steps per (network, lambda)
    step_size: float = 0.5  # eta
    lambdas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    decode_every: int = 1  # decode every n-th visited embedding (the start is always decoded)
    accuracy_target: float = 1.0  # a0 (the paper's default: maximise accuracy)
    anchored: bool = True  # decode as edits of the input (step 0 is the input); False: paper
    # Walk radius, relative to |y0| (None: unbounded). Only bites when the steps add up to more.
    trust_radius: float | None = 0.5
    # "embedding": the regressors read y (paper); "decoded": they read encode(x(y)), the network
    # that y decodes to, so the walk is scored on what it will propose (needs `anchored`).
    objective: str = "embedding"

    def __post_init__(self):
        if self.objective not in ("embedding", "decoded"):
            raise ValueError(f"objective must be 'embedding' or 'decoded', got {self.objective!r}")
        if self.objective == "decoded" and not self.anchored:
            raise ValueError("objective='decoded' scores the anchored decoding; set anchored=True")
        if self.trust_radius is not None and not self.trust_radius > 0:
            raise ValueError(f"trust_radius must be > 0 or None, got {self.trust_radius}")

    @property
    def snapshots(self) -> int:
        return self.steps // self.decode_every + 1


def compression_loss(model, variables, y, lam, a0, p0):
    """Eq. 17, ``L_a(a, a0) + lambda * L_p(p, p0)`` (L1 and Huber), divided by ``1 + lambda``.

    The division keeps the minimisers of every lambda and makes the loss scale, hence a safe step
    size, the same across the grid (with a fixed eta, lambda = 10 otherwise overshoots and climbs).
    """
    acc, ptarget = model.apply(variables, y[None], method=Surrogate.predict)
    loss_a = jnp.abs(acc[0] - a0)
    loss_p = optax.huber_loss(ptarget[0], p0, delta=1.0)
    return (loss_a + lam * loss_p) / (1.0 + lam)


def _anchored(model, variables, x, y, dec0):
    """The anchored decoding ``x + decoder(y) - decoder(y0)`` of embeddings ``[B, E]``."""
    return x + model.apply(variables, y, method=Surrogate.decode) - dec0


def _trajectory(model, variables, cfg: SearchConfig, x, y0, lam, a0, p0):
    """Embeddings visited by K descent steps from `y0`: ``[snapshots, E]``."""
    if cfg.objective == "decoded":
        dec0 = model.apply(variables, y0[None], method=Surrogate.decode)

        def loss(y):
            feats = _anchored(model, variables, x[None], y[None], dec0)
            z = model.apply(variables, feats, method=Surrogate.encode)[0]
            return compression_loss(model, variables, z, lam, a0, p0)
    else:
        def loss(y):
            return compression_loss(model, variables, y, lam, a0, p0)
    grad = jax.grad(loss)

    def step(y, _):
        g = grad(y)
        # Steps never longer than eta: the regressors are only trustworthy near the archset.
        g = g / jnp.maximum(1.0, jnp.linalg.norm(g))
        y = y - cfg.step_size * g
        if cfg.trust_radius is not None:  # project back onto the ball around the start
            d = y - y0
            limit = cfg.trust_radius * jnp.linalg.norm(y0)
            y = y0 + d * jnp.minimum(1.0, limit / jnp.maximum(jnp.linalg.norm(d), 1e-12))
        return y, y

    _, ys = jax.lax.scan(step, y0, None, length=cfg.steps)
    ys = jnp.concatenate([y0[None], ys])
    return ys[:: cfg.decode_every]


@partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _search(model, variables, cfg: SearchConfig, input_shape, num_classes, feats, lambdas, a0, p0):
    y0 = model.apply(variables, feats, method=Surrogate.encode)  # [N, E]
    per_lambda = jax.vmap(
        lambda x, y, lam, a, p: _trajectory(model, variables, cfg, x, y, lam, a, p),
        in_axes=(None, None, 0, None, None),
    )
    ys = jax.vmap(per_lambda, in_axes=(0, 0, None, 0, 0))(feats, y0, lambdas, a0, p0)
    flat = ys.reshape(-1, ys.shape[-1])
    decoded = model.apply(variables, flat, method=Surrogate.decode)
    if cfg.anchored:
        dec0 = model.apply(variables, y0, method=Surrogate.decode)  # [N, T, 6]
        edits = decoded.reshape(*ys.shape[:3], *decoded.shape[1:]) - dec0[:, None, None]
        decoded = (feats[:, None, None] + edits).reshape(decoded.shape)
    shape = ys.shape[:3]
    mats = decode_features(decoded, jnp)  # rounded here: the host gets small uint16 matrices
    # At most the decoder's T rows (legalize keeps the last one for the final Linear and
    # canonicalize only drops rows), so every candidate fits the surrogate again.
    legal, lengths = batch_legalize(mats, input_shape, num_classes, max_len=mats.shape[1], xp=jnp)
    legal, lengths = batch_canonicalize(legal, lengths, xp=jnp)
    return {
        "y": ys,
        "decoded": decoded.reshape(*shape, *decoded.shape[1:]),  # [N, L, S, T, 6]
        "matrices": mats.reshape(*shape, *mats.shape[1:]),  # [N, L, S, T, 5] rounded, raw
        # Legal, canonical [N, L, S, T, 5] matrices (zero after `lengths` rows) and lengths.
        "candidates": legal.astype(jnp.uint16).reshape(*shape, *legal.shape[1:]),
        "lengths": lengths.reshape(shape),
    }


def search(surrogate: TrainedSurrogate, cfg: SearchConfig, feats, lambdas, a0, p0) -> dict:
    """Runs the batched search; ``feats [N, T, 6]``, ``lambdas [L]``, ``a0, p0 [N]``."""
    return _search(
        surrogate.model,
        surrogate.variables,
        cfg,
        tuple(surrogate.input_shape),
        int(surrogate.num_classes),
        jnp.asarray(feats, jnp.float32),
        jnp.asarray(lambdas, jnp.float32),
        jnp.asarray(a0, jnp.float32),
        jnp.asarray(p0, jnp.float32),
    )
