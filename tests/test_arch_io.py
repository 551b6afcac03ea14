"""Tests of ac_jax.arch.export, printout, json_spec and load: Appendix 10 printouts, PyTorch modules, JSON specs, load_arch."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ac_jax.arch import sampler, shapes, zoo
from ac_jax.arch.spec import (
    Arch,
    avgpool,
    batchnorm,
    conv,
    dropout,
    linear,
    maxpool,
    relu,
    sigmoid,
)
from ac_jax.arch.printout import PrintoutError, parse_printout
from ac_jax.arch.load import load_arch
from ac_jax.arch.json_spec import parse_json, to_json
from ac_jax.arch.export import to_printout, to_torch_module_source

TORCH_REASON = "PyTorch is an optional dependency (pip install .[torch])"

# Appendix 10, input network, verbatim (the PDF extraction lost the indentation after its page
# break; it is restored here, and a test below checks that indentation does not matter anyway).
PAPER_VGG_INPUT = """\
VGG(
  (features): Sequential(
    (0): Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (1): BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (2): ReLU(inplace)
    (3): Conv2d(64, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (4): BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (5): ReLU(inplace)
    (6): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    (7): Conv2d(64, 128, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (8): BatchNorm2d(128, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (9): ReLU(inplace)
    (10): Conv2d(128, 128, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (11): BatchNorm2d(128, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (12): ReLU(inplace)
    (13): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    (14): Conv2d(128, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (15): BatchNorm2d(256, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (16): ReLU(inplace)
    (17): Conv2d(256, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (18): BatchNorm2d(256, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (19): ReLU(inplace)
    (20): Conv2d(256, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (21): BatchNorm2d(256, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (22): ReLU(inplace)
    (23): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    (24): Conv2d(256, 512, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (25): BatchNorm2d(512, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (26): ReLU(inplace)
    (27): Conv2d(512, 512, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (28): BatchNorm2d(512, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (29): ReLU(inplace)
    (30): Conv2d(512, 512, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (31): BatchNorm2d(512, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (32): ReLU(inplace)
    (33): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    (34): Conv2d(512, 512, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (35): BatchNorm2d(512, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (36): ReLU(inplace)
    (37): Conv2d(512, 512, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (38): BatchNorm2d(512, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (39): ReLU(inplace)
    (40): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  )
  (classifier): Sequential(
    (0): Linear(in_features=512, out_features=4096, bias=True)
    (1): ReLU(inplace)
    (2): Dropout (p=0.5)
    (3): Linear(in_features=4096, out_features=4096, bias=True)
    (4): ReLU(inplace)
    (5): Dropout (p=0.5)
    (6): Linear(in_features=4096, out_features=1000, bias=True)
  )
)"""

# Appendix 10, the compressor's output network, verbatim.
PAPER_OUTPUT = """\
Model(
  (features): Sequential(
    (0): ReLU()
    (1): BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (2): ReLU()
    (3): ReLU()
    (4): Dropout (p=0)
    (5): MaxPool2d(kernel_size=1, stride=1, padding=0, dilation=1, ceil_mode=False)
    (6): ReLU()
    (7): Conv2d(3, 15, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
    (8): ReLU()
    (9): ReLU()
    (10): ReLU()
    (11): ReLU()
    (12): Conv2d(15, 135, kernel_size=(2, 2), stride=(3, 3), padding=(1, 1))
    (13): ReLU()
    (14): ReLU()
    (15): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (16): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (17): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (18): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (19): ReLU()
    (20): ReLU()
    (21): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (22): ReLU()
    (23): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (24): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (25): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (26): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (27): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (28): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (29): ReLU()
    (30): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (31): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (32): ReLU()
    (33): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (34): BatchNorm2d(135, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (35): ReLU()
    (36): Dropout (p=0)
    (37): ReLU()
    (38): ReLU()
    (39): Dropout (p=0)
    (40): MaxPool2d(kernel_size=1, stride=1, padding=0, dilation=1, ceil_mode=False)
  )
  (classifier): Sequential(
    (0): Linear(in_features=4860, out_features=10, bias=True)
  )
)"""

ZOO_ARCHS = [zoo.conv7(), zoo.conv10(), zoo.vgg16(), zoo.vgg16(num_classes=1000), zoo.lenet5(),
             zoo.conv4()]
ZOO_IDS = ["conv7", "conv10", "vgg16", "vgg16-1000", "lenet5", "conv4"]
SAMPLE_TASKS = [((28, 28, 1), 10), ((32, 32, 3), 100)]


# ---- the paper's printouts -------------------------------------------------------------------


def test_paper_vgg_input_parses_to_zoo_vgg16():
    arch = parse_printout(PAPER_VGG_INPUT)
    assert arch == zoo.vgg16(num_classes=1000)
    assert arch.input_shape == (32, 32, 3)
    assert parse_printout(PAPER_VGG_INPUT, input_shape=(32, 32, 3)) == arch
    # Our export differs only in spelling ReLU(inplace) the current way.
    assert to_printout(arch, class_name="VGG") == PAPER_VGG_INPUT.replace("ReLU(inplace)", "ReLU()")


def test_paper_printout_indentation_does_not_matter():
    flat = "\n".join(line.strip() for line in PAPER_VGG_INPUT.splitlines())
    assert parse_printout(flat) == zoo.vgg16(num_classes=1000)


def test_paper_output_parses_with_the_expected_parameter_count():
    arch = parse_printout(PAPER_OUTPUT, input_shape=(32, 32, 3))
    assert arch.input_shape == (32, 32, 3) and arch.num_classes == 10
    assert PAPER_OUTPUT.count("BatchNorm2d(135") == 15
    convs = (3 * 3 * 3 * 15 + 15) + (2 * 2 * 15 * 135 + 135)
    batchnorms = 2 * 3 + 15 * 2 * 135
    classifier = 4860 * 10 + 10
    assert shapes.analyze(arch).num_params == convs + batchnorms + classifier == 61_321
    # Our export of it is the paper's printout, character for character.
    assert to_printout(arch) == PAPER_OUTPUT


def test_paper_output_inferred_input_is_the_smallest_square():
    # 29..34 all give 6x6x135 = 4860 features; inference picks the smallest.
    arch = parse_printout(PAPER_OUTPUT)
    assert arch.input_shape == (29, 29, 3)
    assert to_printout(arch) == PAPER_OUTPUT


# ---- printout -> parse -> printout -------------------------------------------------------------


def _check_round_trip(arch: Arch) -> None:
    text = to_printout(arch)
    assert parse_printout(text, input_shape=arch.input_shape) == arch
    inferred = parse_printout(text)  # input size inferred: may be smaller, prints the same
    assert to_printout(inferred) == text
    assert inferred.input_shape[2] == arch.input_shape[2]
    assert inferred.input_shape[0] <= arch.input_shape[0]


@pytest.mark.parametrize("arch", ZOO_ARCHS, ids=ZOO_IDS)
def test_zoo_printout_round_trip(arch):
    _check_round_trip(arch)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), task=st.sampled_from(SAMPLE_TASKS))
def test_sampled_printout_round_trip(seed, task):
    archs, _ = sampler.sample(15, *task, seed=seed)
    assert len(archs) == 15
    for arch in archs:
        _check_round_trip(arch)


def test_empty_features_print_and_parse():
    arch = Arch((4, 4, 2), 3, (linear(3),))
    text = to_printout(arch)
    assert "  (features): Sequential()\n" in text
    assert parse_printout(text, input_shape=(4, 4, 2)) == arch
    with pytest.raises(PrintoutError, match="cannot infer the input channels"):
        parse_printout(text)


def test_printout_formats_of_every_layer_type():
    arch = Arch(
        (8, 8, 3),
        5,
        (
            conv(3, 4, 1, 0),
            avgpool(2, 2, 1),
            sigmoid(),
            dropout(0.3),
            linear(7),
            batchnorm(),
            relu(),
            dropout(0.0),
            linear(5),
        ),
    )
    text = to_printout(arch)
    for line in [
        "(0): Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(0, 0))",
        "(1): AvgPool2d(kernel_size=2, stride=2, padding=1)",
        "(2): Sigmoid()",
        "(3): Dropout (p=0.3)",
        "(0): Linear(in_features=64, out_features=7, bias=True)",
        "(1): BatchNorm1d(7, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)",
        "(3): Dropout (p=0)",
    ]:
        assert f"    {line}\n" in text
    assert parse_printout(text, (8, 8, 3)) == arch


# ---- real PyTorch modules ------------------------------------------------------------------------


def _build_torch_module(arch: Arch, class_name: str = "Model"):
    namespace: dict = {"__name__": "exported_model"}
    exec(compile(to_torch_module_source(arch, class_name), "<exported>", "exec"), namespace)
    return namespace, namespace[class_name]()


def _check_torch_module(arch: Arch, run_forward: bool = True, infer: bool = True) -> None:
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    namespace, model = _build_torch_module(arch)
    c, h, w = namespace["INPUT_SHAPE"]
    assert (h, w, c) == arch.input_shape and namespace["NUM_CLASSES"] == arch.num_classes
    assert sum(p.numel() for p in model.parameters()) == shapes.analyze(arch).num_params
    printed = str(model)  # the current PyTorch format
    assert parse_printout(printed, input_shape=(h, w, c)) == arch
    if infer:
        assert to_printout(parse_printout(printed)) == to_printout(arch)
    if run_forward:
        with torch.no_grad():
            out = model.eval()(torch.randn(2, c, h, w))
        assert tuple(out.shape) == (2, arch.num_classes)


@pytest.mark.parametrize("arch", ZOO_ARCHS, ids=ZOO_IDS)
def test_zoo_torch_module_matches(arch):
    _check_torch_module(arch, run_forward=False)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), task=st.sampled_from(SAMPLE_TASKS))
def test_sampled_torch_module_matches(seed, task):
    pytest.importorskip("torch", reason=TORCH_REASON)
    archs, _ = sampler.sample(4, *task, seed=seed)
    for arch in archs:
        _check_torch_module(arch)


def test_torch_module_with_empty_features():
    # Nothing before the Linear tells the channel count: the input shape must be given.
    _check_torch_module(Arch((4, 4, 2), 3, (linear(3),)), infer=False)


def test_torch_module_source_runs_as_a_script(tmp_path, capsys):
    pytest.importorskip("torch", reason=TORCH_REASON)
    arch = zoo.conv7()
    path = tmp_path / "model.py"
    path.write_text(to_torch_module_source(arch, class_name="Conv7"))
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "output shape: (2, 10)" in out
    assert f"parameters: {arch.num_params}" in out


def test_torch_module_source_rejects_bad_class_names():
    with pytest.raises(ValueError, match="identifier"):
        to_torch_module_source(zoo.conv7(), class_name="my model")


# ---- hand-written current-PyTorch printouts ------------------------------------------------------

NAMED_CHILDREN = """\
Net(
  (conv1): Conv2d(1, 32, kernel_size=(3, 3), stride=(1, 1))
  (relu1): ReLU(inplace=True)
  (conv2): Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
  (bn): BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
  (pool): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (drop1): Dropout(p=0.25, inplace=False)
  (flatten): Flatten(start_dim=1, end_dim=-1)
  (fc1): Linear(in_features=10816, out_features=128, bias=True)
  (relu2): ReLU()
  (drop2): Dropout(p=0.5, inplace=False)
  (fc2): Linear(in_features=128, out_features=10, bias=True)
  (out): LogSoftmax(dim=1)
)"""

NESTED = """\
MyCNN(
  (features): Sequential(
    (0): Sequential(
      (0): Conv2d(3, 16, kernel_size=(5, 5), stride=(1, 1), padding=same)
      (1): Identity()
      (2): ModuleList(
        (0-1): 2 x ReLU()
      )
    )
    (1): MaxPool2d(2, 2)
    (2): Conv2d(16, 32, 3, 2, 1)
    (3): AvgPool2d(kernel_size=(2, 2), stride=(2, 2), padding=0)
    (4): Sigmoid()
  )
  (head): Sequential(
    (0): Flatten(start_dim=1, end_dim=-1)
    (1): Linear(in_features=512, out_features=64, bias=True)
    (2): BatchNorm1d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (3): Dropout(p=0.0, inplace=False)
    (4): Linear(64, 10)
  )
)"""


def test_named_children_printout_parses():
    # Dropout 0.25 is kept exactly (it was refused before rates other than tenths existed).
    arch = parse_printout(NAMED_CHILDREN)
    assert arch == Arch(
        (28, 28, 1),
        10,
        (
            conv(3, 32, 1, 0),
            relu(),
            conv(3, 64, 1, 1),
            batchnorm(),
            maxpool(2, 2, 0),
            dropout(0.25),
            linear(128),
            relu(),
            dropout(0.5),
            linear(10),
        ),
    )


def test_nested_containers_printout_parses():
    arch = parse_printout(NESTED, input_shape=(32, 32, 3))
    assert arch == Arch(
        (32, 32, 3),
        10,
        (
            conv(5, 16, 1, 2),
            relu(),
            relu(),
            maxpool(2, 2, 0),
            conv(3, 32, 2, 1),
            avgpool(2, 2, 0),
            sigmoid(),
            linear(64),
            batchnorm(),
            dropout(0.0),
            linear(10),
        ),
    )
    # 30..33 all give 4x4x32 = 512 features; inference picks the smallest.
    assert parse_printout(NESTED) == Arch((30, 30, 3), 10, arch.layers)


def test_sequential_printout_of_a_plain_nn_sequential():
    text = """\
Sequential(
  (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=valid)
  (1): ReLU(inplace=True)
  (2): Flatten(start_dim=1, end_dim=-1)
  (3): Linear(in_features=288, out_features=2, bias=True)
  (4): Softmax(dim=-1)
)"""
    assert parse_printout(text) == Arch((8, 8, 3), 2, (conv(3, 8), relu(), linear(2)))


# ---- errors ------------------------------------------------------------------------------------

# A valid frame (16x16x3 -> conv 8 channels, padding 1 -> 2048 features) with a layer at line 3.
FRAME_HEAD = "Net(\n  (conv): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
FRAME_TAIL = "  (fc): Linear(in_features=2048, out_features=10, bias=True)\n)"


def _framed(layer: str) -> str:
    return f"{FRAME_HEAD}  (x): {layer}\n{FRAME_TAIL}"


def test_frame_is_valid():
    expected = Arch((16, 16, 3), 10, (conv(3, 8, 1, 1), relu(), linear(10)))
    assert parse_printout(_framed("ReLU()")) == expected


UNSUPPORTED_LAYERS = [
    "AdaptiveAvgPool2d(output_size=(7, 7))",
    "AdaptiveMaxPool2d(output_size=1)",
    "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=2)",
    "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(2, 2), dilation=(2, 2))",
    "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)",
    "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), padding_mode=reflect)",
    "Conv2d(8, 8, kernel_size=(3, 5), stride=(1, 1), padding=(1, 2))",
    "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 2), padding=(1, 1))",
    "Conv2d(8, 8, kernel_size=(2, 2), stride=(1, 1), padding=same)",
    "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=False, track_running_stats=True)",
    "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, bias=False, track_running_stats=True)",
    "BatchNorm2d(8, eps=0.001, momentum=0.1, affine=True, track_running_stats=True)",
    "BatchNorm2d(8, eps=1e-05, momentum=None, affine=True, track_running_stats=False)",
    "MaxPool2d(kernel_size=1, stride=1, padding=0, dilation=2, ceil_mode=False)",
    "MaxPool2d(kernel_size=1, stride=1, padding=0, dilation=1, ceil_mode=True)",
    "MaxPool2d(kernel_size=3, stride=1, padding=2, dilation=1, ceil_mode=False)",
    "AvgPool2d(kernel_size=3, stride=1, padding=2)",
    "AvgPool2d(kernel_size=3, stride=1, padding=1, count_include_pad=False)",
    "AvgPool2d(kernel_size=1, stride=1, padding=0, ceil_mode=True)",
    "Dropout2d(p=0.5, inplace=False)",
    "Dropout(p=1.0, inplace=False)",
    "Dropout (p=1.5)",
    "Dropout (p=-0.1)",
    "LeakyReLU(negative_slope=0.01)",
    "Tanh()",
    "ELU(alpha=1.0)",
    "GELU(approximate='none')",
    "Upsample(scale_factor=2.0, mode='nearest')",
    "Softmax(dim=1)",
    "ReLU(inplace=True, foo=1)",
    "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), output_padding=(1, 1))",
]


@pytest.mark.parametrize("layer", UNSUPPORTED_LAYERS)
def test_unsupported_layers_name_the_line(layer):
    with pytest.raises(PrintoutError) as info:
        parse_printout(_framed(layer))
    assert str(info.value).startswith(f"line 3: unsupported layer '{layer}'")


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck", "InvertedResidual"])
def test_custom_blocks_are_unsupported(block):
    text = f"""\
ResNet(
  (conv1): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (layer1): Sequential(
    (0): {block}(
      (conv1): Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    )
  )
  (fc): Linear(in_features=2048, out_features=10, bias=True)
)"""
    with pytest.raises(PrintoutError, match=f"line 4: unsupported layer '{block}\\(': residual"):
        parse_printout(text)


@pytest.mark.parametrize(
    "layer, line, message",
    [
        # A spatial layer after Flatten.
        ("Flatten(start_dim=1, end_dim=-1)\n  (y): MaxPool2d(2, 2)", 4, "after Flatten/Linear"),
        ("Flatten(start_dim=0, end_dim=-1)", 3, "unsupported layer"),
        (
            "BatchNorm1d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)",
            3,
            "BatchNorm1d before the first Linear",
        ),
        (
            "Conv2d(9, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))",
            3,
            "declares 9 input channels, but its input has 8",
        ),
        (
            "BatchNorm2d(16, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)",
            3,
            "declares 16 input channels, but its input has 8",
        ),
        ("Conv2d(8, 8, kernel_size=(20, 20), stride=(1, 1))", 3, "output collapses"),
        ("ModuleDict(\n  )", 3, "residual/custom blocks are unsupported"),
        ("Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1)", 3, "unbalanced parentheses"),
        ("Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=??)", 3, "cannot read the value"),
    ],
)
def test_structural_errors_name_the_line(layer, line, message):
    with pytest.raises(PrintoutError, match=f"^line {line}: .*{message}"):
        parse_printout(_framed(layer), input_shape=(16, 16, 3))


def test_linear_in_features_mismatch_names_the_line():
    text = _framed("MaxPool2d(2, 2)")  # 8x8x8 = 512 features, but the Linear says 2048
    with pytest.raises(PrintoutError, match=r"^line 4: 'Linear.*in_features=2048, but the flat"):
        parse_printout(text, input_shape=(16, 16, 3))
    with pytest.raises(PrintoutError, match=r"^line 4: .*no square input of size 1..1024"):
        parse_printout(_framed("Conv2d(8, 7, kernel_size=(3, 3), stride=(1, 1))"))


def test_second_linear_mismatch_and_bias_false():
    text = FRAME_HEAD + (
        "  (fc): Linear(in_features=2048, out_features=10, bias=True)\n"
        "  (fc2): Linear(in_features=11, out_features=10, bias=True)\n)"
    )
    with pytest.raises(PrintoutError, match="^line 4: .*declares 11 input features, but its input"):
        parse_printout(text)
    with pytest.raises(PrintoutError, match=r"^line 3: unsupported layer .*bias=False"):
        parse_printout(FRAME_HEAD + "  (fc): Linear(2048, 10, bias=False)\n)")


def test_input_shape_is_verified():
    with pytest.raises(PrintoutError, match="^line 2: .*declares 3 input channels, but .* has 1"):
        parse_printout(_framed("ReLU()"), input_shape=(16, 16, 1))
    with pytest.raises(PrintoutError, match="^line 4: .*in_features=2048"):
        parse_printout(_framed("ReLU()"), input_shape=(15, 16, 3))
    with pytest.raises(ValueError, match="input_shape"):
        parse_printout(_framed("ReLU()"), input_shape=(16, 16))


def test_last_layer_must_be_linear_and_malformed_text_errors():
    with pytest.raises(PrintoutError, match=r"^line 3: 'ReLU\(\)': the last layer must be a Lin"):
        parse_printout(FRAME_HEAD + "  (x): ReLU()\n)")
    with pytest.raises(PrintoutError, match="no layers"):
        parse_printout("Model()")
    with pytest.raises(PrintoutError, match="^line 2: 'Net\\(' is never closed"):
        parse_printout("\nNet(\n  (fc): Linear(4, 2)\n")
    with pytest.raises(PrintoutError, match="^line 2: '\\)' closes nothing"):
        parse_printout("Linear(4, 2)\n)")
    with pytest.raises(PrintoutError, match="^line 1: cannot read 'hello world'"):
        parse_printout("hello world")


# ---- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ZOO_ARCHS, ids=ZOO_IDS)
def test_json_round_trip_zoo(arch):
    text = to_json(arch)
    assert parse_json(text) == arch
    assert parse_json(json.loads(text)) == arch


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), task=st.sampled_from(SAMPLE_TASKS))
def test_json_round_trip_sampled(seed, task):
    for arch in sampler.sample(20, *task, seed=seed)[0]:
        assert parse_json(to_json(arch)) == arch


def test_json_object_layers():
    spec = {
        "input_shape": [28, 28, 1],
        "num_classes": 10,
        "layers": [
            {"type": "conv", "kernel": 3, "out": 32, "stride": 1, "padding": 1},
            "batchnorm",
            "relu",
            {"type": "maxpool", "kernel": 2, "stride": 2},
            {"type": "conv", "kernel": 3, "out": 16},
            {"type": "avgpool", "kernel": 3, "padding": 1},
            "sigmoid",
            {"type": "dropout", "rate": 0.5},
            {"type": "linear", "out": 64},
            [4, 0, 0, 0, 0],
            {"type": "linear", "out": 10},
        ],
    }
    expected = Arch(
        (28, 28, 1),
        10,
        (
            conv(3, 32, 1, 1),
            batchnorm(),
            relu(),
            maxpool(2, 2),
            conv(3, 16),
            avgpool(3, 3, 1),
            sigmoid(),
            dropout(0.5),
            linear(64),
            relu(),
            linear(10),
        ),
    )
    assert parse_json(spec) == expected
    assert parse_json(json.dumps(spec)) == expected
    del spec["num_classes"]  # optional: the last Linear's outputs
    assert parse_json(spec) == expected


@pytest.mark.parametrize(
    "layers, message",
    [
        (["softmax", {"type": "linear", "out": 10}], "unknown layer type 'softmax'"),
        (["maxpool", {"type": "linear", "out": 10}], "needs parameters"),
        ([{"type": "conv", "kernel": 3}, {"type": "linear", "out": 10}], "missing \\['out'\\]"),
        (
            [{"type": "conv", "kernel": 3, "out": 4, "dilation": 2}, {"type": "linear", "out": 10}],
            "unknown \\['dilation'\\]",
        ),
        ([{"type": "dropout", "rate": 1.0}, {"type": "linear", "out": 10}], r"\[0, 1\)"),
        ([{"type": "conv", "kernel": 3.5, "out": 4}, {"type": "linear", "out": 10}], "integer"),
        ([{"type": "conv", "kernel": 40, "out": 4}, {"type": "linear", "out": 10}], "collapses"),
        ([[1, 3, 4, 1]], "expected \\[t, k, o, s, p\\]"),
        ([{"type": "linear", "out": 10}, "relu"], "last layer must be Linear"),
        ([], "at least one layer"),
    ],
)
def test_json_errors(layers, message):
    with pytest.raises(ValueError, match=message):
        parse_json({"input_shape": [28, 28, 1], "layers": layers})


def test_json_document_errors():
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_json("{not json")
    with pytest.raises(ValueError, match="unknown keys: \\['extra'\\]"):
        parse_json({"input_shape": [4, 4, 1], "layers": [], "extra": 1})
    with pytest.raises(ValueError, match="input_shape"):
        parse_json({"layers": [{"type": "linear", "out": 2}]})
    with pytest.raises(ValueError, match="last layer must be Linear with 3 outputs"):
        parse_json({"input_shape": [4, 4, 1], "num_classes": 3, "layers": [[8, 0, 2, 0, 0]]})


# ---- load_arch ---------------------------------------------------------------------------------


def test_load_arch_zoo_names():
    assert load_arch("conv7") == zoo.conv7()
    assert load_arch("VGG-16", num_classes=1000) == zoo.vgg16(num_classes=1000)
    assert load_arch("conv10", input_shape=(32, 32, 3), num_classes=100) == zoo.conv10(
        num_classes=100
    )


def test_load_arch_json_file(tmp_path):
    arch = zoo.conv7()
    path = tmp_path / "conv7.json"
    path.write_text(to_json(arch))
    assert load_arch(str(path)) == arch
    assert load_arch(path) == arch
    # The JSON layers do not fix the flattened size, so both can be overridden.
    assert load_arch(path, input_shape=(32, 32, 3), num_classes=100) == zoo.conv7((32, 32, 3), 100)


def test_load_arch_printout_file_and_text(tmp_path):
    path = tmp_path / "vgg.txt"
    path.write_text(PAPER_VGG_INPUT + "\n")
    assert load_arch(path) == zoo.vgg16(num_classes=1000)
    assert load_arch(str(path), input_shape=(32, 32, 3), num_classes=10) == zoo.vgg16()
    assert load_arch(PAPER_OUTPUT, input_shape=(32, 32, 3)).num_params == 61_321
    assert load_arch(to_json(zoo.conv10())) == zoo.conv10()


def test_load_arch_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file or zoo model"):
        load_arch(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="no such file"):
        load_arch(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("Net(\n  (a): AdaptiveAvgPool2d(output_size=(7, 7))\n)\n")
    with pytest.raises(PrintoutError, match=f"^{bad}: line 2: unsupported layer 'AdaptiveAvg"):
        load_arch(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        load_arch(bad_json)
    binary = tmp_path / "weights.pt"
    binary.write_bytes(b"\x80\x81\xff")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        load_arch(binary)
    with pytest.raises(ValueError, match="input_shape"):
        load_arch(PAPER_OUTPUT, input_shape=(32, 32))


def test_paths_are_resolved_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("net.txt").write_text(PAPER_OUTPUT)
    expected = parse_printout(PAPER_OUTPUT, (32, 32, 3))
    assert load_arch("net.txt", input_shape=(32, 32, 3)) == expected


@pytest.mark.parametrize("rate", [0.25, 0.3, 0.2, 0.05, 0.125, 0.95, 1 / 3])
def test_any_dropout_rate_round_trips_exactly(rate):
    arch = Arch((8, 8, 1), 3, (conv(3, 4, 1, 1), relu(), dropout(rate), maxpool(2), linear(3)))
    assert arch.layers[2].dropout_rate == rate
    printed = to_printout(arch)
    assert parse_printout(printed, input_shape=(8, 8, 1)) == arch
    assert parse_json(to_json(arch)) == arch
    # Current PyTorch's own format, e.g. "Dropout(p=0.25, inplace=False)".
    current = f"Dropout(p={rate!r}, inplace=False)"
    framed = parse_printout(_framed(current)).layers
    assert [layer.dropout_rate for layer in framed if layer.t == 6] == [rate]
    pytest.importorskip("torch", reason=TORCH_REASON)
    _, model = _build_torch_module(arch)  # the exported module holds the exact rate
    assert [m.p for m in model.modules() if type(m).__name__ == "Dropout"] == [rate]
    assert parse_printout(str(model), input_shape=(8, 8, 1)) == arch
