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
        impl = auto_cpu_impl(x, kernel, stride) if jax.default_backend() == "cpu" else "xla"
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


# "auto" on CPU: im2col where its patches are small, oneDNN elsewhere. im2col's patches are a
# concatenation of k*k slices of C channels each, (k / stride)^2 times the input's size, which
# XLA:CPU writes slowly when C is small, and each slice adds to the compiled program. Measured for
# 2 seeds x 64 images, forward + both gradients (2-core CPU, 2026-12-01): a 6x6 conv over 6
# channels (216 patch features, as in archset neighbourhood nets) 290 ms with im2col against 78 ms
# with oneDNN, a 5x5 over 10 channels 390 ms against 98 ms, and im2col compiled in 1-2 s per layer
# against oneDNN's 0.1-0.4 s; at 9-36 features the two ran within 15% of each other, and where
# the stride is at least the kernel (patches no bigger than the input) im2col was as fast or
# faster (a 7x7/7 conv over 1 channel to 1,655: 56 ms against 128 ms). Before 2026-12 the rule
# was "im2col below 16 input channels", whatever the kernel.
IM2COL_MAX_PATCH = 36


def auto_cpu_impl(x, kernel, stride: int = 1) -> str:
    """The CPU implementation "auto" picks for this layer: "im2col" when a patch has at most
    IM2COL_MAX_PATCH features or the windows do not overlap (stride >= kernel size), else
    "onednn" for float32 layers when the library is built (else "im2col")."""
    k, _, c, _ = kernel.shape
    small_patches = k * k * c <= IM2COL_MAX_PATCH or stride >= k
    if small_patches or x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        return "im2col"
    return "onednn" if onednn.available() else "im2col"
