"""2-D convolution implementations, chosen per backend and layer by `conv2d(impl="auto")`.

On CPU the fast path is oneDNN's convolutions called through XLA's FFI (`onednn.py`). Without it
(no compiler or oneDNN) and for input layers with few channels, an im2col formulation: XLA:CPU
runs the vmapped-seeds convolution as a naive grouped loop and lowers its *weight* gradient (a
convolution with non-canonical dimension labels) to a naive loop, which inside `lax.scan` made a
CONV-7 training step about 28x slower; ``patches @ kernel`` is a batched matmul instead. On GPUs
XLA's own convolution (cuDNN) is used unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ac_jax.arch.shapes import conv_output_size
from ac_jax.child import onednn

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, kernel, stride: int, padding: int):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        ((padding, padding), (padding, padding)),
        dimension_numbers=_DIMENSIONS,
    )


def window_slices(x, kernel_size: int, stride: int, out_h: int, out_w: int) -> list:
    """The k*k strided slices ``[B, out_h, out_w, C]`` of an already padded ``[B, H, W, C]``
    input, one per window offset (row, col): slice (i, j) holds element (i, j) of every window."""
    k, s = kernel_size, stride
    return [
        x[:, i : i + s * (out_h - 1) + 1 : s, j : j + s * (out_w - 1) + 1 : s, :]
        for i in range(k)
        for j in range(k)
    ]


def image_patches(x, kernel_size: int, stride: int, padding: int, out_h: int, out_w: int):
    """``[B, H, W, C] -> [B, out_h, out_w, k*k*C]``, patch features ordered (row, col, channel)."""
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    columns = window_slices(x, kernel_size, stride, out_h, out_w)
    return jnp.concatenate(columns, axis=-1) if len(columns) > 1 else columns[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_im2col_grad(x, kernel, stride: int, padding: int):
    return _xla_conv(x, kernel, stride, padding)


def _forward(x, kernel, stride, padding):
    return _xla_conv(x, kernel, stride, padding), (x, kernel)


def _backward(stride, padding, residuals, grad_out):
    x, kernel = residuals
    k, _, c, o = kernel.shape
    _, out_h, out_w, _ = grad_out.shape
    patches = image_patches(x, k, stride, padding, out_h, out_w).reshape(-1, k * k * c)
    grad_out_flat = grad_out.reshape(-1, o).astype(patches.dtype)
    grad_kernel = (patches.T @ grad_out_flat).reshape(k, k, c, o).astype(kernel.dtype)
    _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel, stride, padding), x)
    return input_vjp(grad_out)[0], grad_kernel


_conv_im2col_grad.defvjp(_forward, _backward)


def _im2col_conv(x, kernel, stride: int, padding: int):
    k, _, c, o = kernel.shape
    b, h, w, _ = x.shape
    out_h, out_w = (conv_output_size(n, k, stride, padding) for n in (h, w))
    patches = image_patches(x, k, stride, padding, out_h, out_w)
    return (patches.reshape(-1, k * k * c) @ kernel.reshape(k * k * c, o)).reshape(
        b, out_h, out_w, o
    )


def conv2d(x, kernel, stride: int, padding: int, impl: str = "auto", bias=None):
    """NHWC x HWIO convolution, plus `bias` ``[O]`` when given.

    `impl`: "xla" (lax.conv and its autodiff), "im2col_grad" (lax.conv forward, im2col weight
    gradient), "im2col" (patches @ kernel; under `vmap` over seeds it is a batched matmul
    instead of a grouped convolution, which XLA:CPU runs slowly), "onednn" (oneDNN convolutions as
    XLA FFI calls, float32 on CPU, oneDNN's choice of algorithm: Winograd for 3x3 stride-1
    layers; `onednn.py`), "onednn_direct" (the same, always oneDNN's direct convolution, as
    PyTorch runs), or "auto": on CPU "onednn" where it is built and the layer suits it
    (`auto_cpu_impl`), else "im2col"; "xla" on GPUs.
    """
    if impl == "auto":
        impl = auto_cpu_impl(x, kernel) if jax.default_backend() == "cpu" else "xla"
    if impl in ("onednn", "onednn_direct"):
        algorithm = "direct" if impl == "onednn_direct" else "auto"
        if bias is None:
            bias = jnp.zeros(kernel.shape[-1:], jnp.float32)
        f32 = jnp.float32
        return onednn.conv2d(x.astype(f32), kernel.astype(f32), bias.astype(f32), stride, padding,
                             algorithm)
    if impl == "im2col":
        y = _im2col_conv(x, kernel, stride, padding)
    elif impl == "im2col_grad":
        y = _conv_im2col_grad(x, kernel, stride, padding)
    elif impl == "xla":
        y = _xla_conv(x, kernel, stride, padding)
    else:
        raise ValueError(
            f"unknown conv impl {impl!r}; use 'auto', 'onednn', 'onednn_direct', 'im2col', "
            "'im2col_grad' or 'xla'"
        )
    return y if bias is None else y + bias


# Below this many input channels im2col's single matmul beats a direct convolution (the input
# layer: 1 or 3 channels); see BENCHMARKS.md, per-layer table.
ONEDNN_MIN_CHANNELS = 16


def auto_cpu_impl(x, kernel) -> str:
    """The CPU implementation "auto" picks for this layer: "onednn" for float32 layers with at
    least ONEDNN_MIN_CHANNELS input channels when the library is built, else "im2col"."""
    wide = kernel.shape[-2] >= ONEDNN_MIN_CHANNELS
    if wide and x.dtype == jnp.float32 and kernel.dtype == jnp.float32 and onednn.available():
        return "onednn"
    return "im2col"
