"""PyTorch printouts (Appendix 10), runnable PyTorch modules and JSON specs of an `Arch`."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import numbers
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ac_jax.arch import shapes, zoo
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

# PyTorch's BatchNorm defaults, as the paper's printouts show them.
_BN_EPS = 1e-05
_BN_MOMENTUM = 0.1
_BN_REPR_TAIL = "eps=1e-05, momentum=0.1, affine=True, track_running_stats=True"
_CONTAINERS = frozenset({"Sequential", "ModuleList"})
_MAX_INFERRED_SIZE = 1024


class PrintoutError(ValueError):
    """A printout we cannot read; the message names the 1-based line and the layer text."""


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _first_linear(arch: Arch) -> int:
    """Index of the first Linear (the split between `features` and `classifier`)."""
    for index, layer in enumerate(arch.layers):
        if layer.t == LayerType.LINEAR:
            return index
    return len(arch.layers)


def _rate_text(rate: float) -> str:
    """A dropout rate as short as it prints exactly ("0.5", "0.25", "0"), else in full."""
    short = f"{rate:g}"
    return short if float(short) == rate else repr(rate)


def _layer_repr(layer: Layer, in_shape: shapes.Shape) -> str:
    """One layer as PyTorch prints it (the paper's Appendix 10 spelling)."""
    t, k, s, p = layer.t, layer.k, layer.s, layer.p
    if t == LayerType.CONV:
        return (
            f"Conv2d({in_shape[2]}, {layer.o}, kernel_size=({k}, {k}), stride=({s}, {s}), "
            f"padding=({p}, {p}))"
        )
    if t == LayerType.MAXPOOL:
        return f"MaxPool2d(kernel_size={k}, stride={s}, padding={p}, dilation=1, ceil_mode=False)"
    if t == LayerType.AVGPOOL:
        return f"AvgPool2d(kernel_size={k}, stride={s}, padding={p})"
    if t == LayerType.BATCHNORM:
        dim = "2d" if len(in_shape) == 3 else "1d"
        return f"BatchNorm{dim}({in_shape[-1]}, {_BN_REPR_TAIL})"
    if t == LayerType.RELU:
        return "ReLU()"
    if t == LayerType.SIGMOID:
        return "Sigmoid()"
    if t == LayerType.DROPOUT:
        return f"Dropout (p={_rate_text(layer.dropout_rate)})"
    if t == LayerType.LINEAR:
        return f"Linear(in_features={math.prod(in_shape)}, out_features={layer.o}, bias=True)"
    raise InvalidArchError(f"cannot print layer {list(layer)}")


def _sections(arch: Arch) -> list[tuple[str, list[tuple[Layer, shapes.Shape]]]]:
    """(name, [(layer, in_shape)]) for `features` and `classifier`; validates `arch`."""
    info = shapes.analyze(arch)
    pairs = [(layer, li.in_shape) for layer, li in zip(arch.layers, info.layers, strict=True)]
    split = _first_linear(arch)
    return [("features", pairs[:split]), ("classifier", pairs[split:])]


def to_printout(arch: Arch, class_name: str = "Model") -> str:
    """The PyTorch printout of `arch` in the paper's Appendix 10 format (no trailing newline)."""
    lines = [f"{class_name}("]
    for name, pairs in _sections(arch):
        if not pairs:
            lines.append(f"  ({name}): Sequential()")
            continue
        lines.append(f"  ({name}): Sequential(")
        for index, (layer, shape) in enumerate(pairs):
            lines.append(f"    ({index}): {_layer_repr(layer, shape)}")
        lines.append("  )")
    lines.append(")")
    return "\n".join(lines)


def _torch_expr(layer: Layer, in_shape: shapes.Shape) -> str:
    """The `torch.nn` constructor call for one layer (default bias / affine)."""
    t, k, s, p = layer.t, layer.k, layer.s, layer.p
    if t == LayerType.CONV:
        return f"nn.Conv2d({in_shape[2]}, {layer.o}, kernel_size={k}, stride={s}, padding={p})"
    if t == LayerType.MAXPOOL:
        return f"nn.MaxPool2d(kernel_size={k}, stride={s}, padding={p})"
    if t == LayerType.AVGPOOL:
        return f"nn.AvgPool2d(kernel_size={k}, stride={s}, padding={p})"
    if t == LayerType.BATCHNORM:
        return f"nn.BatchNorm{'2d' if len(in_shape) == 3 else '1d'}({in_shape[-1]})"
    if t == LayerType.RELU:
        return "nn.ReLU()"
    if t == LayerType.SIGMOID:
        return "nn.Sigmoid()"
    if t == LayerType.DROPOUT:
        return f"nn.Dropout(p={_rate_text(layer.dropout_rate)})"
    if t == LayerType.LINEAR:
        return f"nn.Linear({math.prod(in_shape)}, {layer.o})"
    raise InvalidArchError(f"cannot export layer {list(layer)}")


_MODULE_TEMPLATE = '''\
"""PyTorch module exported by ac_jax.arch.torch_io: {num_params:,} parameters."""

import torch
from torch import nn

INPUT_SHAPE = ({c}, {h}, {w})  # (C, H, W)
NUM_CLASSES = {num_classes}


class {class_name}(nn.Module):
    def __init__(self):
        super().__init__()
{sections}

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


if __name__ == "__main__":
    model = {class_name}().eval()
    with torch.no_grad():
        out = model(torch.randn(2, *INPUT_SHAPE))
    print("output shape:", tuple(out.shape))
    print("parameters:", sum(p.numel() for p in model.parameters()))
'''


def to_torch_module_source(arch: Arch, class_name: str = "Model") -> str:
    """A self-contained, runnable Python file defining `class_name` (an `nn.Module`) for `arch`."""
    if not class_name.isidentifier() or class_name in {"torch", "nn"}:
        raise ValueError(f"class_name must be an identifier other than torch/nn: {class_name!r}")
    sections = []
    for name, pairs in _sections(arch):
        if not pairs:
            sections.append(f"        self.{name} = nn.Sequential()")
            continue
        body = "".join(f"            {_torch_expr(layer, shape)},\n" for layer, shape in pairs)
        sections.append(f"        self.{name} = nn.Sequential(\n{body}        )")
    h, w, c = arch.input_shape
    return _MODULE_TEMPLATE.format(
        num_params=arch.num_params,
        c=c,
        h=h,
        w=w,
        num_classes=arch.num_classes,
        class_name=class_name,
        sections="\n".join(sections),
    )


# --------------------------------------------------------------------------------------------
# Printout parsing: text -> tree of lines -> flat list of modules -> layers -> checked Arch
# --------------------------------------------------------------------------------------------

# `(key): ` and ModuleList's `N x ` repeat prefix are optional; `rest` starts at the parenthesis.
_LINE_RE = re.compile(
    r"^(?:\((?P<key>[^()]*)\):\s*)?(?:(?P<count>\d+) x )?"
    r"(?P<name>[A-Za-z_]\w*)\s*(?P<rest>\(.*)$"
)


@dataclasses.dataclass
class _Node:
    """One printed module: a leaf (``args`` is its argument text) or a container (``args`` None)."""

    line: int
    text: str  # the line without its `(key): ` / `N x ` prefix, for error messages
    name: str
    key: str | None
    count: int
    args: str | None
    children: list[_Node] = dataclasses.field(default_factory=list)


def _error(line: int, text: str, message: str) -> PrintoutError:
    return PrintoutError(f"line {line}: '{text}': {message}")


def _unsupported(node: _Node | _Item, reason: str | None = None) -> PrintoutError:
    message = f"line {node.line}: unsupported layer '{node.text}'"
    return PrintoutError(message + (f": {reason}" if reason else ""))


def _closes_at_end(rest: str) -> bool:
    """Whether the parenthesis opening `rest` closes exactly at its last character."""
    depth = 0
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return index == len(rest) - 1
    return False


def _parse_line(number: int, stripped: str) -> _Node:
    match = _LINE_RE.match(stripped)
    if match is None:
        raise PrintoutError(f"line {number}: cannot read '{stripped}' as a module")
    rest = match["rest"]
    text = stripped[match.start("name") :]
    count = int(match["count"] or 1)
    if rest == "(":
        return _Node(number, text, match["name"], match["key"], count, None)
    if not _closes_at_end(rest):
        raise PrintoutError(f"line {number}: unbalanced parentheses in '{stripped}'")
    return _Node(number, text, match["name"], match["key"], count, rest[1:-1])


def _parse_tree(text: str) -> list[_Node]:
    """Top-level modules of a printout, with their children nested (indentation is ignored)."""
    roots: list[_Node] = []
    stack: list[_Node] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped == ")":
            if not stack:
                raise PrintoutError(f"line {number}: ')' closes nothing")
            stack.pop()
            continue
        node = _parse_line(number, stripped)
        (stack[-1].children if stack else roots).append(node)
        if node.args is None:
            stack.append(node)
    if stack:
        raise PrintoutError(f"line {stack[-1].line}: '{stack[-1].text}' is never closed")
    return roots


def _leaves(nodes: Sequence[_Node], depth: int = 0) -> Iterator[_Node]:
    """Leaf modules in printed order; the model's own class and Sequential/ModuleList are opened."""
    for node in nodes:
        # The model's class (unkeyed, top level) may have any name; nested blocks of other
        # classes have their own forward (residual additions, branches) that a printout hides.
        transparent = node.name in _CONTAINERS or (depth == 0 and node.key is None)
        for _ in range(node.count):
            if node.args is None:
                if not transparent:
                    raise _unsupported(
                        node,
                        "residual/custom blocks are unsupported (only Sequential and ModuleList "
                        "containers are flattened)",
                    )
                yield from _leaves(node.children, depth + 1)
            elif transparent and not node.args.strip() and node.name not in _PARSERS:
                continue  # an empty container, e.g. `(features): Sequential()`
            else:
                yield node


# ---- arguments -------------------------------------------------------------------------------


def _split_args(text: str) -> list[str]:
    """Splits at the commas outside parentheses/brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    last = "".join(current).strip()
    if last or parts:
        parts.append(last)
    return parts


def _value(node: _Node, text: str) -> Any:
    """A Python literal, or a bare word (PyTorch prints `padding=same`, `padding_mode=zeros`)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if re.fullmatch(r"[A-Za-z_]\w*", text):
            return text
        raise _unsupported(node, f"cannot read the value {text!r}") from None


def _bind(
    node: _Node, params: Sequence[str], defaults: dict[str, Any], kwonly: Sequence[str] = ()
) -> dict[str, Any]:
    """Binds the printed arguments like the PyTorch constructor would; unknown ones are errors."""
    values = dict(defaults)
    given: set[str] = set()
    keyword_seen = False
    for index, part in enumerate(_split_args(node.args or "")):
        match = re.fullmatch(r"([A-Za-z_]\w*)\s*=\s*(.+)", part, re.S)
        if match:
            name, raw, keyword_seen = match[1], match[2], True
            if name not in params and name not in kwonly:
                raise _unsupported(node, f"unknown argument {name!r}")
        elif keyword_seen:
            raise _unsupported(node, f"positional argument {part!r} after a keyword argument")
        elif index < len(params):
            name, raw = params[index], part
        else:
            raise _unsupported(node, "too many arguments")
        if not raw or name in given:
            raise _unsupported(node, f"empty or repeated argument {name!r}")
        given.add(name)
        values[name] = _value(node, raw)
    missing = [p for p in params if p not in values]
    if missing:
        raise _unsupported(node, f"missing argument(s) {', '.join(missing)}")
    return values


def _int(node: _Node, value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _unsupported(node, f"{field} must be an integer, got {value!r}")
    return value


def _square(node: _Node, value: Any, field: str) -> int:
    """An int, or a tuple of equal ints (PyTorch prints `kernel_size=(3, 3)`)."""
    if isinstance(value, tuple):
        if len(value) not in (1, 2) or len(set(value)) != 1:
            raise _unsupported(node, f"non-square {field}={value} (only square ones are supported)")
        value = value[0]
    return _int(node, value, field)


def _require(node: _Node, ok: bool, reason: str) -> None:
    if not ok:
        raise _unsupported(node, reason)


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
        return _error(self.line, self.text, message)


def _item(node: _Node, kind: str, layer: Layer | None = None, declared: int | None = None):
    return _Item(node.line, node.text, kind, layer, declared)


def _parse_conv(node: _Node) -> _Item:
    params = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation")
    params += ("groups", "bias", "padding_mode")
    defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True}
    a = _bind(node, params, defaults | {"padding_mode": "zeros"})
    kernel = _square(node, a["kernel_size"], "kernel_size")
    stride = _square(node, a["stride"], "stride")
    _require(node, _square(node, a["dilation"], "dilation") == 1, "dilation != 1")
    _require(node, _int(node, a["groups"], "groups") == 1, f"groups={a['groups']} (only 1)")
    _require(node, a["bias"] is True, "bias=False (our Conv2d always has a bias)")
    _require(node, a["padding_mode"] == "zeros", f"padding_mode={a['padding_mode']} (only zeros)")
    if a["padding"] == "same":
        # PyTorch pads k - 1 in total, split evenly only for odd k; it needs stride 1 anyway.
        _require(node, kernel % 2 == 1 and stride == 1, "padding=same needs odd kernel, stride 1")
        padding = kernel // 2
    elif a["padding"] == "valid":
        padding = 0
    else:
        padding = _square(node, a["padding"], "padding")
    _check_geometry(node, kernel, stride, padding)
    out = _int(node, a["out_channels"], "out_channels")
    declared = _int(node, a["in_channels"], "in_channels")
    return _item(node, "conv", conv(kernel, out, stride, padding), declared)


def _check_geometry(node: _Node, kernel: int, stride: int, padding: int) -> None:
    # Checked here so that input-size inference never meets a zero stride.
    ok = kernel >= 1 and stride >= 1 and padding >= 0
    _require(node, ok, "kernel_size and stride must be >= 1, padding >= 0")


def _pool_geometry(node: _Node, a: dict[str, Any]) -> tuple[int, int, int]:
    kernel = _square(node, a["kernel_size"], "kernel_size")
    stride = kernel if a["stride"] is None else _square(node, a["stride"], "stride")
    padding = _square(node, a["padding"], "padding")
    _check_geometry(node, kernel, stride, padding)
    _require(node, padding <= kernel // 2, "pooling padding must be at most kernel_size // 2")
    return kernel, stride, padding


def _parse_maxpool(node: _Node) -> _Item:
    params = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
    defaults = {"stride": None, "padding": 0, "dilation": 1}
    a = _bind(node, params, defaults | {"return_indices": False, "ceil_mode": False})
    geometry = _pool_geometry(node, a)
    _require(node, _square(node, a["dilation"], "dilation") == 1, "dilation != 1")
    _require(node, a["ceil_mode"] is False, "ceil_mode=True (only floor mode)")
    _require(node, a["return_indices"] is False, "return_indices=True")
    return _item(node, "pool", maxpool(*geometry))


def _parse_avgpool(node: _Node) -> _Item:
    params = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
    params += ("divisor_override",)
    defaults = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True}
    a = _bind(node, params, defaults | {"divisor_override": None})
    geometry = _pool_geometry(node, a)
    _require(node, a["ceil_mode"] is False, "ceil_mode=True (only floor mode)")
    _require(node, a["count_include_pad"] is True, "count_include_pad=False")
    _require(node, a["divisor_override"] is None, "divisor_override")
    return _item(node, "pool", avgpool(*geometry))


def _parse_batchnorm(node: _Node) -> _Item:
    params = ("num_features", "eps", "momentum", "affine", "track_running_stats")
    defaults = {"eps": _BN_EPS, "momentum": _BN_MOMENTUM, "affine": True}
    defaults |= {"track_running_stats": True, "bias": True}
    a = _bind(node, params, defaults, kwonly=("bias",))
    _require(node, a["affine"] is True, "affine=False (our BatchNorm is affine)")
    _require(node, a["bias"] is True, "bias=False (our BatchNorm has a bias)")
    # These change what the layer computes but are not in the representation: refuse, not drop.
    _require(node, a["eps"] == _BN_EPS, f"eps={a['eps']} (only the default 1e-05)")
    _require(node, a["momentum"] == _BN_MOMENTUM, f"momentum={a['momentum']} (only 0.1)")
    _require(node, a["track_running_stats"] is True, "track_running_stats=False")
    kind = "bn2d" if node.name == "BatchNorm2d" else "bn1d"
    return _item(node, kind, batchnorm(), _int(node, a["num_features"], "num_features"))


def _parse_linear(node: _Node) -> _Item:
    a = _bind(node, ("in_features", "out_features", "bias"), {"bias": True})
    _require(node, a["bias"] is True, "bias=False (our Linear always has a bias)")
    out = _int(node, a["out_features"], "out_features")
    return _item(node, "linear", linear(out), _int(node, a["in_features"], "in_features"))


def _parse_relu(node: _Node) -> _Item:
    a = _bind(node, ("inplace",), {"inplace": False})
    # Old PyTorch (the paper's printouts) wrote `ReLU(inplace)` for inplace=True.
    _require(node, a["inplace"] in (True, False, "inplace"), f"inplace={a['inplace']!r}")
    return _item(node, "elementwise", relu())


def _parse_sigmoid(node: _Node) -> _Item:
    _bind(node, (), {})
    return _item(node, "elementwise", sigmoid())


def _parse_dropout(node: _Node) -> _Item:
    a = _bind(node, ("p", "inplace"), {"p": 0.5, "inplace": False})
    rate = a["p"]
    _require(node, isinstance(rate, (int, float)) and not isinstance(rate, bool), f"p={rate!r}")
    try:
        layer = dropout(rate)
    except ValueError:
        raise _unsupported(node, f"dropout rate must be in [0, 1), got {rate!r}") from None
    return _item(node, "elementwise", layer)


def _parse_flatten(node: _Node) -> _Item:
    a = _bind(node, ("start_dim", "end_dim"), {"start_dim": 1, "end_dim": -1})
    dims = (a["start_dim"], a["end_dim"])
    _require(node, dims == (1, -1), "only Flatten(start_dim=1, end_dim=-1)")
    return _item(node, "flatten")


def _parse_identity(node: _Node) -> _Item:
    _bind(node, (), {})
    return _item(node, "identity")


def _parse_softmax(node: _Node) -> _Item:
    a = _bind(node, ("dim",), {"dim": None})
    _require(node, a["dim"] in (None, 1, -1), f"dim={a['dim']} (only over the classes)")
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


def _parse_module(node: _Node) -> _Item:
    parser = _PARSERS.get(node.name)
    if parser is None:
        raise _unsupported(node)
    return parser(node)


# ---- sequence checks ---------------------------------------------------------------------------

_SPATIAL_KINDS = frozenset({"conv", "pool", "bn2d"})


def _drop_no_ops(items: list[_Item]) -> list[_Item]:
    """Removes Identity, Flatten and a final Softmax; checks where Flatten and Softmax may be."""
    items = [item for item in items if item.kind != "identity"]
    for index, item in enumerate(items):
        if item.kind == "softmax" and index != len(items) - 1:
            raise _unsupported(item, "Softmax/LogSoftmax is only accepted as the last module")
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


def _checked_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shape)
    if len(shape) != 3 or not ints or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) of positive ints, got {input_shape!r}")
    return tuple(int(v) for v in shape)


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
    shape = None if input_shape is None else _checked_input_shape(input_shape)
    items = [_parse_module(node) for node in _leaves(_parse_tree(text))]
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


