"""A tiny deterministic, learnable image dataset for tests: per-class smooth patterns plus noise."""

from __future__ import annotations

import numpy as np

from ac_jax.data.dataset import Dataset

_WAVES = 4  # cosines summed per class and channel
_MAX_FREQ = 2  # cycles per image: low enough that small convs and pooling keep the signal
_CONTRAST = 40.0  # pattern amplitude (std, in pixel levels) around mid-grey
_NOISE = 40.0  # per-pixel Gaussian noise std: as large as the pattern, so one pixel is ambiguous
_JITTER = 30.0  # per-image brightness offset std, so a class is not one brightness level


def class_patterns(input_shape: tuple[int, int, int], num_classes: int,
                   rng: np.random.Generator) -> np.ndarray:
    """[num_classes, H, W, C] float patterns with zero mean and unit std each."""
    h, w, c = input_shape
    yy, xx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    freqs = rng.integers(0, _MAX_FREQ + 1, size=(num_classes, c, _WAVES, 2))
    freqs[..., 0] = np.maximum(freqs[..., 0], 1 - freqs[..., 1])  # no constant (0, 0) wave
    phases = rng.uniform(0, 2 * np.pi, size=(num_classes, c, _WAVES))
    angle = 2 * np.pi * (freqs[..., 0, None, None] * yy + freqs[..., 1, None, None] * xx)
    patterns = np.cos(angle + phases[..., None, None]).sum(axis=2)  # [classes, C, H, W]
    patterns -= patterns.mean(axis=(2, 3), keepdims=True)
    patterns /= patterns.std(axis=(2, 3), keepdims=True) + 1e-8
    return patterns.transpose(0, 2, 3, 1)


def _draw(patterns: np.ndarray, n: int, rng: np.random.Generator):
    num_classes = len(patterns)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)  # balanced
    images = 128.0 + _CONTRAST * patterns[labels]
    images += _JITTER * rng.standard_normal((n, 1, 1, 1))
    images += _NOISE * rng.standard_normal(images.shape)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels


def synthetic(num_train: int = 512, num_test: int = 256,
              input_shape: tuple[int, int, int] = (12, 12, 1), num_classes: int = 4,
              seed: int = 0) -> Dataset:
    """A balanced dataset whose class ``k`` images are pattern ``k`` + brightness jitter + noise.

    Same arguments give the same arrays. The per-pixel noise equals the pattern's contrast, so
    single pixels are unreliable but whole images are easy: a linear model or a small conv net
    gets well above chance within a few epochs.
    """
    rng = np.random.default_rng(seed)
    patterns = class_patterns(tuple(input_shape), num_classes, rng)
    train_x, train_y = _draw(patterns, num_train, rng)
    test_x, test_y = _draw(patterns, num_test, rng)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, num_classes=num_classes)
