"""Max pooling whose gradient is elementwise (fast on XLA:CPU).

`flax.linen.max_pool` is `lax.reduce_window`, whose gradient XLA lowers to select-and-scatter;
XLA:CPU runs that slowly, and more so with the seeds axis vmapped: a 2x2/2 pool over
``[5 seeds, 64, 28, 28, 64]`` took 204 ms forward+backward inside `lax.scan`, against 32 ms when the
pool is written as the maximum of its k*k strided slices (measured on the 2-core CPU, 2026-11-23).
Both give the same forward values (padding is -inf, as in PyTorch's MaxPool2d); their gradients
differ only where a window holds tied maxima (any split of the gradient between ties is a valid
subgradient). On GPUs `reduce_window` is kept.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ac_jax.child.conv import window_slices


def strided_max_pool(x, kernel_size: int, stride: int, padding: int):
    """``[B, H, W, C]`` max pool as the maximum over the window's k*k strided slices."""
    k, s = kernel_size, stride
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                    constant_values=-jnp.inf)
    out_h = (x.shape[1] - k) // s + 1
    out_w = (x.shape[2] - k) // s + 1
    return functools.reduce(jnp.maximum, window_slices(x, k, s, out_h, out_w))


def max_pool(x, kernel_size: int, stride: int, padding: int, impl: str = "auto"):
    """`impl`: "slices" (`strided_max_pool`), "xla" (`reduce_window`), "auto" (slices on CPU)."""
    if impl == "auto":
        impl = "slices" if jax.default_backend() == "cpu" else "xla"
    if impl == "slices":
        return strided_max_pool(x, kernel_size, stride, padding)
    if impl == "xla":
        p = padding
        return nn.max_pool(x, (kernel_size, kernel_size), strides=(stride, stride),
                           padding=((p, p), (p, p)))
    raise ValueError(f"unknown max-pool impl {impl!r}; use 'auto', 'slices' or 'xla'")