# --------------------------------------------------------------------------------------------
# JSON spec
# --------------------------------------------------------------------------------------------

_TYPE_NAMES = {t.name.lower(): t for t in LayerType if t != LayerType.END}
_TYPE_NAMES |= {
    "conv2d": LayerType.CONV,
    "max_pool": LayerType.MAXPOOL,
    "avg_pool": LayerType.AVGPOOL,
    "bn": LayerType.BATCHNORM,
    "fc": LayerType.LINEAR,
}
# Keys of the object form per type: (required, optional with defaults); a pooling stride of
# None means "equal to the kernel", as in PyTorch.
_OBJECT_KEYS: dict[LayerType, tuple[tuple[str, ...], dict[str, Any]]] = {
    LayerType.CONV: (("kernel", "out"), {"stride": 1, "padding": 0}),
    LayerType.MAXPOOL: (("kernel",), {"stride": None, "padding": 0}),
    LayerType.AVGPOOL: (("kernel",), {"stride": None, "padding": 0}),
    LayerType.BATCHNORM: ((), {}),
    LayerType.RELU: ((), {}),
    LayerType.SIGMOID: ((), {}),
    LayerType.DROPOUT: (("rate",), {}),
    LayerType.LINEAR: (("out",), {}),
}
_TOP_LEVEL_KEYS = ("input_shape", "num_classes", "layers")


