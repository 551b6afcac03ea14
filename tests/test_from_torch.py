"""Live PyTorch modules in: `from_torch` traces forward() (torch.fx, or a recorded pass)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is an optional dependency (pip install .[torch])")
nn = torch.nn
F = torch.nn.functional

from ac_jax.arch import zoo  # noqa: E402
from ac_jax.arch.from_torch import UnsupportedModuleError, from_torch  # noqa: E402
from ac_jax.arch.spec import (  # noqa: E402
    Arch, avgpool, batchnorm, conv, dropout, linear, maxpool, relu, sigmoid,
)
from ac_jax.arch.export import to_torch_module_source# noqa: E402


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


class MnistExample(nn.Module):
    """The classic PyTorch MNIST example (relu and max_pool2d called in forward)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


class TutorialCifar(nn.Module):
    """The PyTorch tutorial CIFAR net: one pooling module called twice, x.view(-1, n)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = self.fc2(x).relu()
        return self.fc3(x)


class Forms(nn.Module):
    """Every functional form, nested Sequentials and a view(n, -1)."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)),
                                   nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.block(x)
        x = F.avg_pool2d(x, 2)
        x = torch.sigmoid(self.conv(x))
        x = F.dropout(x, 0.3, training=self.training)
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def test_the_mnist_example_is_read_with_its_functional_calls():
    net = MnistExample()
    arch = from_torch(net, input_shape=(28, 28, 1))
    assert arch == Arch((28, 28, 1), 10, (
        conv(3, 32), relu(), conv(3, 64), relu(), maxpool(2), dropout(0.25), linear(128), relu(),
        dropout(0.5), linear(10)))
    assert arch.layers[5].dropout_rate == 0.25  # exact, not rounded to 0.2
    assert arch.num_params == numel(net) == 1_199_882


def test_the_tutorial_cifar_net_with_a_pool_called_twice():
    net = TutorialCifar()
    arch = from_torch(net, input_shape=(32, 32, 3))
    assert [layer.t for layer in arch.layers] == [1, 4, 2, 1, 4, 2, 8, 4, 8, 4, 8]
    assert arch.num_params == numel(net)


def test_every_functional_form_and_nested_sequentials():
    net = Forms()
    arch = from_torch(net, input_shape=(16, 16, 3))
    assert arch == Arch((16, 16, 3), 5, (
        conv(3, 8, 1, 1), batchnorm(), relu(), avgpool(2), conv(3, 8, 1, 1), sigmoid(),
        dropout(0.3), maxpool(2), linear(5)))
    assert arch.num_params == numel(net)


def test_functional_dropout_is_a_layer_in_eval_mode_too():
    net = Forms().eval()  # F.dropout(x, 0.3, training=self.training) with training False
    assert from_torch(net, input_shape=(16, 16, 3)) == from_torch(Forms(), input_shape=(16, 16, 3))


def test_data_dependent_control_flow_falls_back_to_a_recorded_pass():
    class Branchy(MnistExample):
        def forward(self, x):
            if x.sum() > 1e9:  # fx cannot trace a Python branch on a tensor value
                x = x * 0
            return super().forward(x)

    arch = from_torch(Branchy(), input_shape=(28, 28, 1))
    assert arch == from_torch(MnistExample(), input_shape=(28, 28, 1))


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


class Residual(Plain):
    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x) + x, 1))


class Concat(Plain):
    def forward(self, x):
        return self.fc(torch.flatten(torch.cat([self.conv(x)], 1), 1))


class TwoInputs(Plain):
    def forward(self, x, y):
        return self.fc(torch.flatten(self.conv(x), 1))


class Upsampling(Plain):
    def __init__(self):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(self.up(x)), 1))


class Depthwise(Plain):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, groups=3)


class Shared(Plain):
    def forward(self, x):
        return self.fc(torch.flatten(self.conv(F.relu(self.conv(x))), 1))


class Unused(Plain):
    def __init__(self):
        super().__init__()
        self.spare = nn.Linear(4, 4)


@pytest.mark.parametrize("module,message", [
    (Residual(), r"node 'add' .*reads 'conv', 'x'.*residual"),
    (Concat(), r"node 'cat' .*torch\..*cat is outside"),
    (TwoInputs(), r"second input \('y'\)"),
    (Upsampling(), r"module 'up'.*Upsample is outside"),
    (Depthwise(), r"module 'conv'.*groups"),
    (Shared(), r"used twice \(weight sharing\) or never"),
    (Unused(), r"used twice \(weight sharing\) or never"),
])
def test_what_is_outside_the_space_is_refused_by_name(module, message):
    with pytest.raises(UnsupportedModuleError, match=message):
        from_torch(module, input_shape=(8, 8, 3))


