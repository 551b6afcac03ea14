"""Reading a PyTorch printout (`print(model)`, Appendix 10) into an `Arch`: every module is
parsed, checked against PyTorch's own rules and the shapes, and the no-op layers dropped."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ac_jax.arch import shapes
from ac_jax.arch.shapes import InvalidArchError
from ac_jax.arch.spec import (
    Arch,
    Layer,
    LayerType,
    avgpool,
    batchnorm,
    conv,
    dropout,
    linear,
    maxpool,
    relu,
    sigmoid,
)

from ac_jax.arch.printout_tree import (  # noqa: F401 (PrintoutError: re-exported)
    Node,
    PrintoutError,
    as_int,
    bind,
    error_at,
    leaves,
    parse_tree,
    require,
    square,
    unsupported,
)

# PyTorch's BatchNorm defaults, as the paper's printouts show them.
_BN_EPS = 1e-05
_BN_MOMENTUM = 0.1
_MAX_INFERRED_SIZE = 1024



# ---- one module -> one item ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Item:
    """A parsed module: `kind` drives the checks, `declared` is its printed input size."""

    line: int
    text: str
    kind: str  # conv, pool, bn2d, bn1d, linear, elementwise, flatten, identity, softmax
    layer: Layer | None = None
    declared: int | None = None  # in_channels / num_features / in_features

    def error(self, message: str) -> PrintoutError:
        return error_at(self.line, self.text, message)


def _item(node: Node, kind: str, layer: Layer | None = None, declared: int | None = None):
    return _Item(node.line, node.text, kind, layer, declared)


def _parse_conv(node: Node) -> _Item:
    params = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation")
    params += ("groups", "bias", "padding_mode")
    defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True}
    a = bind(node, params, defaults | {"padding_mode": "zeros"})
    kernel = square(node, a["kernel_size"], "kernel_size")
    stride = square(node, a["stride"], "stride")
    require(node, square(node, a["dilation"], "dilation") == 1, "dilation != 1")
    require(node, as_int(node, a["groups"], "groups") == 1, f"groups={a['groups']} (only 1)")
    require(node, a["bias"] is True, "bias=False (our Conv2d always has a bias)")
    require(node, a["padding_mode"] == "zeros", f"padding_mode={a['padding_mode']} (only zeros)")
    if a["padding"] == "same":
        # PyTorch pads k - 1 in total, split evenly only for odd k; it needs stride 1 anyway.
        require(node, kernel % 2 == 1 and stride == 1, "padding=same needs odd kernel, stride 1")
        padding = kernel // 2
    elif a["padding"] == "valid":
        padding = 0
    else:
        padding = square(node, a["padding"], "padding")
    _check_geometry(node, kernel, stride, padding)
    out = as_int(node, a["out_channels"], "out_channels")
    declared = as_int(node, a["in_channels"], "in_channels")
    return _item(node, "conv", conv(kernel, out, stride, padding), declared)


def _check_geometry(node: Node, kernel: int, stride: int, padding: int) -> None:
    # Checked here so that input-size inference never meets a zero stride.
    ok = kernel >= 1 and stride >= 1 and padding >= 0
    require(node, ok, "kernel_size and stride must be >= 1, padding >= 0")


def _pool_geometry(node: Node, a: dict[str, Any]) -> tuple[int, int, int]:
    kernel = square(node, a["kernel_size"], "kernel_size")
    stride = kernel if a["stride"] is None else square(node, a["stride"], "stride")
    padding = square(node, a["padding"], "padding")
    _check_geometry(node, kernel, stride, padding)
    require(node, padding <= kernel // 2, "pooling padding must be at most kernel_size // 2")
    return kernel, stride, padding


def _parse_maxpool(node: Node) -> _Item:
    params = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
    defaults = {"stride": None, "padding": 0, "dilation": 1}
    a = bind(node, params, defaults | {"return_indices": False, "ceil_mode": False})
    geometry = _pool_geometry(node, a)
    require(node, square(node, a["dilation"], "dilation") == 1, "dilation != 1")
    require(node, a["ceil_mode"] is False, "ceil_mode=True (only floor mode)")
    require(node, a["return_indices"] is False, "return_indices=True")
    return _item(node, "pool", maxpool(*geometry))


def _parse_avgpool(node: Node) -> _Item:
    params = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
    params += ("divisor_override",)
    defaults = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True}
    a = bind(node, params, defaults | {"divisor_override": None})
    geometry = _pool_geometry(node, a)
    require(node, a["ceil_mode"] is False, "ceil_mode=True (only floor mode)")
    require(node, a["count_include_pad"] is True, "count_include_pad=False")
    require(node, a["divisor_override"] is None, "divisor_override")
    return _item(node, "pool", avgpool(*geometry))


def _parse_batchnorm(node: Node) -> _Item:
    params = ("num_features", "eps", "momentum", "affine", "track_running_stats")
    defaults = {"eps": _BN_EPS, "momentum": _BN_MOMENTUM, "affine": True}
    defaults |= {"track_running_stats": True, "bias": True}
    a = bind(node, params, defaults, kwonly=("bias",))
    require(node, a["affine"] is True, "affine=False (our BatchNorm is affine)")
    require(node, a["bias"] is True, "bias=False (our BatchNorm has a bias)")
    # These change what the layer computes but are not in the representation: refuse, not drop.
    require(node, a["eps"] == _BN_EPS, f"eps={a['eps']} (only the default 1e-05)")
    require(node, a["momentum"] == _BN_MOMENTUM, f"momentum={a['momentum']} (only 0.1)")
    require(node, a["track_running_stats"] is True, "track_running_stats=False")
    kind = "bn2d" if node.name == "BatchNorm2d" else "bn1d"
    return _item(node, kind, batchnorm(), as_int(node, a["num_features"], "num_features"))


def _parse_linear(node: Node) -> _Item:
    a = bind(node, ("in_features", "out_features", "bias"), {"bias": True})
    require(node, a["bias"] is True, "bias=False (our Linear always has a bias)")
    out = as_int(node, a["out_features"], "out_features")
    return _item(node, "linear", linear(out), as_int(node, a["in_features"], "in_features"))


def _parse_relu(node: Node) -> _Item:
    a = bind(node, ("inplace",), {"inplace": False})
    # Old PyTorch (the paper's printouts) wrote `ReLU(inplace)` for inplace=True.
    require(node, a["inplace"] in (True, False, "inplace"), f"inplace={a['inplace']!r}")
    return _item(node, "elementwise", relu())


def _parse_sigmoid(node: Node) -> _Item:
    bind(node, (), {})
    return _item(node, "elementwise", sigmoid())


def _parse_dropout(node: Node) -> _Item:
    a = bind(node, ("p", "inplace"), {"p": 0.5, "inplace": False})
    rate = a["p"]
    require(node, isinstance(rate, (int, float)) and not isinstance(rate, bool), f"p={rate!r}")
    try:
        layer = dropout(rate)
    except ValueError:
        raise unsupported(node, f"dropout rate must be in [0, 1), got {rate!r}") from None
    return _item(node, "elementwise", layer)


def _parse_flatten(node: Node) -> _Item:
    a = bind(node, ("start_dim", "end_dim"), {"start_dim": 1, "end_dim": -1})
    dims = (a["start_dim"], a["end_dim"])
    require(node, dims == (1, -1), "only Flatten(start_dim=1, end_dim=-1)")
    return _item(node, "flatten")


def _parse_identity(node: Node) -> _Item:
    bind(node, (), {})
    return _item(node, "identity")


def _parse_softmax(node: Node) -> _Item:
    a = bind(node, ("dim",), {"dim": None})
    require(node, a["dim"] in (None, 1, -1), f"dim={a['dim']} (only over the classes)")
    return _item(node, "softmax")


_PARSERS = {
    "Conv2d": _parse_conv,
    "MaxPool2d": _parse_maxpool,
    "AvgPool2d": _parse_avgpool,
    "BatchNorm2d": _parse_batchnorm,
    "BatchNorm1d": _parse_batchnorm,
    "Linear": _parse_linear,
    "ReLU": _parse_relu,
    "Sigmoid": _parse_sigmoid,
    "Dropout": _parse_dropout,
    "Flatten": _parse_flatten,
    "Identity": _parse_identity,
    "Softmax": _parse_softmax,
    "LogSoftmax": _parse_softmax,
}


def _parse_module(node: Node) -> _Item:
    parser = _PARSERS.get(node.name)
    if parser is None:
        raise unsupported(node)
    return parser(node)


# ---- sequence checks ---------------------------------------------------------------------------

_SPATIAL_KINDS = frozenset({"conv", "pool", "bn2d"})


def _drop_no_ops(items: list[_Item]) -> list[_Item]:
    """Removes Identity, Flatten and a final Softmax; checks where Flatten and Softmax may be."""
    items = [item for item in items if item.kind != "identity"]
    for index, item in enumerate(items):
        if item.kind == "softmax" and index != len(items) - 1:
            raise unsupported(item, "Softmax/LogSoftmax is only accepted as the last module")
    if items and items[-1].kind == "softmax":
        items = items[:-1]
    flat, seen_linear, kept = False, False, []
    for item in items:
        if item.kind in _SPATIAL_KINDS and flat:
            raise item.error(
                "spatial layer after Flatten/Linear (only ReLU, Sigmoid, Dropout, BatchNorm1d and "
                "Linear may follow them)"
            )
        if item.kind == "bn1d" and not seen_linear:
            # Our BatchNorm before the first Linear is per channel of the feature map.
            raise item.error("BatchNorm1d before the first Linear is not representable")
        if item.kind in ("flatten", "linear"):
            flat = True
        seen_linear |= item.kind == "linear"
        if item.kind != "flatten":
            kept.append(item)
    return kept


def _input_channels(items: Sequence[_Item], input_shape: Sequence[int] | None) -> int:
    if input_shape is not None:
        return input_shape[2]
    for item in items:
        if item.kind in ("conv", "bn2d"):
            return item.declared
        if item.kind == "linear":
            break
    raise PrintoutError(
        "cannot infer the input channels: no Conv2d or BatchNorm2d before the first Linear; "
        "pass input_shape=(H, W, C)"
    )


def _check_channels(items: Sequence[_Item], channels: int) -> None:
    """Each Conv2d/BatchNorm/later Linear must declare the running channel/feature count."""
    running, flat = channels, False
    for item in items:
        checked = item.kind in ("conv", "bn2d", "bn1d") or (item.kind == "linear" and flat)
        if checked and item.declared != running:
            what = "features" if flat else "channels"
            raise item.error(f"declares {item.declared} input {what}, but its input has {running}")
        if item.kind == "conv":
            running = item.layer.o
        elif item.kind == "linear":
            running, flat = item.layer.o, True


def _flat_size(items: Sequence[_Item], size: int, channels: int) -> int | None:
    """Features reaching the first Linear from a size x size x channels input (None: collapses)."""
    for item in items:
        if item.kind == "linear":
            break
        if item.kind in ("conv", "pool"):
            layer = item.layer
            size = shapes.conv_output_size(size, layer.k, layer.s, layer.p)
            if size < 1:
                return None
            channels = layer.o if layer.t == LayerType.CONV else channels
    return size * size * channels


def _infer_size(items: Sequence[_Item], channels: int) -> int:
    """The smallest square input size whose flattened features match the first Linear's."""
    first = next(item for item in items if item.kind == "linear")
    for size in range(1, _MAX_INFERRED_SIZE + 1):
        if _flat_size(items, size, channels) == first.declared:
            return size
    raise first.error(
        f"no square input of size 1..{_MAX_INFERRED_SIZE} with {channels} channels gives "
        f"{first.declared} features here; pass input_shape=(H, W, C)"
    )


