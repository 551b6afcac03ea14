"""Vectorised (over a batch of ``[T, 5]`` matrices) shape analysis, legalisation, canonicalisation.

The sampler draws thousands of candidate matrices at once and the compressor decodes one per
gradient step, network and lambda, so the passes below walk the T layer positions once with
whole-batch array operations instead of looping over architectures in Python. `shapes.analyze` and
`legalize.canonicalize` are the readable single-architecture references; tests check that all
agree. Legalize and canonicalize take the array module `xp`: NumPy, or jax.numpy inside the
compressor's compiled search (the same rules, so both give the same matrices; `_scan` is a Python
loop for one and `lax.scan` for the other). The exact counts stay NumPy: they need int64.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ac_jax.arch.layers import (
    KINDS,
    MAC_KINDS,
    MAX_DROPOUT_FIELD,
    PARAM_KINDS,
    POOL_TYPES,
    SPATIAL_TYPES,
    WIDTH_TYPES,
    LayerType,
    types_where,
)

_T = LayerType


@dataclasses.dataclass(frozen=True)
class FieldRanges:
    """Ranges `legalize` clamps to; the defaults are the Appendix 9 sampling ranges."""

    max_kernel: int = 10
    max_stride: int = 10
    max_padding: int = 10
    max_channels: int = 4096


DEFAULT_RANGES = FieldRanges()


# Type sets the passes below test, read from the layer table.
_FLATTENING = types_where(lambda kind: kind.flattens)
_RATE = types_where(lambda kind: kind.p_rule == "rate")
_PADDING = types_where(lambda kind: kind.p_rule == "padding")
_NOT_READING = {f: types_where(lambda kind, f=f: f not in kind.fields) for f in "ksp"}
_IDENTITY = [kind for kind in KINDS.values() if kind.identity is not None]
_MAKES_NONNEGATIVE = types_where(lambda kind: kind.sign == "makes")
_KEEPS_NONNEGATIVE = types_where(lambda kind: kind.sign == "keeps")
_DROP_IF_REPEATED = types_where(lambda kind: kind.drop_if_repeated)
_DROP_ON_NONNEGATIVE = types_where(lambda kind: kind.drop_on_nonnegative)


def _type_masks(t, xp):
    """``of(types)``: where `t` is one of `types` (a handful of comparisons, no `isin`, so
    that it traces inside a compiled program)."""
    def of(types):
        mask = xp.zeros(t.shape, bool)
        for layer_type in sorted(types):
            mask = mask | (t == layer_type)
        return mask
    return of


def _broadcast(value, n: int):
    """A formula's result as an [n] array (a constant formula returns a plain 0)."""
    return np.broadcast_to(np.asarray(value, np.int64), (n,))


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
        of = _type_masks(t, np)
        is_spatial, is_pool = of(SPATIAL_TYPES), of(POOL_TYPES)
        sets_width, flattens = of(WIDTH_TYPES), of(_FLATTENING)
        bad = (t < 0) | (t > max(KINDS))
        bad |= is_spatial & (flat | (k < 1) | (s < 1) | (p < 0))
        bad |= is_pool & (p > k // 2)
        bad |= sets_width & (o < 1)
        for name, value in (("k", k), ("s", s), ("p", p)):
            bad |= of(_NOT_READING[name]) & (value != 0)
        bad |= of(_RATE) & ((p < 0) | (p > MAX_DROPOUT_FIELD))
        out_h = (h + 2 * p - k) // np.maximum(s, 1) + 1
        out_w = (w + 2 * p - k) // np.maximum(s, 1) + 1
        bad |= is_spatial & ((out_h < 1) | (out_w < 1))
        valid &= ~(active & bad)
        ok = active & ~bad
        features = np.where(flat, c, h * w * c)
        hw = np.where(is_spatial, out_h * out_w, 1)
        layer_params = np.select([t == kind.type for kind in PARAM_KINDS],
                                 [_broadcast(kind.params(k, c, o, features), n)
                                  for kind in PARAM_KINDS], 0)
        layer_macs = np.select([t == kind.type for kind in MAC_KINDS],
                               [_broadcast(kind.macs(k, c, o, features, hw), n)
                                for kind in MAC_KINDS], 0)
        params += np.where(ok, layer_params, 0)
        macs += np.where(ok, layer_macs, 0)
        num_conv += ok & (t == _T.CONV)
        spatial_ok = ok & is_spatial
        h = np.where(spatial_ok, out_h, h)
        w = np.where(spatial_ok, out_w, w)
        c = np.where(ok & sets_width, o, c)
        flat |= ok & flattens
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


def _scan(xp, step, carry, xs: tuple):
    """`jax.lax.scan` for ``xp = jax.numpy`` (traceable inside `jit`), a Python loop for NumPy.

    `xs` is a tuple of arrays scanned along their first axis; `step(carry, x) -> (carry, y)`
    with `y` a tuple of arrays, returned stacked along a new first axis.
    """
    if xp is np:
        xs = tuple(np.ascontiguousarray(x) for x in xs)  # each step reads one contiguous slice
        outputs = []
        for i in range(len(xs[0])):
            carry, y = step(carry, tuple(x[i] for x in xs))
            outputs.append(y)
        return carry, tuple(np.stack(parts) for parts in zip(*outputs))
    import jax

    return jax.lax.scan(step, carry, xs)


def _set_rows(xp, out, index, slot, values):
    """``out[index, slot] = values`` for NumPy (in place) and jax.numpy (functional)."""
    if xp is np:
        out[index, slot] = values
        return out
    return out.at[index, slot].set(values)


def _compact(xp, mats, keep, out_rows: int):
    """The kept rows of each ``[T, 5]`` matrix moved to the front of ``[out_rows, 5]``, zeros
    after them (``keep.sum(1) <= out_rows`` is the caller's promise)."""
    n = mats.shape[0]
    position = xp.cumsum(keep, axis=1) - 1
    if xp is np:  # only the kept rows: cheaper than NumPy scattering every row
        out = np.zeros((n, out_rows, 5), mats.dtype)
        rows_of, columns_of = np.nonzero(keep)
        out[rows_of, position[rows_of, columns_of]] = mats[rows_of, columns_of]
        return out
    position = xp.where(keep, position, out_rows)  # out_rows: a row that is cut off
    out = xp.zeros((n, out_rows + 1, 5), mats.dtype)
    out = _set_rows(xp, out, xp.arange(n)[:, None], position, mats)
    return out[:, :out_rows]


def _int_dtype(xp):
    # Exact in both: fields are small (decoded channels < 2**16) and shapes shrink, so int32 is
    # enough on the device (where 64-bit integers are off by default); NumPy keeps int64.
    return np.int64 if xp is np else xp.int32


def batch_legalize(
    mats,
    input_shape: Sequence[int],
    num_classes: int,
    max_len: int | None = None,
    ranges: FieldRanges = DEFAULT_RANGES,
    xp=np,
):
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
    Returns matrices of `max_len` rows (default: T + 1), zero-padded, and their lengths: int64
    NumPy arrays, or with ``xp=jax.numpy`` int32 arrays computed by the same rules inside a
    traced program (the compressor runs it in the search's compiled call).
    """
    dtype = _int_dtype(xp)
    mats = xp.asarray(mats, dtype=dtype)
    n, rows, _ = mats.shape
    out_rows = rows + 1 if max_len is None else max_len
    if out_rows < 1:
        raise ValueError("max_len must be at least 1")
    if xp is np:  # rows after every sequence's end change nothing (decoded batches end early)
        running = np.cumsum(np.clip(mats[:, :, 0], 0, int(_T.LINEAR)) == _T.END, axis=1) == 0
        mats = mats[:, : int(running.sum(axis=1).max(initial=0))]
    h0, w0, c0 = (int(v) for v in input_shape)
    start = (
        xp.full(n, h0, dtype),
        xp.full(n, w0, dtype),
        xp.full(n, c0, dtype),
        xp.zeros(n, bool),  # flat: after the first Linear
        xp.zeros(n, bool),  # ended: a 0 type was read
        xp.zeros(n, dtype),  # rows kept so far
    )

    def step(carry, x):
        h, w, c, flat, ended, kept = carry
        (row,) = x
        t = xp.clip(row[:, 0], 0, int(_T.LINEAR))
        ended = ended | (t == _T.END)
        k, o, s, p = (row[:, f] for f in range(1, 5))
        of = _type_masks(t, xp)
        is_spatial, sets_width = of(SPATIAL_TYPES), of(WIDTH_TYPES)
        is_linear = of(_FLATTENING)
        k = xp.where(is_spatial, xp.clip(k, 1, ranges.max_kernel), 0)
        s = xp.where(is_spatial, xp.clip(s, 1, ranges.max_stride), 0)
        p = xp.where(
            of(_PADDING),
            xp.clip(p, 0, ranges.max_padding),
            xp.where(of(POOL_TYPES), xp.clip(p, 0, k // 2),
                     xp.where(of(_RATE), xp.clip(p, 0, MAX_DROPOUT_FIELD), 0)),
        )
        o = xp.where(sets_width, xp.clip(o, 1, ranges.max_channels), c)
        out_h = (h + 2 * p - k) // xp.maximum(s, 1) + 1
        out_w = (w + 2 * p - k) // xp.maximum(s, 1) + 1
        drop = is_spatial & (flat | (out_h < 1) | (out_w < 1))
        # Rows already full keep their last slot for the final Linear (rule 4).
        keep = ~ended & ~drop & (kept < out_rows)
        moved = keep & is_spatial
        h = xp.where(moved, out_h, h)
        w = xp.where(moved, out_w, w)
        c = xp.where(keep & sets_width, o, c)
        flat = flat | (keep & is_linear)
        legal_row = xp.stack([t, k, o, s, p], axis=1)
        return (h, w, c, flat, ended, kept + keep), (legal_row, keep)

    if mats.shape[1]:
        carry, (legal, keep) = _scan(xp, step, start, (xp.swapaxes(mats, 0, 1),))
        kept = carry[-1]
        out = _compact(xp, xp.swapaxes(legal, 0, 1), xp.swapaxes(keep, 0, 1), out_rows)
    else:
        kept, out = start[-1], xp.zeros((n, out_rows, 5), dtype)
    index = xp.arange(n)
    last_index = xp.maximum(kept - 1, 0)
    last_is_linear = (kept > 0) & (out[index, last_index, 0] == _T.LINEAR)
    slot = xp.where(last_is_linear | (kept >= out_rows), last_index, kept)
    final = xp.asarray([int(_T.LINEAR), 0, int(num_classes), 0, 0], dtype)
    out = _set_rows(xp, out, index, slot, final)
    return out, slot + 1


def _canonical_keep(xp, mats, lengths):
    """``[N, T]`` bool: the rows one pass of `legalize._canonicalize_once` keeps."""
    fields = xp.moveaxis(mats, 2, 0)
    if xp is np:
        fields = np.ascontiguousarray(fields)  # whole-array passes below read contiguous fields
    t, k, s, p = (fields[f] for f in (0, 1, 3, 4))
    active = xp.arange(mats.shape[1])[None, :] < lengths[:, None]
    of = _type_masks(t, xp)
    identity = xp.zeros(t.shape, bool)
    for kind in _IDENTITY:
        identity = identity | ((t == kind.type) & kind.identity(k, s, p))
    repeated = of(_DROP_IF_REPEATED)
    # the next row is the same type (one that is a no-op before itself)
    next_same = xp.concatenate(
        [active[:, 1:] & (t[:, 1:] == t[:, :-1]), xp.zeros_like(active[:, :1])], axis=1
    )
    drop = identity | (repeated & next_same)
    candidate = active & ~drop
    is_relu = of(_DROP_ON_NONNEGATIVE)
    keeps_nonnegative = of(_KEEPS_NONNEGATIVE)
    makes_nonnegative = of(_MAKES_NONNEGATIVE)

    def step(nonnegative, x):
        candidate, is_relu, makes, keeps = x
        kept = candidate & ~(is_relu & nonnegative)
        after = makes | (nonnegative & keeps)
        return xp.where(kept, after, nonnegative), (kept,)

    # Layer-position-major, so that each step reads one contiguous column.
    columns = tuple(xp.swapaxes(a, 0, 1) for a in (candidate, is_relu, makes_nonnegative,
                                                   keeps_nonnegative))
    nonnegative = xp.zeros(mats.shape[0], bool)  # mean-subtracted inputs can be negative
    _, (keep,) = _scan(xp, step, nonnegative, columns)
    return xp.swapaxes(keep, 0, 1)


def batch_canonicalize(mats, lengths, xp=np):
    """`legalize.canonicalize` of each ``[T, 5]`` matrix at once; returns (mats, lengths).

    Drops the same no-op layers (identity pools, Dropout 0, a ReLU on a non-negative input, a
    BatchNorm followed by a BatchNorm), pass after pass until nothing changes, and moves the kept
    rows to the front; the rows after `lengths` are zero, so equal architectures have equal
    matrices. Layers are only removed, so shapes and channel fields stay valid. With
    ``xp=jax.numpy`` it is traceable (the passes run in a `lax.while_loop`).
    """
    dtype = _int_dtype(xp)
    mats = xp.asarray(mats, dtype=dtype)
    lengths = xp.asarray(lengths, dtype=dtype)
    rows = mats.shape[1]
    if xp is np:
        # Rows after the longest sequence never change: passes look at the used part only.
        used = int(lengths.max(initial=0))
        head, lengths = mats[:, :used], lengths.copy()
        while True:
            keep = _canonical_keep(np, head, lengths)
            new_lengths = keep.sum(axis=1)
            if np.array_equal(new_lengths, lengths):
                tail = np.zeros((len(head), rows - used, 5), dtype)
                return np.concatenate([head, tail], axis=1), lengths
            head, lengths = _compact(np, head, keep, used), new_lengths
    import jax

    def one_pass(state):
        mats, lengths, _ = state
        keep = _canonical_keep(xp, mats, lengths)
        new_lengths = keep.sum(axis=1).astype(dtype)
        return _compact(xp, mats, keep, rows), new_lengths, xp.any(new_lengths != lengths)

    mats, lengths, _ = jax.lax.while_loop(lambda state: state[2], one_pass,
                                          (mats, lengths, xp.asarray(True)))
    return mats, lengths
