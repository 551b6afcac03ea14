"""Reading a PyTorch printout (`print(model)`, Appendix 10) into an `Arch`: every module is
parsed, checked against PyTorch's own rules and the shapes, and the no-op layers dropped."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
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

# PyTorch's BatchNorm defaults, as the paper's printouts show them.
_BN_EPS = 1e-05
_BN_MOMENTUM = 0.1
_CONTAINERS = frozenset({"Sequential", "ModuleList"})
_MAX_INFERRED_SIZE = 1024


class PrintoutError(ValueError):
    """A printout we cannot read; the message names the 1-based line and the layer text."""


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
