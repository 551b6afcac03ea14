"""An `Arch` as PyTorch shows it: the `print(model)` printout (Appendix 10) and a runnable
`nn.Module` source file."""

from __future__ import annotations

import math

from ac_jax.arch import shapes
from ac_jax.arch.shapes import InvalidArchError
from ac_jax.arch.spec import (
    Arch,
    Layer,
    LayerType,
)

# PyTorch's BatchNorm defaults, as the paper's printouts show them.
_BN_REPR_TAIL = "eps=1e-05, momentum=0.1, affine=True, track_running_stats=True"


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
"""PyTorch module exported by ac_jax.arch.export: {num_params:,} parameters."""

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
