"""The surrogate: residual 1-D CNN encoder/decoder plus accuracy and parameter regressors.

Paper Sections 4.1-4.2 and Appendix 8. The encoder maps a scaled ``[T, 6]`` layer sequence (see
`encoding`) to an embedding ``y`` of size `embed_dim`; the decoder mirrors it with transposed
convolutions back to ``[T, 6]`` (five fields plus the end-of-sequence channel). Residual blocks are
``x + relu(bn(conv(x)))``; a strided block adds a strided projection of its input instead
(Appendix 8's ``f_s(x, w_2, b_2)``).

The accuracy regressor is 3 fc-relu blocks and a sigmoid (paper). The parameter regressor is
3 fc-relu blocks and a *linear* output: the paper ends it with a ReLU, which cannot produce the
negative half of its own centred target ``(p - mean) / std``, so every below-average network
would be predicted as average and the compression gradient would vanish exactly where the
compressor is heading. A linear output has no such dead zone.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from ac_jax.surrogate.encoding import NUM_INPUT_FEATURES


@dataclasses.dataclass(frozen=True)
class SurrogateArch:
    """Shape of the surrogate network (hashable, stored with every checkpoint)."""

    max_len: int = 64  # T; must be divisible by 2**len(widths)
    widths: tuple[int, ...] = (32, 64, 128)  # one strided stage per entry
    kernel_size: int = 3
    embed_dim: int = 64
    regressor_hidden: int = 128
    # Accuracy heads (a deep ensemble from different initialisations, vmapped): their mean is
    # the prediction, their spread the uncertainty an acquisition reads. 1 is the paper's.
    ensemble: int = 1

    def __post_init__(self):
        if self.max_len % (2 ** len(self.widths)):
            raise ValueError(
                f"max_len={self.max_len} must be divisible by 2**{len(self.widths)} (one halving "
                "per stage)"
            )


class Conv1D(nn.Module):
    """1-D convolution, SAME padding, written as shifted slices + one matmul (im2col).

    XLA:CPU lowers the weight gradient of `lax.conv_general_dilated` inside `lax.scan` to a slow
    naive loop (measured: ~1.5 s per surrogate step on 2 cores); slices and an einsum stay fast on
    every backend. `transpose=True` is the transposed convolution: the input is upsampled by
    inserting zeros between time steps (stride - 1 of them) and then convolved.
    """

    features: int
    kernel_size: int
    stride: int = 1
    transpose: bool = False

    @nn.compact
    def __call__(self, x):  # [B, T, C]
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        stride = self.stride
        if self.transpose and stride > 1:
            b, t, c = x.shape
            zeros = jnp.zeros((b, t, stride - 1, c), x.dtype)
            x = jnp.concatenate([x[:, :, None], zeros], axis=2).reshape(b, t * stride, c)
            stride = 1
        length = x.shape[1]
        left = (k - 1) // 2
        padded = jnp.pad(x, ((0, 0), (left, k - 1 - left), (0, 0)))
        patches = jnp.stack([padded[:, i : i + length : stride] for i in range(k)], axis=2)
        return jnp.einsum("btkc,kcf->btf", patches, kernel) + bias


class ResBlock(nn.Module):
    """Appendix 8: ``x + relu(bn(conv(x)))``, with a strided (or transposed) projected shortcut."""

    features: int
    kernel_size: int
    stride: int = 1
    transpose: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        def conv(inputs):
            return Conv1D(self.features, self.kernel_size, self.stride, self.transpose)(inputs)

        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(conv(x)))
        if self.stride != 1 or x.shape[-1] != self.features:
            x = conv(x)
        return h + x


class Encoder(nn.Module):
    arch: SurrogateArch

    @nn.compact
    def __call__(self, x, train: bool):  # [B, T, 6] -> [B, embed_dim]
        a = self.arch
        h = Conv1D(a.widths[0], a.kernel_size)(x)
        for width in a.widths:
            h = ResBlock(width, a.kernel_size)(h, train)
            h = ResBlock(width, a.kernel_size, stride=2)(h, train)
        return nn.Dense(a.embed_dim)(h.reshape(h.shape[0], -1))


class Decoder(nn.Module):
    arch: SurrogateArch

    @nn.compact
    def __call__(self, y, train: bool):  # [B, embed_dim] -> [B, T, 6]
        a = self.arch
        reduced_len = a.max_len // 2 ** len(a.widths)
        h = nn.Dense(reduced_len * a.widths[-1])(y).reshape(y.shape[0], reduced_len, a.widths[-1])
        for width in reversed(a.widths):
            h = ResBlock(width, a.kernel_size, stride=2, transpose=True)(h, train)
            h = ResBlock(width, a.kernel_size, transpose=True)(h, train)
        return Conv1D(NUM_INPUT_FEATURES, a.kernel_size)(h)


class Regressor(nn.Module):
    """3 fc-relu blocks then one output unit (sigmoid for accuracy, linear for parameters)."""

    hidden: int
    sigmoid: bool

    @nn.compact
    def __call__(self, y):  # [B, embed_dim] -> [B]
        h = y
        for _ in range(3):
            h = nn.relu(nn.Dense(self.hidden)(h))
        out = nn.Dense(1)(h)[..., 0]
        return nn.sigmoid(out) if self.sigmoid else out


class Surrogate(nn.Module):
    """Encoder, decoder and both regressors; `__call__` runs all four (for `init` and training)."""

    arch: SurrogateArch

    def setup(self):
        self.encoder = Encoder(self.arch)
        self.decoder = Decoder(self.arch)
        hidden = self.arch.regressor_hidden
        if self.arch.ensemble == 1:  # the paper's single head (and its parameter names)
            self.accuracy = Regressor(hidden, sigmoid=True)
        else:
            heads = nn.vmap(Regressor, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=None, axis_size=self.arch.ensemble)
            self.accuracy = heads(hidden, sigmoid=True)
        self.params_regressor = Regressor(hidden, sigmoid=False)

    def accuracy_heads(self, y):
        """Every accuracy head's prediction, ``[heads, B]``."""
        acc = self.accuracy(y)
        return acc[None] if self.arch.ensemble == 1 else acc

    def __call__(self, x, train: bool = False):
        """(reconstruction, accuracy heads ``[heads, B]``, normalised params, embedding)."""
        y = self.encoder(x, train)
        return self.decoder(y, train), self.accuracy_heads(y), self.params_regressor(y), y

    def encode(self, x):
        return self.encoder(x, False)

    def decode(self, y):
        return self.decoder(y, False)

    def predict(self, y):
        """(accuracy, normalised parameter count) predicted from embeddings ``[B, embed_dim]``
        (the accuracy heads' mean)."""
        return self.accuracy_heads(y).mean(axis=0), self.params_regressor(y)

    def predict_spread(self, y):
        """(mean accuracy, its spread over the heads (0 for one head), normalised params)."""
        heads = self.accuracy_heads(y)
        return heads.mean(axis=0), heads.std(axis=0), self.params_regressor(y)


def count_params(params) -> int:
    import jax

    return int(sum(jnp.size(v) for v in jax.tree.leaves(params)))
