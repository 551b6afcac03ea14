"""Vectorised (NumPy, over a batch of ``[T, 5]`` matrices) shape analysis and legalisation.

The sampler draws thousands of candidate matrices at once and the compressor decodes one per
gradient step, network and lambda, so both passes below walk the T layer positions once with
whole-batch array operations instead of looping over architectures in Python. `shapes.analyze` is
the readable single-architecture reference; tests check that both agree.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ac_jax.arch.spec import MAX_DROPOUT_FIELD, LayerType

_T = LayerType


@dataclasses.dataclass(frozen=True)
class FieldRanges:
    """Ranges `legalize` clamps to; the defaults are the Appendix 9 sampling ranges."""

    max_kernel: int = 10
    max_stride: int = 10
    max_padding: int = 10
    max_channels: int = 4096


DEFAULT_RANGES = FieldRanges()


@dataclasses.dataclass(frozen=True)
class BatchAnalysis:
    valid: np.ndarray  # [N] bool
    num_params: np.ndarray  # [N] int64 (0 where invalid)
    macs: np.ndarray  # [N] int64 (0 where invalid)
    num_conv: np.ndarray  # [N] int64
    lengths: np.ndarray  # [N] int64: rows before the first t == 0


def _lengths(types: np.ndarray) -> np.ndarray:
    ended = np.cumsum(types == _T.END, axis=1) > 0
    return (~ended).sum(axis=1)


def batch_analyze(
    mats: np.ndarray, input_shape: Sequence[int], num_classes: int
) -> BatchAnalysis:
    """Validity, exact parameter count and MACs of each ``[T, 5]`` matrix (strict: no fixing).

    Same rules as `shapes.analyze`, including that unused fields are 0 and the last layer is
    Linear with `num_classes` outputs. Channel-repeating `o` fields are not checked (they are
    derived; `Arch` fills them in).
    """
    mats = np.asarray(mats, dtype=np.int64)
    n, rows, _ = mats.shape
    h0, w0, c0 = (int(v) for v in input_shape)
    h = np.full(n, h0, np.int64)
    w = np.full(n, w0, np.int64)
    c = np.full(n, c0, np.int64)  # channels, or features once flat
    flat = np.zeros(n, bool)
    valid = np.ones(n, bool)
    params = np.zeros(n, np.int64)
    macs = np.zeros(n, np.int64)
    num_conv = np.zeros(n, np.int64)
    lengths = _lengths(mats[:, :, 0])
    last = np.zeros((n, 5), np.int64)
    for j in range(int(lengths.max(initial=0))):  # rows after every sequence's end change nothing
        active = j < lengths
        t, k, o, s, p = (mats[:, j, f] for f in range(5))
        is_conv = t == _T.CONV
        is_pool = (t == _T.MAXPOOL) | (t == _T.AVGPOOL)
        is_spatial = is_conv | is_pool
        is_linear = t == _T.LINEAR
        is_elementwise = (t >= _T.BATCHNORM) & (t <= _T.DROPOUT)
        bad = (t < 0) | (t > _T.LINEAR)
        bad |= is_spatial & (flat | (k < 1) | (s < 1) | (p < 0))
        bad |= is_pool & (p > k // 2)
        bad |= (is_conv | is_linear) & (o < 1)
        bad |= (is_linear | is_elementwise) & ((k != 0) | (s != 0))
        bad |= (is_linear | (is_elementwise & (t != _T.DROPOUT))) & (p != 0)
        bad |= (t == _T.DROPOUT) & ((p < 0) | (p > MAX_DROPOUT_FIELD))
        out_h = (h + 2 * p - k) // np.maximum(s, 1) + 1
        out_w = (w + 2 * p - k) // np.maximum(s, 1) + 1
        bad |= is_spatial & ((out_h < 1) | (out_w < 1))
        valid &= ~(active & bad)
        ok = active & ~bad
        features = np.where(flat, c, h * w * c)
        layer_params = np.select(
            [is_conv, is_linear, t == _T.BATCHNORM],
            [k * k * c * o + o, features * o + o, 2 * c],
            0,
        )
        layer_macs = np.select([is_conv, is_linear], [k * k * c * o * out_h * out_w, features * o], 0)
        params += np.where(ok, layer_params, 0)
        macs += np.where(ok, layer_macs, 0)
        num_conv += ok & is_conv
        spatial_ok = ok & is_spatial
        h = np.where(spatial_ok, out_h, h)
        w = np.where(spatial_ok, out_w, w)
        c = np.where(ok & (is_conv | is_linear), o, c)
        flat |= ok & is_linear
        last = np.where(active[:, None], mats[:, j], last)
    valid &= lengths > 0
    valid &= (last[:, 0] == _T.LINEAR) & (last[:, 2] == num_classes)
    return BatchAnalysis(
        valid=valid,
        num_params=np.where(valid, params, 0),
        macs=np.where(valid, macs, 0),
        num_conv=np.where(valid, num_conv, 0),
        lengths=lengths,
    )


def batch_legalize(
    mats: np.ndarray,
    input_shape: Sequence[int],
    num_classes: int,
    max_len: int | None = None,
    ranges: FieldRanges = DEFAULT_RANGES,
) -> tuple[np.ndarray, np.ndarray]:
    """Turns any integer ``[N, T, 5]`` batch into valid architectures; returns (mats, lengths).

    Rules, applied left to right with the running shape (deterministic and idempotent):
      1. Types are clipped to 0..8; the first 0 ends the sequence.
      2. k, s are clipped to [1, max] for Conv and pooling, p to [0, max_padding] (pooling: to
         [0, k // 2], PyTorch's limit); o of Conv and Linear to [1, max_channels]; the Dropout
         field to 0..9; unused fields become 0; channel-repeating `o` fields get the input's count.
      3. A Conv or pooling layer after the first Linear, or whose output would be smaller than
         1x1, is dropped.
      4. The last layer becomes Linear with `num_classes` outputs: a trailing Linear is resized,
         otherwise one is appended (or, if `max_len` rows are already used, replaces the last).
    Returns int64 matrices of `max_len` rows (default: T + 1), zero-padded, and their lengths.
    """
    mats = np.asarray(mats, dtype=np.int64)
    n, rows, _ = mats.shape
    out_rows = rows + 1 if max_len is None else max_len
    if out_rows < 1:
        raise ValueError("max_len must be at least 1")
    h0, w0, c0 = (int(v) for v in input_shape)
    h = np.full(n, h0, np.int64)
    w = np.full(n, w0, np.int64)
    c = np.full(n, c0, np.int64)
    flat = np.zeros(n, bool)
    ended = np.zeros(n, bool)
    ptr = np.zeros(n, np.int64)
    out = np.zeros((n, out_rows, 5), np.int64)
    index = np.arange(n)
    for j in range(rows):
        t = np.clip(mats[:, j, 0], 0, int(_T.LINEAR))
        ended |= t == _T.END
        if ended.all():  # nothing more to read (decoded batches end well before T)
            break
        k, o, s, p = (mats[:, j, f] for f in range(1, 5))
        is_conv = t == _T.CONV
        is_pool = (t == _T.MAXPOOL) | (t == _T.AVGPOOL)
        is_spatial = is_conv | is_pool
        is_linear = t == _T.LINEAR
        k = np.where(is_spatial, np.clip(k, 1, ranges.max_kernel), 0)
        s = np.where(is_spatial, np.clip(s, 1, ranges.max_stride), 0)
        p = np.select(
            [is_conv, is_pool, t == _T.DROPOUT],
            [
                np.clip(p, 0, ranges.max_padding),
                np.clip(p, 0, k // 2),
                np.clip(p, 0, MAX_DROPOUT_FIELD),
            ],
            0,
        )
        o = np.where(is_conv | is_linear, np.clip(o, 1, ranges.max_channels), c)
        out_h = (h + 2 * p - k) // np.maximum(s, 1) + 1
        out_w = (w + 2 * p - k) // np.maximum(s, 1) + 1
        drop = is_spatial & (flat | (out_h < 1) | (out_w < 1))
        # Rows already full keep their last slot for the final Linear (rule 4).
        keep = ~ended & ~drop & (ptr < out_rows)
        rows_kept = index[keep]
        out[rows_kept, ptr[keep]] = np.stack([t, k, o, s, p], axis=1)[keep]
        ptr += keep
        moved = keep & is_spatial
        h = np.where(moved, out_h, h)
        w = np.where(moved, out_w, w)
        c = np.where(keep & (is_conv | is_linear), o, c)
        flat |= keep & is_linear
    last_index = np.maximum(ptr - 1, 0)
    last_is_linear = (ptr > 0) & (out[index, last_index, 0] == _T.LINEAR)
    slot = np.where(last_is_linear | (ptr >= out_rows), last_index, ptr)
    out[index, slot] = np.array([_T.LINEAR, 0, num_classes, 0, 0], np.int64)
    lengths = slot + 1
    return out, lengths


def _canonical_keep(mats: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``[N, T]`` bool: the rows one pass of `legalize._canonicalize_once` keeps."""
    rows = int(lengths.max(initial=0))
    # Layer-position-major copies, so that the loop below reads contiguous columns.
    t, k, s, p = (np.ascontiguousarray(mats[:, :rows, f].T) for f in (0, 1, 3, 4))
    active = np.arange(rows)[:, None] < lengths[None, :]
    is_pool = (t == _T.MAXPOOL) | (t == _T.AVGPOOL)
    identity = (is_pool & (k == 1) & (s == 1) & (p == 0)) | ((t == _T.DROPOUT) & (p == 0))
    next_is_bn = np.zeros_like(active)
    next_is_bn[:-1] = active[1:] & (t[1:] == _T.BATCHNORM)
    drop = identity | ((t == _T.BATCHNORM) & next_is_bn)
    keeps_nonnegative = is_pool | (t == _T.DROPOUT)
    makes_nonnegative = (t == _T.RELU) | (t == _T.SIGMOID)
    keep = np.zeros_like(active)
    nonnegative = np.zeros(len(mats), bool)  # mean-subtracted inputs can be negative
    for j in range(rows):
        kept = active[j] & ~drop[j] & ~((t[j] == _T.RELU) & nonnegative)
        keep[j] = kept
        after = makes_nonnegative[j] | (nonnegative & keeps_nonnegative[j])
        nonnegative = np.where(kept, after, nonnegative)
    out = np.zeros(mats.shape[:2], bool)
    out[:, :rows] = keep.T
    return out


def batch_canonicalize(mats: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`legalize.canonicalize` of each ``[T, 5]`` matrix at once; returns (mats, lengths).

    Drops the same no-op layers (identity pools, Dropout 0, a ReLU on a non-negative input, a
    BatchNorm followed by a BatchNorm), pass after pass until nothing changes, and moves the kept
    rows to the front; the rows after `lengths` are zero, so equal architectures have equal
    matrices. Layers are only removed, so shapes and channel fields stay valid.
    """
    mats = np.asarray(mats, dtype=np.int64).copy()
    lengths = np.asarray(lengths, dtype=np.int64).copy()
    index = np.arange(len(mats))[:, None]
    while True:
        keep = _canonical_keep(mats, lengths)
        new_lengths = keep.sum(axis=1)
        if np.array_equal(new_lengths, lengths):
            return mats, lengths
        position = np.where(keep, np.cumsum(keep, axis=1) - 1, mats.shape[1])  # past-the-end
        out = np.zeros((len(mats), mats.shape[1] + 1, 5), np.int64)
        out[np.broadcast_to(index, keep.shape), position] = mats
        mats, lengths = out[:, :-1], new_lengths