def _json_row(layer: Layer):
    """A ``[t, k, o, s, p]`` row, or for a Dropout with an exact rate its object form."""
    if layer.rate is not None:
        return {"type": "dropout", "rate": layer.rate}
    return list(layer)


def to_json(arch: Arch) -> str:
    """The JSON spec of a valid `arch`: input shape (H, W, C), classes, ``[t, k, o, s, p]`` rows."""
    shapes.validate(arch)
    rows = ",\n".join(f"    {json.dumps(_json_row(layer))}" for layer in arch.layers)
    return (
        "{\n"
        f'  "input_shape": {json.dumps(list(arch.input_shape))},\n'
        f'  "num_classes": {arch.num_classes},\n'
        f'  "layers": [\n{rows}\n  ]\n'
        "}\n"
    )


def _layer_type(where: str, name: Any) -> LayerType:
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key not in _TYPE_NAMES:
        raise ValueError(f"{where}: unknown layer type {name!r}; known: {', '.join(_TYPE_NAMES)}")
    return _TYPE_NAMES[key]


def _json_int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def _object_layer(where: str, raw: dict[str, Any]) -> Layer:
    t = _layer_type(where, raw.get("type"))
    required, optional = _OBJECT_KEYS[t]
    fields = {k: v for k, v in raw.items() if k != "type"}
    unknown = set(fields) - set(required) - set(optional)
    missing = set(required) - set(fields)
    if unknown or missing:
        allowed = ", ".join((*required, *optional)) or "none"
        raise ValueError(
            f"{where}: {t.name.lower()} layer has unknown {sorted(unknown)} / missing "
            f"{sorted(missing)} keys (keys: {allowed})"
        )
    if t == LayerType.DROPOUT:
        rate = fields["rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise ValueError(f"{where}: dropout 'rate' must be a number, got {rate!r}")
        try:
            return dropout(rate)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    values = {k: fields.get(k, default) for k, default in optional.items()}
    values |= {k: fields[k] for k in required}
    v = {k: None if x is None else _json_int(where, k, x) for k, x in values.items()}
    if t == LayerType.CONV:
        return conv(v["kernel"], v["out"], v["stride"], v["padding"])
    if t == LayerType.MAXPOOL:
        return maxpool(v["kernel"], v["stride"], v["padding"])
    if t == LayerType.AVGPOOL:
        return avgpool(v["kernel"], v["stride"], v["padding"])
    if t == LayerType.LINEAR:
        return linear(v["out"])
    return Layer(t)


def _json_layer(index: int, raw: Any) -> Layer:
    where = f"layer {index}"
    if isinstance(raw, str):
        t = _layer_type(where, raw)
        if _OBJECT_KEYS[t][0]:
            raise ValueError(
                f"{where}: {raw!r} needs parameters {list(_OBJECT_KEYS[t][0])}; write it as an "
                f'object, e.g. {{"type": "{t.name.lower()}", ...}}'
            )
        return Layer(t)
    if isinstance(raw, dict):
        return _object_layer(where, raw)
    if isinstance(raw, (list, tuple)) and len(raw) == 5:
        return Layer(*(_json_int(where, name, v) for name, v in zip("tkosp", raw, strict=True)))
    raise ValueError(f"{where}: expected [t, k, o, s, p], a type name or an object, got {raw!r}")


def _json_object(text_or_dict: str | bytes | dict[str, Any]) -> dict[str, Any]:
    data = text_or_dict
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON spec is an object with keys {_TOP_LEVEL_KEYS}, got {type(data)}")
    return dict(data)


def parse_json(text_or_dict: str | bytes | dict[str, Any]) -> Arch:
    """Reads a JSON spec (text or an already-decoded dict) and validates the architecture.

    ``{"input_shape": [H, W, C], "num_classes": n, "layers": [...]}``; each layer is a
    ``[t, k, o, s, p]`` row, a type name for parameterless layers (``"relu"``) or an object such as
    ``{"type": "conv", "kernel": 3, "out": 32, "stride": 1, "padding": 1}``. `num_classes` may be
    left out (then it is the last Linear's out features). Raises `ValueError` (`InvalidArchError`
    for an architecture that cannot be built).
    """
    data = _json_object(text_or_dict)
    unknown = set(data) - set(_TOP_LEVEL_KEYS)
    if unknown or "input_shape" not in data or not isinstance(data.get("layers"), list):
        raise ValueError(
            "a JSON spec needs 'input_shape' and a 'layers' list (optional: 'num_classes'); "
            f"unknown keys: {sorted(unknown)}"
        )
    layers = [_json_layer(index, raw) for index, raw in enumerate(data["layers"])]
    if not layers:
        raise ValueError("a JSON spec needs at least one layer")
    num_classes = _json_int("spec", "num_classes", data.get("num_classes", layers[-1].o))
    arch = Arch(_checked_input_shape(data["input_shape"]), num_classes, tuple(layers))
    return shapes.validate(arch)


# --------------------------------------------------------------------------------------------
# Loading any of the above
# --------------------------------------------------------------------------------------------


def _with_num_classes(arch: Arch, num_classes: int | None) -> Arch:
    """Replaces the classifier's output size (as `zoo.get` does for a task's class count)."""
    if num_classes is None or num_classes == arch.num_classes:
        return arch
    layers = arch.layers[:-1] + (linear(num_classes),)
    return shapes.validate(Arch(arch.input_shape, num_classes, layers))


def _parse_text(text: str, input_shape: Sequence[int] | None) -> Arch:
    """JSON if it starts with `{`, else a printout."""
    if not text.lstrip().startswith("{"):
        return _printout_with_hint(text, input_shape)
    data = _json_object(text)
    if input_shape is not None:
        data["input_shape"] = list(input_shape)
    return parse_json(data)


def _load_file(path: Path, input_shape: Sequence[int] | None) -> Arch:
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err})") from None
    if path.suffix.lower() == ".json" and not text.lstrip().startswith("{"):
        raise ValueError(f"{path}: a .json file must hold a JSON object")
    try:
        return _parse_text(text, input_shape)
    except ValueError as err:  # PrintoutError / InvalidArchError keep their class
        raise type(err)(f"{path}: {err}") from None


