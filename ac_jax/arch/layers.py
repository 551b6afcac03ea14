"""The layer table: every rule about a layer type, in one entry per type (paper Appendix 9).

Everything that validates, measures, legalises or simplifies an architecture reads its rules
from `KINDS`: the per-architecture code (`shapes.layer_info`, `legalize.canonicalize`,
`spec.Arch`) and the batched NumPy / jax.numpy code (`batch.batch_analyze`,
`batch.batch_legalize`, `batch.batch_canonicalize`). The formulas take plain ints or whole
arrays alike (only arithmetic and comparisons), so one definition serves both.

Adding a layer type: a `LayerType` number, one `LayerKind` entry here, then its adapters to the
outside world, which cannot be tables: the Flax module (`child/model.py`), the PyTorch printout
and module source (`export.py`), the printout parser (`printout.py`) and, for live modules,
`from_torch.py`. The tests compare the batched and per-architecture results on random
architectures, so an entry that one of them misreads fails there.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable


class LayerType(enum.IntEnum):
    """Layer types, numbered as in the paper's Appendix 9 (0 is the end-of-sequence marker)."""

    END = 0
    CONV = 1
    MAXPOOL = 2
    BATCHNORM = 3
    RELU = 4
    SIGMOID = 5
    DROPOUT = 6
    AVGPOOL = 7
    LINEAR = 8


# Dropout's p field holds the rate in tenths (what matrices, archsets and the surrogate see).
DROPOUT_RATE_DENOMINATOR = 10
MAX_DROPOUT_FIELD = 9


def _zero(*_):
    return 0


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """The rules of one layer type. Formulas see ``k, c, o`` (kernel, input channels or
    features, the o field), ``n`` (input features as flattened: H * W * C, or the features once
    flat) and ``hw`` (output H * W)."""

    type: LayerType
    name: str  # as a printout and error messages write it
    # Fields of [t, k, o, s, p] the type reads besides t; every other one must be 0, except
    # `o`, which a layer that does not set the width repeats from its input (`Arch` fills it).
    fields: str
    spatial: bool = False  # needs an (H, W, C) input; output size (in + 2p - k) // s + 1
    sets_width: bool = False  # o is its output channels (or features): must be >= 1
    flattens: bool = False  # flattens its input first; only non-spatial layers may follow
    # How p is read: "padding" (any >= 0), "pool_padding" (at most k // 2, PyTorch's pooling
    # limit), "rate" (a Dropout's tenths, 0..MAX_DROPOUT_FIELD), or None (unused).
    p_rule: str | None = None
    params: Callable = _zero  # (k, c, o, n) -> trainable parameters, as PyTorch counts them
    macs: Callable = _zero  # (k, c, o, n, hw) -> multiply-accumulates for one image
    identity: Callable | None = None  # (k, s, p) -> true where the layer computes x -> x
    # Non-negativity of the activations (for "a ReLU on a non-negative input is a no-op"):
    # "makes" them non-negative, "keeps" whatever they were, or "resets" (anything else).
    sign: str = "resets"
    drop_if_repeated: bool = False  # the first of two in a row is a no-op (BatchNorm)
    drop_on_nonnegative: bool = False  # a no-op on a non-negative input (ReLU)


def _pool(layer_type: LayerType, name: str) -> LayerKind:
    # MaxPool pads with -inf and AvgPool with zeros: neither makes a non-negative input negative.
    return LayerKind(layer_type, name, "ksp", spatial=True, p_rule="pool_padding",
                     identity=lambda k, s, p: (k == 1) & (s == 1) & (p == 0), sign="keeps")


KINDS: dict[LayerType, LayerKind] = {kind.type: kind for kind in (
    LayerKind(LayerType.CONV, "Conv", "kosp", spatial=True, sets_width=True, p_rule="padding",
              params=lambda k, c, o, n: k * k * c * o + o,  # a bias per output channel
              macs=lambda k, c, o, n, hw: k * k * c * o * hw),
    _pool(LayerType.MAXPOOL, "MaxPool"),
    # Affine: a scale and a shift per channel (running statistics are buffers, not parameters).
    # BN(BN(x)) normalises again: the outer one alone gives the same function.
    LayerKind(LayerType.BATCHNORM, "BatchNorm", "", params=lambda k, c, o, n: 2 * c,
              drop_if_repeated=True),
    LayerKind(LayerType.RELU, "ReLU", "", sign="makes", drop_on_nonnegative=True),
    LayerKind(LayerType.SIGMOID, "Sigmoid", "", sign="makes"),
    # Dropout only zeroes and rescales; rate 0 is the identity.
    LayerKind(LayerType.DROPOUT, "Dropout", "p", p_rule="rate",
              identity=lambda k, s, p: p == 0, sign="keeps"),
    _pool(LayerType.AVGPOOL, "AvgPool"),
    LayerKind(LayerType.LINEAR, "Linear", "o", sets_width=True, flattens=True,
              params=lambda k, c, o, n: n * o + o, macs=lambda k, c, o, n, hw: n * o),
)}


def types_where(predicate: Callable[[LayerKind], bool]) -> frozenset:
    """The layer types whose entry satisfies `predicate`."""
    return frozenset(kind.type for kind in KINDS.values() if predicate(kind))


SPATIAL_TYPES = types_where(lambda kind: kind.spatial)
POOL_TYPES = types_where(lambda kind: kind.p_rule == "pool_padding")
# Layers whose `o` field repeats the input channels (or features, after flattening).
CHANNEL_PRESERVING_TYPES = types_where(lambda kind: not kind.sets_width)
WIDTH_TYPES = types_where(lambda kind: kind.sets_width)
# The types with parameters / MACs (the others' formulas are 0): what the batched counts select.
PARAM_KINDS = tuple(kind for kind in KINDS.values() if kind.params is not _zero)
MAC_KINDS = tuple(kind for kind in KINDS.values() if kind.macs is not _zero)
