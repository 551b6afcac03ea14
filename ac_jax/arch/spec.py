"""The layer-sequence representation of an architecture (paper Section 4, eq. 7; Appendix 9).

Every layer is five integers ``[t, k, o, s, p]``: type, kernel, out channels, stride, padding.

| t | type      | k        | o                         | s      | p                                 | params   |
|---|-----------|----------|---------------------------|--------|-----------------------------------|----------|
| 0 | (end)     | 0        | 0                         | 0      | 0                                 | -        |
| 1 | Conv      | kernel   | out channels              | stride | zero padding                      | k*k*c*o+o|
| 2 | MaxPool   | kernel   | = input channels          | stride | padding, at most k // 2 (PyTorch) | 0        |
| 3 | BatchNorm | 0        | = input channels/features | 0      | 0                                 | 2*c      |
| 4 | ReLU      | 0        | = input channels/features | 0      | 0                                 | 0        |
| 5 | Sigmoid   | 0        | = input channels/features | 0      | 0                                 | 0        |
| 6 | Dropout   | 0        | = input channels/features | 0      | rate in tenths (exact: Layer.rate)| 0        |
| 7 | AvgPool   | kernel   | = input channels          | stride | padding, at most k // 2 (PyTorch) | 0        |
| 8 | Linear    | 0        | out features              | 0      | 0                                 | n*o+o    |

Kernels are square, Conv and Linear carry a bias (PyTorch's defaults), BatchNorm is affine. The input
is flattened implicitly before the first Linear (as in the paper); after it only BatchNorm, ReLU,
Sigmoid, Dropout and Linear may follow. Type 0 marks padding / the end of a sequence.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from ac_jax.arch import shapes

# The layer table (`layers.py`) holds every rule per type; these names are re-exported here.
from ac_jax.arch.layers import (  # noqa: F401
    CHANNEL_PRESERVING_TYPES,
    KINDS,
    DROPOUT_RATE_DENOMINATOR,
    MAX_DROPOUT_FIELD,
    POOL_TYPES,
    SPATIAL_TYPES,
    LayerType,
)

NUM_FIELDS = 5


def quantised_rate(rate: float) -> int:
    """The p field of a Dropout with `rate`: the nearest tenth, clipped to 0.1 .. 0.9 for a
    non-zero rate (a small rate is still a Dropout, not the no-op rate 0) and 0 only for 0."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return 0
    return int(min(MAX_DROPOUT_FIELD, max(1, round(rate * DROPOUT_RATE_DENOMINATOR))))


_LayerFields = collections.namedtuple("_LayerFields", "t k o s p rate",
                                      defaults=(0, 0, 0, 0, None))


class Layer(_LayerFields):
    """One layer ``[t, k, o, s, p]``; see the module docstring for what each field means per type.

    `rate` is a Dropout's exact rate where ``p / 10`` is not it (None otherwise, and for every
    other type, so that two spellings of one network compare equal). Iterating, unpacking and
    `to_matrix` see the five integer fields only; equality and hashing see the rate too.
    """

    __slots__ = ()

    def __iter__(self):
        return iter(tuple.__getitem__(self, slice(0, NUM_FIELDS)))

    def __getnewargs__(self):  # pickling and copying keep the rate
        return tuple.__getitem__(self, slice(None))

    @classmethod
    def _make(cls, iterable) -> "Layer":
        return cls(*iterable)  # five fields (a matrix row) or six

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={int(value)}" for name, value in zip("tkosp", self))
        return f"Layer({fields}" + ("" if self.rate is None else f", rate={self.rate!r}") + ")"

    def _replace(self, **changes) -> "Layer":
        values = dict(zip(self._fields, tuple.__getitem__(self, slice(None))))
        values.update(changes)
        return Layer(**values)

    @property
    def type(self) -> LayerType:
        return LayerType(self.t)

    @property
    def dropout_rate(self) -> float:
        if self.t != LayerType.DROPOUT:
            raise ValueError(f"{self} is not a Dropout layer")
        return self.rate if self.rate is not None else self.p / DROPOUT_RATE_DENOMINATOR


def conv(kernel: int, out: int, stride: int = 1, padding: int = 0) -> Layer:
    return Layer(LayerType.CONV, kernel, out, stride, padding)


def maxpool(kernel: int, stride: int | None = None, padding: int = 0) -> Layer:
    # `o` is filled in by `Arch` (it repeats the input channels).
    return Layer(LayerType.MAXPOOL, kernel, 0, kernel if stride is None else stride, padding)


def avgpool(kernel: int, stride: int | None = None, padding: int = 0) -> Layer:
    return Layer(LayerType.AVGPOOL, kernel, 0, kernel if stride is None else stride, padding)


def batchnorm() -> Layer:
    return Layer(LayerType.BATCHNORM)


def relu() -> Layer:
    return Layer(LayerType.RELU)


def sigmoid() -> Layer:
    return Layer(LayerType.SIGMOID)


