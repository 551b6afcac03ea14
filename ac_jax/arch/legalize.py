"""`legalize` (any integer matrix -> valid Arch) and `canonicalize` (drop no-op layers)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ac_jax.arch.batch import DEFAULT_RANGES, FieldRanges, batch_legalize
from ac_jax.arch.spec import POOL_TYPES, Arch, LayerType


def legalize(
    matrix: np.ndarray | Arch,
    input_shape: Sequence[int],
    num_classes: int,
    max_len: int | None = None,
    ranges: FieldRanges = DEFAULT_RANGES,
) -> Arch:
    """Turns any integer ``[T, 5]`` matrix (or an `Arch`) into a valid `Arch`.

    See `batch.batch_legalize` for the rules. Deterministic and idempotent:
    ``legalize(legalize(m).to_matrix()) == legalize(m)``.
    """
    if isinstance(matrix, Arch):
        matrix = matrix.to_matrix()
    matrix = np.asarray(np.rint(matrix), dtype=np.int64).reshape(1, -1, 5)
    legal, lengths = batch_legalize(matrix, input_shape, num_classes, max_len, ranges)
    return Arch.from_matrix(legal[0, : lengths[0]], input_shape, num_classes)


# Layers through which a non-negative activation stays non-negative (MaxPool pads with -inf,
# AvgPool with zeros, Dropout only zeroes and rescales), so a ReLU after them is still a no-op.
_KEEPS_NONNEGATIVE = frozenset({LayerType.DROPOUT, LayerType.MAXPOOL, LayerType.AVGPOOL})


def _is_identity(layer) -> bool:
    pool_noop = layer.t in POOL_TYPES and layer.k == 1 and layer.s == 1 and layer.p == 0
    return pool_noop or (layer.t == LayerType.DROPOUT and layer.p == 0)


def _canonicalize_once(layers):
    out = []
    nonnegative = False  # inputs are mean-subtracted images, so they can be negative
    for index, layer in enumerate(layers):
        if _is_identity(layer):
            continue
        if layer.t == LayerType.RELU and nonnegative:
            continue
        following = layers[index + 1] if index + 1 < len(layers) else None
        if layer.t == LayerType.BATCHNORM and following is not None:
            if following.t == LayerType.BATCHNORM:
                # BN(BN(x)) normalises again: the outer one alone gives the same function.
                continue
        out.append(layer)
        if layer.t in (LayerType.RELU, LayerType.SIGMOID):
            nonnegative = True
        elif layer.t not in _KEEPS_NONNEGATIVE:
            nonnegative = False
    return out


def canonicalize(arch: Arch) -> Arch:
    """Removes layers that do nothing, repeatedly, until none is left (Appendix 10 patterns).

    Removed: MaxPool/AvgPool with kernel 1 and stride 1, Dropout with rate 0, a ReLU whose input
    is already non-negative (after ReLU or Sigmoid, possibly through Dropout or pooling), and a
    BatchNorm directly followed by another BatchNorm. No shape changes, so the parameter count
    never rises (it drops by 2*C per removed BatchNorm).
    """
    layers = list(arch.layers)
    while True:
        reduced = _canonicalize_once(layers)
        if reduced == layers:
            return arch.replace_layers(layers)
        layers = reduced