@pytest.mark.parametrize("arch", [zoo.conv7(), zoo.lenet5(), zoo.conv4(), zoo.tinycnn()],
                         ids=["conv7", "lenet5", "conv4", "tinycnn"])
def test_exported_modules_trace_back_to_the_same_network(arch):
    namespace: dict = {"__name__": "exported"}
    exec(compile(to_torch_module_source(arch), "<exported>", "exec"), namespace)
    module = namespace["Model"]()
    assert from_torch(module, input_shape=arch.input_shape) == arch
    assert arch.num_params == numel(module)


def test_the_recorded_pass_refuses_the_same_networks():
    from ac_jax.arch.from_torch import _function_table, _recorded_steps

    for module, message in ((Residual(), "add"), (Concat(), "cat"), (Upsampling(), "Upsample")):
        with pytest.raises(UnsupportedModuleError, match=message):
            _recorded_steps(module, (8, 8, 3), _function_table())
    steps = _recorded_steps(TutorialCifar(), (32, 32, 3), _function_table())
    assert [s.printout.split("(")[0] for s in steps] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU",
        "Linear", "ReLU", "Linear"]


def test_bad_arguments_are_clear():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        from_torch("not a module", input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        from_torch(Residual(), input_shape=(8, 8))
    with pytest.raises(UnsupportedModuleError, match="classes"):
        from_torch(MnistExample(), input_shape=(28, 28, 1), num_classes=100)


MODULE_FILE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width * 6 * 6, 4)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))
'''


def test_load_arch_reads_module_files_with_arguments(tmp_path):
    from ac_jax.arch.load import load_arch

    path = tmp_path / "net.py"
    path.write_text(MODULE_FILE)
    arch = load_arch(f"{path}:Net", input_shape=(12, 12, 1))
    assert [layer.t for layer in arch.layers] == [1, 4, 2, 8] and arch.layers[0].o == 8
    wide = load_arch(f"{path}:Net", input_shape=(12, 12, 1), model_args={"width": 16})
    assert wide.layers[0].o == 16
    with pytest.raises(ValueError, match="defines no 'Other'"):
        load_arch(f"{path}:Other", input_shape=(12, 12, 1))
    with pytest.raises(ValueError, match="--model-args"):
        load_arch(f"{path}:Net", input_shape=(12, 12, 1), model_args={"depth": 3})
    with pytest.raises(ValueError, match="input shape"):
        load_arch(f"{path}:Net")


def test_a_printout_missing_its_functional_calls_is_warned_about():
    from ac_jax.arch.load import FunctionalCallsWarning, load_arch

    from ac_jax.arch.printout import PrintoutError

    printed = str(TutorialCifar())  # no ReLU or second pool: they are called in forward()
    # Without an input shape it parses into another network (22x22x3, one pool): warned.
    with pytest.warns(FunctionalCallsWarning, match=r"net\.py:ClassName"):
        wrong = load_arch(printed)
    assert wrong.input_shape == (22, 22, 3)
    # Checked against the dataset's shape, it is refused, with the same hint.
    with pytest.raises(PrintoutError, match=r"(?s)in_features=400.*hint: no activation"):
        load_arch(printed, input_shape=(32, 32, 3))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a printout with its activations: no warning
        load_arch(str(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(4 * 30 * 30, 10))), input_shape=(32, 32, 3))


def test_the_cli_compresses_a_module_file(tiny_surrogate_dir, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    path = tmp_path / "net.py"
    path.write_text(MODULE_FILE)
    out = tmp_path / "out"
    cmd = [sys.executable, str(repo / "bin/compress.py"), "--dataset", "tiny", "--surrogate",
           str(tiny_surrogate_dir), "--model", f"{path}:Net", "--model-args", '{"width": 6}',
           "--out", str(out), "--quiet", "--steps", "4"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=repo)
    report = json.loads((out / "report.json").read_text())
    assert report["original"]["num_params"] == 6 * 9 + 6 + 6 * 36 * 4 + 4
    assert report["reconstructed_exactly"] is True
