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


def _pad(x, padding: int):
    """-inf padding along H and W (PyTorch's MaxPool2d padding)."""
    if not padding:
        return x
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                   constant_values=-jnp.inf)


def strided_max_pool(x, kernel_size: int, stride: int, padding: int):
    """``[B, H, W, C]`` max pool as the maximum over strided slices, one axis at a time.

    A window's maximum is the maximum over its k rows of each row's maximum over k columns, so
    2k slices replace k*k (same values exactly). The program's size, and XLA's compile time,
    grows with the slices and their gradients: a 9x9/5 pool compiled 81 of each.
    """
    k, s = kernel_size, stride
    x = _pad(x, padding)
    out_h = (x.shape[1] - k) // s + 1
    out_w = (x.shape[2] - k) // s + 1
    columns = [x[:, :, j : j + s * (out_w - 1) + 1 : s, :] for j in range(k)]
    rows = functools.reduce(jnp.maximum, columns)  # [B, H, out_w, C]: max over each row's k
    return functools.reduce(
        jnp.maximum, [rows[:, i : i + s * (out_h - 1) + 1 : s] for i in range(k)]
    )


def _index_dtype(k: int):
    return jnp.int8 if k * k <= 127 else jnp.int32


def _first_max(slices, k: int):
    """Elementwise maximum of the k*k `slices` and the index of the first slice holding it."""
    dtype = _index_dtype(k)
    best, index = slices[0], jnp.zeros(slices[0].shape, dtype)
    for n, candidate in enumerate(slices[1:], start=1):
        take = candidate > best
        best = jnp.where(take, candidate, best)
        index = jnp.where(take, jnp.asarray(n, dtype), index)
    return best, index


def tiled_max_pool(x, kernel_size: int, padding: int):
    """Max pool with stride == kernel size (windows tile the input; the usual 2x2/2 case).

    Same values as `strided_max_pool`. Its gradient goes to the first maximum of each window in
    row-major order, as PyTorch's MaxPool2d does, and is computed in one elementwise pass: the
    window's argmax (int8 up to 11x11 windows, saved by the forward) compared with each pixel's
    position in its window. Autodiff of the slices instead builds the gradient from k*k padded
    scatters, which XLA fuses with the recomputed BatchNorm/ReLU forward k*k times over (101 ms
    per 2x2 pool of [5, 64, 28, 28, 64] inside a CONV-7 step on the 2-core CPU)."""
    return _tiled(x, kernel_size, padding, x.shape[1], x.shape[2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _tiled(x, k: int, padding: int, in_h: int, in_w: int):
    return _tiled_forward(x, k, padding, in_h, in_w)[0]


def _tiled_forward(x, k: int, padding: int, in_h: int, in_w: int):
    padded = _pad(x, padding)
    out_h, out_w = padded.shape[1] // k, padded.shape[2] // k  # whole windows
    return _first_max(window_slices(padded, k, k, out_h, out_w), k)


def _tiled_backward(k: int, padding: int, in_h: int, in_w: int, index, grad_y):
    b, out_h, out_w, c = grad_y.shape
    position = (jnp.arange(k)[:, None] * k + jnp.arange(k)[None, :]).astype(_index_dtype(k))
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
