"""`legalize` (any integer matrix -> valid Arch) and `canonicalize` (drop no-op layers)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ac_jax.arch.batch import DEFAULT_RANGES, FieldRanges, batch_legalize
from ac_jax.arch.layers import KINDS
from ac_jax.arch.spec import Arch


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


def _is_identity(layer) -> bool:
    kind = KINDS[layer.t]
    return kind.identity is not None and bool(kind.identity(layer.k, layer.s, layer.p))


def _canonicalize_once(layers):
    """One pass of the `layers.KINDS` no-op rules (`batch._canonical_keep` is the batched one)."""
    out = []
    nonnegative = False  # inputs are mean-subtracted images, so they can be negative
    for index, layer in enumerate(layers):
        kind = KINDS[layer.t]
        if _is_identity(layer):
            continue
        if kind.drop_on_nonnegative and nonnegative:
            continue
        following = layers[index + 1] if index + 1 < len(layers) else None
        if kind.drop_if_repeated and following is not None and following.t == layer.t:
            continue
        out.append(layer)
        if kind.sign == "makes":
            nonnegative = True
        elif kind.sign != "keeps":
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
