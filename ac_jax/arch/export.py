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


# Per layer type: (how the paper's Appendix 10 printout spells it, the `torch.nn` constructor
# with PyTorch's default bias / affine). Fields: c input channels (or features), o, k, s, p,
# n flattened input features, d "2d" / "1d", r a dropout rate, bn BatchNorm's printed defaults.
_SPELLINGS = {
    LayerType.CONV: ("Conv2d({c}, {o}, kernel_size=({k}, {k}), stride=({s}, {s}), "
                     "padding=({p}, {p}))",
                     "nn.Conv2d({c}, {o}, kernel_size={k}, stride={s}, padding={p})"),
    LayerType.MAXPOOL: ("MaxPool2d(kernel_size={k}, stride={s}, padding={p}, dilation=1, "
                        "ceil_mode=False)", "nn.MaxPool2d(kernel_size={k}, stride={s}, padding={p})"),
    LayerType.AVGPOOL: ("AvgPool2d(kernel_size={k}, stride={s}, padding={p})",
                        "nn.AvgPool2d(kernel_size={k}, stride={s}, padding={p})"),
    LayerType.BATCHNORM: ("BatchNorm{d}({c}, {bn})", "nn.BatchNorm{d}({c})"),
    LayerType.RELU: ("ReLU()", "nn.ReLU()"),
    LayerType.SIGMOID: ("Sigmoid()", "nn.Sigmoid()"),
    LayerType.DROPOUT: ("Dropout (p={r})", "nn.Dropout(p={r})"),
    LayerType.LINEAR: ("Linear(in_features={n}, out_features={o}, bias=True)",
                       "nn.Linear({n}, {o})"),
}


def _spell(layer: Layer, in_shape: shapes.Shape, torch_source: bool) -> str:
    spellings = _SPELLINGS.get(layer.t)
    if spellings is None:
        raise InvalidArchError(f"cannot {'export' if torch_source else 'print'} layer "
                               f"{list(layer)}")
    rate = _rate_text(layer.dropout_rate) if layer.t == LayerType.DROPOUT else ""
    return spellings[torch_source].format(
        c=in_shape[-1], o=layer.o, k=layer.k, s=layer.s, p=layer.p, n=math.prod(in_shape),
        d="2d" if len(in_shape) == 3 else "1d", r=rate, bn=_BN_REPR_TAIL)


def _layer_repr(layer: Layer, in_shape: shapes.Shape) -> str:
    """One layer as PyTorch prints it (the paper's Appendix 10 spelling)."""
    return _spell(layer, in_shape, torch_source=False)


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
    return _spell(layer, in_shape, torch_source=True)


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
