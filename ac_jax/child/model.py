"""The child network: a Flax module built from an `Arch`, with the PyTorch export's semantics.

Same layers, shapes, parameter count and default initialisation as the exported PyTorch module
(Conv/Linear weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), BatchNorm scale 1 and bias 0,
momentum 0.1 in PyTorch's convention, eps 1e-5). Layout is NHWC, so the implicit flatten before the
first Linear orders features (H, W, C) instead of PyTorch's (C, H, W): parameter counts and
function class are identical, weight tensors are permutations of each other.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ac_jax.arch import shapes
from ac_jax.arch.spec import Arch, LayerType
from ac_jax.child.conv import conv2d
from ac_jax.child.pooling import max_pool

# PyTorch's default kaiming_uniform(a=sqrt(5)) is U(-b, b) with b = 1 / sqrt(fan_in).
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv(nn.Module):
    """Square Conv2d with bias (PyTorch's default init); see `conv.conv2d` for `impl`."""

    features: int
    kernel_size: int
    stride: int
    padding: int
    dtype: jnp.dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        k, c = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", _torch_kernel_init, (k, k, c, self.features))
        bias = self.param("bias", _torch_bias_init(k * k * c), (self.features,))
        return conv2d(x, kernel.astype(self.dtype), self.stride, self.padding, self.impl,
                      bias.astype(self.dtype))


def _mix32(h):
    """murmur3's 32-bit finaliser: every output bit depends on every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def keep_mask(key_words, shape, rate: float):
    """Dropout's keep mask (True with probability 1 - `rate`) from a hash of each element's
    position and the two uint32 words of a threefry key.

    `flax.linen.Dropout` draws the mask with threefry, which on XLA:CPU cost 43 ms per
    [2 seeds, 64, 3, 3, 2363] mask (two such layers were 64% of an archset net's step); this hash
    takes 0.5 ms (2-core CPU, 2026-12-01). Masks differ per key (per seed and step) and per
    position; they are not the ones threefry would draw, so a network with dropout trains to a
    different, equally likely result than before 2026-12.
    """
    size = int(np.prod(shape, dtype=np.int64))
    position = jax.lax.iota(jnp.uint32, size).reshape(shape)
    h = _mix32(position ^ key_words[0])
    h = _mix32(h + key_words[1])
    threshold = jnp.uint32(min(int(round(rate * 2.0**32)), 2**32 - 1))
    return h >= threshold


class HashDropout(nn.Module):
    """PyTorch's Dropout (inverted: kept values scaled by 1 / (1 - rate)) with `keep_mask`."""

    rate: float
    deterministic: bool

    @nn.compact
    def __call__(self, x):
        if self.deterministic or self.rate == 0:
            return x
        key = self.make_rng("dropout")
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        keep = keep_mask(key.reshape(-1)[:2].astype(jnp.uint32), x.shape, self.rate)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros((), x.dtype)).astype(x.dtype)


class ChildNet(nn.Module):
    """Applies the layers of `arch` to NHWC float images; returns logits ``[B, num_classes]``."""

    arch: Arch
    dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32
    conv_impl: str = "auto"
    pool_impl: str = "auto"  # ac_jax.child.pooling.max_pool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        shapes.validate(self.arch)
        x = x.astype(self.dtype)
        for layer in self.arch.layers:
            t, k, o, s, p = layer
            if t == LayerType.CONV:
                x = Conv(o, k, s, p, self.dtype, self.conv_impl)(x)
            elif t == LayerType.MAXPOOL:
                x = max_pool(x, k, s, p, self.pool_impl)
            elif t == LayerType.AVGPOOL:
                x = nn.avg_pool(
                    x, (k, k), strides=(s, s), padding=((p, p), (p, p)), count_include_pad=True
                )
            elif t == LayerType.BATCHNORM:
                x = nn.BatchNorm(
                    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
                )(x)
            elif t == LayerType.RELU:
                x = nn.relu(x)
            elif t == LayerType.SIGMOID:
                x = nn.sigmoid(x)
            elif t == LayerType.DROPOUT:
                if p > 0:
                    x = HashDropout(layer.dropout_rate, deterministic=not train)(x)
            elif t == LayerType.LINEAR:
                if x.ndim > 2:
                    x = x.reshape(x.shape[0], -1)
                fan_in = x.shape[-1]
                x = nn.Dense(
                    o,
                    dtype=self.dtype,
                    kernel_init=_torch_kernel_init,
                    bias_init=_torch_bias_init(fan_in),
                )(x)
        return x.astype(jnp.float32)


def count_params(params) -> int:
    return sum(int(v.size) for v in jax.tree_util.tree_leaves(params))


def init_variables(arch: Arch, key: jax.Array, dtype=jnp.float32):
    """Flax variables (``params`` and, with BatchNorm, ``batch_stats``) for one network."""
    model = ChildNet(arch, dtype)
    dummy = jnp.zeros((1, *arch.input_shape), jnp.float32)
    return model.init({"params": key}, dummy, train=False)