def _is_zoo_name(text: str) -> bool:
    return text.lower().replace("-", "").replace("_", "") in zoo.ZOO


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        return False


class FunctionalCallsWarning(UserWarning):
    """A printout that may be missing layers called in `forward()`."""


def _missing_activation(arch: Arch) -> str:
    """Where two Conv/Linear layers follow each other with no activation between ("" if
    nowhere): a printout shows modules only, so F.relu / F.max_pool2d called in forward() are
    missing from it."""
    last = None
    for index, layer in enumerate(arch.layers):
        if layer.t in (LayerType.RELU, LayerType.SIGMOID):
            last = None
        elif layer.t in (LayerType.CONV, LayerType.LINEAR):
            if last is not None:
                return (f"no activation between layers {last} and {index} "
                        f"({arch.layers[last].type.name.title()} -> {layer.type.name.title()}). "
                        "Activations and pools called in forward() (F.relu, F.max_pool2d, ...) "
                        "do not appear in a printout; if the network has them, pass its module "
                        "file instead: --model path/to/net.py:ClassName")
            last = index
    return ""


def warn_if_activations_missing(arch: Arch, origin: str) -> None:
    """A `FunctionalCallsWarning` when `_missing_activation` finds a gap."""
    gap = _missing_activation(arch)
    if gap:
        warnings.warn(FunctionalCallsWarning(f"{origin}: {gap}"), stacklevel=3)


