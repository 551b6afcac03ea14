"""Scaling of the ``[T, 5]`` layer matrices into the surrogate's float input and back.

The five integer fields live on very different scales (types 0..8, kernels and strides 1..10,
out-channels up to 4096), so each is mapped to roughly [0, 1] before the 1-D CNN sees it:

| channel | value                  | scaled as          | rounded back as                 |
|---------|------------------------|--------------------|---------------------------------|
| 0       | type t                 | t / 8              | round(8 x), clipped to 0..8     |
| 1       | kernel k               | k / 10             | round(10 x)                     |
| 2       | out channels o         | log2(1 + o) / 12   | round(2^(12 x) - 1)             |
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


def encode_matrices(mats: np.ndarray) -> np.ndarray:
    """``[..., T, 5]`` integer layer matrices (t = 0 rows are padding) -> ``[..., T, 6]`` float32."""
    mats = np.asarray(mats, dtype=np.float64)
    present = (mats[..., 0] > 0).astype(np.float64)
    # A zero row anywhere means end of sequence: everything after it is padding too.
    present = np.cumprod(present, axis=-1)
    feats = np.stack(
        [
            mats[..., 0] / _TYPE_SCALE,
            mats[..., 1] / _KERNEL_SCALE,
            np.log2(1.0 + np.maximum(mats[..., 2], 0.0)) / _LOG_CHANNEL_SCALE,
            mats[..., 3] / _STRIDE_SCALE,
            mats[..., 4] / _PAD_SCALE,
            present,
        ],
        axis=-1,
    )
    return (feats * present[..., None]).astype(np.float32)


def decode_features(feats: np.ndarray) -> np.ndarray:
    """``[..., T, 6]`` floats -> ``[..., T, 5]`` int64 matrices (rows after the end are zero).

    Only rounds and clips to the representable ranges; `legalize` makes the result valid.
    """
    feats = np.asarray(feats, dtype=np.float64)
    present = np.cumprod(feats[..., 5] > 0.5, axis=-1).astype(bool)
    t = np.clip(np.rint(feats[..., 0] * _TYPE_SCALE), 1, 8)
    k = np.clip(np.rint(feats[..., 1] * _KERNEL_SCALE), 0, 99)
    log_o = np.clip(feats[..., 2] * _LOG_CHANNEL_SCALE, 0.0, 16.0)
    o = np.rint(np.exp2(log_o) - 1.0)
    s = np.clip(np.rint(feats[..., 3] * _STRIDE_SCALE), 0, 99)
    p = np.clip(np.rint(feats[..., 4] * _PAD_SCALE), 0, 99)
    mats = np.stack([t, k, o, s, p], axis=-1).astype(np.int64)
    return np.where(present[..., None], mats, 0)
