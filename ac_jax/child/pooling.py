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


def _pad_and_window(x, k: int, padding: int):
    """-inf padding and the number of whole k x k windows along H and W."""
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                    constant_values=-jnp.inf)
    return x, x.shape[1] // k, x.shape[2] // k


def _first_max(slices):
    """Elementwise maximum of `slices` and the index of the first slice holding it."""
    best, index = slices[0], jnp.zeros(slices[0].shape, jnp.int8)
    for n, candidate in enumerate(slices[1:], start=1):
        take = candidate > best
        best = jnp.where(take, candidate, best)
        index = jnp.where(take, jnp.int8(n), index)
    return best, index


def tiled_max_pool(x, kernel_size: int, padding: int):
    """Max pool with stride == kernel size (windows tile the input; the usual 2x2/2 case).

    Same values as `strided_max_pool`. Its gradient goes to the first maximum of each window in
    row-major order, as PyTorch's MaxPool2d does, and is computed in one elementwise pass: the
    window's argmax (int8, saved by the forward) compared with each pixel's position in its
    window. Autodiff of the slices instead builds the gradient from k*k padded scatters, which XLA
    fuses with the recomputed BatchNorm/ReLU forward k*k times over (101 ms per 2x2 pool of
    [5, 64, 28, 28, 64] inside a CONV-7 step on the 2-core CPU)."""
    return _tiled(x, kernel_size, padding, x.shape[1], x.shape[2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _tiled(x, k: int, padding: int, in_h: int, in_w: int):
    return _tiled_forward(x, k, padding, in_h, in_w)[0]


def _tiled_forward(x, k: int, padding: int, in_h: int, in_w: int):
    padded, out_h, out_w = _pad_and_window(x, k, padding)
    return _first_max(window_slices(padded, k, k, out_h, out_w))


def _tiled_backward(k: int, padding: int, in_h: int, in_w: int, index, grad_y):
    b, out_h, out_w, c = grad_y.shape
    position = (jnp.arange(k)[:, None] * k + jnp.arange(k)[None, :]).astype(jnp.int8)
    position = position.reshape(1, 1, k, 1, k, 1)  # each pixel's index within its window
    hit = index[:, :, None, :, None, :] == position
    grad = jnp.where(hit, grad_y[:, :, None, :, None, :], 0).astype(grad_y.dtype)
    grad = grad.reshape(b, out_h * k, out_w * k, c)
    h, w = in_h + 2 * padding, in_w + 2 * padding
    grad = jnp.pad(grad, ((0, 0), (0, h - out_h * k), (0, w - out_w * k), (0, 0)))
    return (grad[:, padding : h - padding, padding : w - padding, :],)


_tiled.defvjp(_tiled_forward, _tiled_backward)


def max_pool(x, kernel_size: int, stride: int, padding: int, impl: str = "auto"):
    """`impl`: "slices" (`tiled_max_pool` when stride == kernel size, else `strided_max_pool`),
    "xla" (`reduce_window`), "auto" (slices on CPU, xla elsewhere)."""
    if impl == "auto":
        impl = "slices" if jax.default_backend() == "cpu" else "xla"
    if impl == "slices":
        if stride == kernel_size:
            return tiled_max_pool(x, kernel_size, padding)
        return strided_max_pool(x, kernel_size, stride, padding)
    if impl == "xla":
        p = padding
        return nn.max_pool(x, (kernel_size, kernel_size), strides=(stride, stride),
                           padding=((p, p), (p, p)))
    raise ValueError(f"unknown max-pool impl {impl!r}; use 'auto', 'slices' or 'xla'")