def _printout_with_hint(text: str, input_shape) -> Arch:
    """`parse_printout`; a failure against `input_shape` of a printout that parses without it
    and lacks activations (a forward() with functional calls) says so."""
    try:
        return parse_printout(text, input_shape)
    except PrintoutError as err:
        if input_shape is None:
            raise
        try:
            gap = _missing_activation(parse_printout(text))
        except ValueError:
            gap = ""
        if gap:
            raise PrintoutError(f"{err}\n(hint: {gap})") from None
        raise


def load_arch(
    source: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    model_args: dict | None = None,
) -> Arch:
    """An `Arch` from a zoo name, a ``.json`` spec file, a printout file, printout/JSON text, or
    a PyTorch module file ``path/to/net.py:ClassName`` (constructed with `model_args`, traced
    by `from_torch.from_torch`).

    `input_shape` is passed to zoo models, replaces a JSON spec's input shape, and is verified
    against a printout (whose Linear in_features fix it); a module file needs it. `num_classes`,
    if given, replaces the last Linear's output size (as `zoo.get` does), so a 1000-class
    printout can serve a 10-class task. Raises `ValueError` naming the file for a missing or
    unreadable one. A printout with no activation between two Conv/Linear layers gets a
    `FunctionalCallsWarning` (functional calls in forward() are invisible in a printout).
    """
    if isinstance(source, os.PathLike):
        arch = _load_file(Path(source), input_shape)
        if Path(source).suffix.lower() != ".json":
            warn_if_activations_missing(arch, str(source))
        return _with_num_classes(arch, num_classes)
    if not isinstance(source, str):
        raise ValueError(f"source must be a zoo name, a path or a printout, got {type(source)}")
    one_line = source.strip() if "\n" not in source.strip() else None
    if one_line is not None and _is_zoo_name(one_line):
        return zoo.get(one_line, input_shape, num_classes)
    from ac_jax.arch import from_torch

    if one_line is not None and from_torch.is_module_spec(one_line):
        if input_shape is None:
            raise ValueError(f"{one_line}: a module file needs the input shape (H, W, C)")
        module = from_torch.load_module(one_line, model_args)
        return _with_num_classes(from_torch.from_torch(module, input_shape), num_classes)
    if one_line is not None and _is_file(one_line):
        arch = _load_file(Path(one_line), input_shape)
        if not one_line.lower().endswith(".json"):
            warn_if_activations_missing(arch, one_line)
    elif "(" in source or source.lstrip().startswith("{"):
        arch = _parse_text(source, input_shape)
        if not source.lstrip().startswith("{"):
            warn_if_activations_missing(arch, "the printout")
    else:
        raise ValueError(
            f"no such file or zoo model: {source!r} (zoo models: {', '.join(sorted(zoo.ZOO))}; "
            "a printout or JSON text is also accepted)"
        )
    return _with_num_classes(arch, num_classes)
