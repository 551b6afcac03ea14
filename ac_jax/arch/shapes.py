"""Shape inference, exact parameter count and MACs of an `Arch`; the definition of a valid one.

Output size of Conv and pooling layers follows PyTorch (floor mode):
``out = (in + 2 * p - k) // s + 1``, which must be >= 1. Parameters are those PyTorch counts in
``module.parameters()`` (BatchNorm's running statistics are buffers, not parameters). MACs are the
multiply-accumulates of Conv and Linear layers for one image; pooling, BatchNorm and activations
count 0 (they are memory-bound and cheap next to the convolutions).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

from ac_jax.arch.spec import (
    CHANNEL_PRESERVING_TYPES,
    MAX_DROPOUT_FIELD,
    POOL_TYPES,
    SPATIAL_TYPES,
    Arch,
    Layer,
    LayerType,
)

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


def _check_unused_zero(index: int, layer: Layer, fields: str) -> None:
    for field in fields:
        if getattr(layer, field) != 0:
            raise InvalidArchError(f"{_describe(index, layer)}: field {field} must be 0 for this type")


def layer_info(index: int, layer: Layer, in_shape: Shape) -> LayerInfo:
    """Shape, params and MACs of one layer, or `InvalidArchError`."""
    t = layer.t
    if t in SPATIAL_TYPES and len(in_shape) != 3:
        raise InvalidArchError(
            f"{_describe(index, layer)}: spatial layer after the first Linear (input is flat)"
        )
    if t == LayerType.LINEAR:
        _check_unused_zero(index, layer, "ksp")
        if layer.o < 1:
            raise InvalidArchError(f"{_describe(index, layer)}: needs at least 1 output feature")
        features = 1
        for v in in_shape:
            features *= v
        params = features * layer.o + layer.o
        return LayerInfo(in_shape, (layer.o,), params, features * layer.o)
    if t in SPATIAL_TYPES:
        h, w, c = in_shape
        if layer.k < 1 or layer.s < 1 or layer.p < 0:
            raise InvalidArchError(f"{_describe(index, layer)}: needs k >= 1, s >= 1, p >= 0")
        if t in POOL_TYPES and layer.p > layer.k // 2:
            raise InvalidArchError(
                f"{_describe(index, layer)}: pooling padding must be at most kernel // 2"
            )
        out_h = conv_output_size(h, layer.k, layer.s, layer.p)
        out_w = conv_output_size(w, layer.k, layer.s, layer.p)
        if out_h < 1 or out_w < 1:
            raise InvalidArchError(
                f"{_describe(index, layer)}: output collapses ({h}x{w} input, kernel {layer.k}, "
                f"padding {layer.p})"
            )
        if t == LayerType.CONV:
            if layer.o < 1:
                raise InvalidArchError(f"{_describe(index, layer)}: needs at least 1 output channel")
            params = layer.k * layer.k * c * layer.o + layer.o
            macs = layer.k * layer.k * c * layer.o * out_h * out_w
            return LayerInfo(in_shape, (out_h, out_w, layer.o), params, macs)
        return LayerInfo(in_shape, (out_h, out_w, c), 0, 0)
    if t in CHANNEL_PRESERVING_TYPES:  # BatchNorm, ReLU, Sigmoid, Dropout
        _check_unused_zero(index, layer, "ks" if t == LayerType.DROPOUT else "ksp")
        if t == LayerType.DROPOUT and not 0 <= layer.p <= MAX_DROPOUT_FIELD:
            raise InvalidArchError(f"{_describe(index, layer)}: dropout field p must be 0..9")
        params = 2 * in_shape[-1] if t == LayerType.BATCHNORM else 0
        return LayerInfo(in_shape, in_shape, params, 0)
    raise InvalidArchError(f"{_describe(index, layer)}: unknown layer type {t}")


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
