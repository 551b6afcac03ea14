"""Shape inference, exact parameter count and MACs of an `Arch`; the definition of a valid one.

Output size of Conv and pooling layers follows PyTorch (floor mode):
``out = (in + 2 * p - k) // s + 1``, which must be >= 1. Parameters are those PyTorch counts in
``module.parameters()`` (BatchNorm's running statistics are buffers, not parameters). MACs are the
multiply-accumulates of Conv and Linear layers for one image; pooling, BatchNorm and activations
count 0 (they are memory-bound and cheap next to the convolutions).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

from ac_jax.arch.layers import KINDS, MAX_DROPOUT_FIELD, LayerType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: spec imports this module (Arch.num_params)
    from ac_jax.arch.spec import Arch, Layer

Shape = tuple[int, ...]  # (H, W, C) before flattening, (features,) after


class InvalidArchError(ValueError):
    """An architecture that cannot be built; the message names the layer and why."""


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    in_shape: Shape
    out_shape: Shape
    params: int
    macs: int


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    layers: tuple[LayerInfo, ...]
    num_params: int
    macs: int
    output_shape: Shape


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _describe(index: int, layer: Layer) -> str:
    name = LayerType(layer.t).name if 0 <= layer.t <= 8 else str(layer.t)
    return f"layer {index} ({name} {list(layer)})"


def layer_info(index: int, layer: Layer, in_shape: Shape) -> LayerInfo:
    """Shape, params and MACs of one layer by its `layers.KINDS` entry, or `InvalidArchError`."""
    kind = KINDS.get(layer.t)
    where = _describe(index, layer)
    if kind is None:
        raise InvalidArchError(f"{where}: unknown layer type {layer.t}")
    if kind.spatial and len(in_shape) != 3:
        raise InvalidArchError(f"{where}: spatial layer after the first Linear (input is flat)")
    for field in "ksp":
        if field not in kind.fields and getattr(layer, field) != 0:
            raise InvalidArchError(f"{where}: field {field} must be 0 for this type")
    k, o, s, p = layer.k, layer.o, layer.s, layer.p
    if kind.sets_width and not kind.spatial and o < 1:
        raise InvalidArchError(f"{where}: needs at least 1 output feature")
    c, n = in_shape[-1], math.prod(in_shape)
    out_shape = in_shape
    if kind.spatial:
        h, w, _ = in_shape
        if k < 1 or s < 1 or p < 0:
            raise InvalidArchError(f"{where}: needs k >= 1, s >= 1, p >= 0")
        if kind.p_rule == "pool_padding" and p > k // 2:
            raise InvalidArchError(f"{where}: pooling padding must be at most kernel // 2")
        out_h, out_w = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
        if out_h < 1 or out_w < 1:
            raise InvalidArchError(f"{where}: output collapses ({h}x{w} input, kernel {k}, "
                                   f"padding {p})")
        if kind.sets_width and o < 1:  # after the geometry, as PyTorch's own checks run
            raise InvalidArchError(f"{where}: needs at least 1 output channel")
        out_shape = (out_h, out_w, o if kind.sets_width else c)
    elif kind.flattens:
        out_shape = (o,)
    if kind.p_rule == "rate" and not 0 <= p <= MAX_DROPOUT_FIELD:
        raise InvalidArchError(f"{where}: dropout field p must be 0..{MAX_DROPOUT_FIELD}")
    hw = out_shape[0] * out_shape[1] if len(out_shape) == 3 else 1
    return LayerInfo(in_shape, out_shape, int(kind.params(k, c, o, n)),
                     int(kind.macs(k, c, o, n, hw)))


def analyze(arch: Arch) -> ArchInfo:
    """Per-layer shapes, exact parameter count and MACs; raises `InvalidArchError` if invalid."""
    if not arch.layers:
        raise InvalidArchError("architecture has no layers")
    shape: Shape = arch.input_shape
    infos = []
    for index, layer in enumerate(arch.layers):
        info = layer_info(index, layer, shape)
        infos.append(info)
        shape = info.out_shape
    last = arch.layers[-1]
    if last.t != LayerType.LINEAR or last.o != arch.num_classes:
        raise InvalidArchError(
            f"the last layer must be Linear with {arch.num_classes} outputs, got {list(last)}"
        )
    return ArchInfo(
        layers=tuple(infos),
        num_params=sum(i.params for i in infos),
        macs=sum(i.macs for i in infos),
        output_shape=shape,
    )


def validate(arch: Arch) -> Arch:
    """Returns `arch` unchanged if it is valid, else raises `InvalidArchError`."""
    analyze(arch)
    return arch


def is_valid(arch: Arch) -> bool:
    try:
        analyze(arch)
    except InvalidArchError:
        return False
    return True


def checked_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """`input_shape` as an (H, W, C) tuple of positive ints, or a ValueError saying what it is."""
    shape = tuple(input_shape)
    ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shape)
    if len(shape) != 3 or not ints or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) of positive ints, got {input_shape!r}")
    return tuple(int(v) for v in shape)