def _check_shapes(arch: Arch, items: Sequence[_Item]) -> None:
    """Walks the shapes, naming the line of the first layer that cannot be built."""
    shape: shapes.Shape = arch.input_shape
    for index, (layer, item) in enumerate(zip(arch.layers, items, strict=True)):
        if item.kind == "linear" and len(shape) == 3 and math.prod(shape) != item.declared:
            h, w, c = shape
            raise item.error(
                f"in_features={item.declared}, but the flattened input has {math.prod(shape)} "
                f"(= {h}x{w}x{c})"
            )
        try:
            shape = shapes.layer_info(index, layer, shape).out_shape
        except InvalidArchError as err:
            raise item.error(str(err)) from None


def parse_printout(text: str, input_shape: Sequence[int] | None = None) -> Arch:
    """Reads a PyTorch printout of a sequential CNN: the paper's format or current ``str(module)``.

    Accepted: Conv2d (square kernel/stride/padding, ``padding=same`` for odd kernels, ``valid``;
    bias, groups 1, dilation 1, zeros padding mode), MaxPool2d (dilation 1, floor mode),
    AvgPool2d (count_include_pad, floor mode), BatchNorm2d before the first Linear and BatchNorm1d
    after it (affine, bias, PyTorch's default eps/momentum, running statistics), ReLU, Sigmoid,
    Dropout (any rate in [0, 1), kept exactly), Linear with bias. ``Flatten(start_dim=1,
    end_dim=-1)`` and ``Identity()`` are no-ops (we flatten implicitly before the first Linear).
    A ``Softmax``/``LogSoftmax`` over the classes as the very last module is dropped: it has no
    parameters, keeps the argmax, and our networks output logits. Containers: the model's own
    class (any name, e.g. ``VGG(``, ``Net(``; its named children are taken in printed order) and
    nested ``Sequential``/``ModuleList`` (flattened in order; ``(0-1): 2 x ReLU()`` is expanded).
    Anything else, including residual/custom blocks, raises `PrintoutError` (a `ValueError`) naming
    the 1-based line and the layer; nothing is silently dropped.

    `input_shape` ``(H, W, C)`` is verified against the printed channel and feature counts; when
    None, C comes from the first Conv2d (or a leading BatchNorm2d) and a square H = W is the
    smallest size in 1..1024 that gives the first Linear's in_features. The class count is the
    last Linear's out_features.
    """
    shape = None if input_shape is None else shapes.checked_input_shape(input_shape)
    items = [_parse_module(node) for node in leaves(parse_tree(text), frozenset(_PARSERS))]
    items = _drop_no_ops(items)
    if not items:
        raise PrintoutError("the printout has no layers")
    if items[-1].kind != "linear":
        raise items[-1].error("the last layer must be a Linear (the classifier)")
    channels = _input_channels(items, shape)
    _check_channels(items, channels)
    if shape is None:
        size = _infer_size(items, channels)
        shape = (size, size, channels)
    arch = Arch(shape, items[-1].layer.o, tuple(item.layer for item in items))
    _check_shapes(arch, items)
    return shapes.validate(arch)
