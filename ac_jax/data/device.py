"""On-device preprocessing in JAX: normalisation and CIFAR-style random crop + flip augmentation."""

# All functions are pure and jit/vmap friendly (no Python control flow on traced values); `pad` and
# `augment` are static Python values.

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def normalize(x: jax.Array) -> jax.Array:
    """Pixels 0..255 (any dtype) -> float32 ``x / 255 - 0.5``, in [-0.5, 0.5].

    This is the paper's normalisation: scale to [0, 1] then subtract the mean (0.5, 0.5, 0.5)
    per channel, with no division by a standard deviation.
    """
    return x.astype(jnp.float32) / 255.0 - 0.5


@functools.partial(jax.jit, static_argnames=("pad",))
def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Per image: a random HxW crop of the image zero-padded by ``pad`` on each side, then a
    horizontal flip with probability 0.5. ``images`` [B, H, W, C]; same shape and dtype out.
    """
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (images.shape[0], 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    cropped = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(flip_key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, cropped[:, :, ::-1, :], cropped)


@functools.partial(jax.jit, static_argnames=("augment",))
def preprocess(key: jax.Array, x: jax.Array, augment: bool) -> jax.Array:
    """A uint8 batch [B, H, W, C] -> float32 network input: augment (if ``augment``), normalize."""
    if augment:  # a static Python bool, not a traced value
        x = random_crop_flip(key, x)
    return normalize(x)