def dropout(rate: float) -> Layer:
    """A Dropout with any rate in [0, 1): p is its tenth (`quantised_rate`), `rate` the exact
    value unless p / 10 is it."""
    rate = float(rate)
    field = quantised_rate(rate)
    exact = None if field == rate * DROPOUT_RATE_DENOMINATOR or abs(
        field / DROPOUT_RATE_DENOMINATOR - rate) <= 1e-12 else rate
    return Layer(int(LayerType.DROPOUT), 0, 0, 0, field, exact)


def linear(out: int) -> Layer:
    return Layer(LayerType.LINEAR, 0, out, 0, 0)


@dataclasses.dataclass(frozen=True)
class Arch:
    """A sequential CNN: input shape ``(H, W, C)``, number of classes, and its layers.

    Frozen and hashable, so it can be a static argument of `jax.jit` or a dictionary key. The
    channel-repeating `o` fields are filled in on construction (a layer written with ``o=0`` gets
    its input's channel count), so two spellings of the same network compare equal. Validity
    (shapes, field ranges, last layer Linear to `num_classes`) is checked by `validate`, not here,
    because `legalize` and the parsers build intermediate, not yet valid, sequences.
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[Layer, ...]

    def __post_init__(self):
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (H, W, C) of positive ints, got {self.input_shape}")
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "layers", _fill_channel_fields(self.input_shape, self.layers))

    def __len__(self) -> int:
        return len(self.layers)

    def to_matrix(self, max_len: int | None = None) -> np.ndarray:
        """The ``[T, 5]`` int matrix, zero-padded to `max_len` rows (the end marker is t = 0)."""
        rows = np.asarray([tuple(layer) for layer in self.layers], dtype=np.int64).reshape(-1, 5)
        if max_len is None:
            return rows
        if len(rows) > max_len:
            raise ValueError(f"architecture has {len(rows)} layers, more than max_len={max_len}")
        return np.concatenate([rows, np.zeros((max_len - len(rows), NUM_FIELDS), np.int64)])

    @classmethod
    def from_matrix(
        cls, matrix: np.ndarray, input_shape: Sequence[int], num_classes: int
    ) -> "Arch":
        """Reads rows up to the first ``t == 0``; fields are taken as they are (see `legalize`)."""
        layers = []
        for row in np.asarray(matrix).reshape(-1, NUM_FIELDS):
            if int(row[0]) == LayerType.END:
                break
            layers.append(Layer(*(int(v) for v in row)))
        return cls(tuple(input_shape), num_classes, tuple(layers))

    @classmethod
    def from_legal_rows(
        cls, rows: np.ndarray, input_shape: Sequence[int], num_classes: int
    ) -> "Arch":
        """`from_matrix` for the ``[length, 5]`` rows of a legal architecture, trusted as they are.

        For rows that `batch.batch_legalize` (and `batch.batch_canonicalize`) returned: layer types
        1..8 and channel-repeating `o` fields already filled in. Skips the per-layer checks and
        normalisation of the constructor (about 10x faster), which matters when the compressor
        turns thousands of decoded candidates into `Arch` objects; gives an equal `Arch`.
        """
        arch = object.__new__(cls)
        object.__setattr__(arch, "input_shape", tuple(int(v) for v in input_shape))
        object.__setattr__(arch, "num_classes", int(num_classes))
        object.__setattr__(arch, "layers", tuple(map(Layer._make, np.asarray(rows).tolist())))
        return arch

    def replace_layers(self, layers: Sequence[Layer]) -> "Arch":
        return Arch(self.input_shape, self.num_classes, tuple(layers))

    # Convenience accessors; the work is done in `shapes`.
    @property
    def num_params(self) -> int:
        return shapes.analyze(self).num_params

    @property
    def macs(self) -> int:
        return shapes.analyze(self).macs


def _fill_channel_fields(
    input_shape: tuple[int, int, int], layers: Sequence[Sequence[int]]
) -> tuple[Layer, ...]:
    """Sets `o` of channel-preserving layers to the running channel (or feature) count."""
    channels = input_shape[2]
    flat_features = None
    out = []
    for raw in layers:
        rate = raw.rate if isinstance(raw, Layer) else None
        fields = tuple(raw)
        if len(fields) != NUM_FIELDS:
            raise ValueError(f"a layer has 5 fields [t, k, o, s, p], got {fields}")
        layer = Layer(*(int(v) for v in fields))
        if layer.t not in LayerType.__members__.values() or layer.t == LayerType.END:
            raise ValueError(f"layer type must be 1..8, got {layer.t} in {tuple(layer)}")
        if rate is not None:
            if layer.t != LayerType.DROPOUT:
                raise ValueError(f"only a Dropout has an exact rate, got {raw!r}")
            layer = dropout(rate)  # p and rate consistent, rate None where p / 10 is it
        current = channels if flat_features is None else flat_features
        kind = KINDS[layer.t]
        if not kind.sets_width:
            layer = layer._replace(o=current)
        elif kind.flattens:
            flat_features = layer.o
        else:
            channels = layer.o
        out.append(layer)
    return tuple(out)
