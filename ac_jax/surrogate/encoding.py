"""Scaling of the ``[T, 5]`` layer matrices into the surrogate's float input and back.

The five integer fields live on very different scales (types 0..8, kernels and strides 1..10,
out-channels up to 4096), so each is mapped to roughly [0, 1] before the 1-D CNN sees it:

| channel | value                  | scaled as          | rounded back as                 |
|---------|------------------------|--------------------|---------------------------------|
| 0       | type t                 | t / 8              | round(8 x), clipped to 0..8     |
| 1       | kernel k               | k / 10             | round(10 x)                     |
| 2       | out channels o         | log2(1 + o) / 12   | round(2^(12 x) - 1), <= 65535   |
| 3       | stride s               | s / 10             | round(10 x)                     |
| 4       | padding / dropout p    | p / 10             | round(10 x)                     |
| 5       | layer present (not EOS)| 1 or 0             | x > 0.5; the first 0 ends it    |

Out-channels are log-scaled because a relative error matters (16 vs 32 channels is as big a change
as 2048 vs 4096) and a linear scale would leave small widths indistinguishable. The sixth channel
is the end-of-sequence signal the decoder predicts, so the decoded length does not depend on a
rounded type happening to hit 0.

The reconstruction loss is measured in *rounding units* (`ROUNDING_UNIT_WEIGHTS`): the squared
error of each channel is multiplied by its scale squared, so an error of 1 means "one integer step"
(one type, one kernel size, one doubling of the channels) in every channel. Plain MSE on the
[0, 1]-scaled values would let the decoder stop at errors of a few integer steps in the kernel and
type fields, which round to the wrong layer.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_INPUT_FEATURES = 6
_TYPE_SCALE = 8.0
_KERNEL_SCALE = 10.0
_LOG_CHANNEL_SCALE = 12.0  # log2(1 + 4096) ~ 12
_STRIDE_SCALE = 10.0
_PAD_SCALE = 10.0
# Per-channel weights of the squared reconstruction error (see the module docstring); the
# end-of-sequence flag rounds at 0.5, so its weight 4 makes an error of 0.5 cost one unit too.
ROUNDING_UNIT_WEIGHTS = np.array(
    [_TYPE_SCALE**2, _KERNEL_SCALE**2, _LOG_CHANNEL_SCALE**2, _STRIDE_SCALE**2, _PAD_SCALE**2, 4.0],
    np.float32,
)


def _field_features(mats: np.ndarray) -> list[np.ndarray]:
    """The five scaled fields (float64) of ``[..., 5]`` float64 layer matrices."""
    return [
        mats[..., 0] / _TYPE_SCALE,
        mats[..., 1] / _KERNEL_SCALE,
        np.log2(1.0 + np.maximum(mats[..., 2], 0.0)) / _LOG_CHANNEL_SCALE,
        mats[..., 3] / _STRIDE_SCALE,
        mats[..., 4] / _PAD_SCALE,
    ]


def encode_matrices(mats: np.ndarray) -> np.ndarray:
    """``[..., T, 5]`` integer layer matrices (t = 0 rows are padding) -> ``[..., T, 6]`` float32."""
    mats = np.asarray(mats, dtype=np.float64)
    present = (mats[..., 0] > 0).astype(np.float64)
    # A zero row anywhere means end of sequence: everything after it is padding too.
    present = np.cumprod(present, axis=-1)
    feats = np.stack([*_field_features(mats), present], axis=-1)
    return (feats * present[..., None]).astype(np.float32)


ENCODABLE_VALUES = 2**16  # `encode_traced` reads fields 0..65535 (uint16 matrices)


@functools.cache
def encoding_tables() -> np.ndarray:
    """``[5, 65536]`` float32: `encode_matrices`' value of each field for each value 0..65535."""
    values = np.broadcast_to(np.arange(ENCODABLE_VALUES, dtype=np.float64)[:, None],
                             (ENCODABLE_VALUES, 5))
    return np.stack(_field_features(values)).astype(np.float32)


def encode_traced(mats, tables):
    """`encode_matrices` in a compiled program: ``[..., T, 5]`` integers in 0..65535 (the
    search's uint16 candidate matrices) -> ``[..., T, 6]`` float32, equal bit for bit.

    Every field is looked up in `tables` (`encoding_tables()`, made by the NumPy code itself)
    instead of recomputed, because float32 division and `log2` in a compiled program need not
    round like NumPy's float64 ones followed by the cast. Values outside the tables give NaN.
    """
    import jax.numpy as jnp

    index = mats.astype(jnp.int32)
    present = jnp.cumprod((index[..., 0] > 0).astype(jnp.float32), axis=-1)
    fields = [jnp.take(tables[f], index[..., f], mode="fill", fill_value=jnp.nan)
              for f in range(5)]
    # x * 1.0 and x * 0.0 are exact, as in the float64 code (fields are never negative here).
    return jnp.stack([*fields, present], axis=-1) * present[..., None]


# Out-channel rounding as a table: round(2^(12 x) - 1) >= n exactly when
# x >= log2(n + 0.5) / 12, so the decoded count is the number of these float32 thresholds at or
# below x. Comparisons are exact, so NumPy and a compiled program agree bit for bit, which
# float32 `exp2` (its last bit differs between libraries) would not guarantee near a .5 boundary.
_MAX_DECODED_CHANNELS = 2**16 - 1
_CHANNEL_THRESHOLDS = (
    np.log2(np.arange(1, _MAX_DECODED_CHANNELS + 1) + 0.5) / _LOG_CHANNEL_SCALE
).astype(np.float32)


def decode_features(feats, xp=np):
    """``[..., T, 6]`` floats -> ``[..., T, 5]`` integer matrices (rows after the end are zero).

    Only rounds and clips to the representable ranges; `legalize` makes the result valid.
    `xp` is the array module: NumPy (int64 result) or `jax.numpy` (uint16: every field fits, and
    it is what the compression search, which rounds inside its compiled program, copies to the
    host: 2.4x fewer bytes than the float sequences). Both compute in float32, the decoder's
    precision, with the same exactly rounded operations (scalings by 8 and 10, `rint`,
    comparisons), so they agree exactly.
    """
    if xp is np:
        feats, int_type = np.asarray(feats, dtype=np.float32), np.int64
    else:
        feats, int_type = feats.astype(xp.float32), xp.uint16
    present = xp.cumprod((feats[..., 5] > 0.5).astype(xp.int32), axis=-1) > 0
    t = xp.clip(xp.rint(feats[..., 0] * _TYPE_SCALE), 1, 8)
    k = xp.clip(xp.rint(feats[..., 1] * _KERNEL_SCALE), 0, 99)
    o = xp.searchsorted(xp.asarray(_CHANNEL_THRESHOLDS), feats[..., 2], side="right")
    s = xp.clip(xp.rint(feats[..., 3] * _STRIDE_SCALE), 0, 99)
    p = xp.clip(xp.rint(feats[..., 4] * _PAD_SCALE), 0, 99)
    mats = xp.stack([f.astype(int_type) for f in (t, k, o, s, p)], axis=-1)
    return xp.where(present[..., None], mats, xp.zeros((), int_type))
