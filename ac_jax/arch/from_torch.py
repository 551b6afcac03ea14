"""A live `torch.nn.Module` -> `Arch`, by tracing what its `forward` does.

A printout shows modules, not `forward()`: `F.relu`, `F.max_pool2d` or `x.view(n, -1)` called
there are invisible in it. Here the module is traced, with `torch.fx` symbolic tracing, or, where
fx cannot trace (data-dependent Python control flow, say), by one recorded forward pass on a
zero input of the given shape (module hooks and a `TorchFunctionMode`). Either way each step of
the forward becomes one line of a PyTorch printout in call order (a leaf module as PyTorch
prints it, a functional call as the module it equals), and the existing printout reader
(`printout.parse_printout`) checks and builds the architecture, so one set of rules decides what
is accepted. Nothing is dropped silently: an op outside the sequential CNN space (a residual
add, `torch.cat`, a second input, upsampling, grouped convolutions) raises
`UnsupportedModuleError` naming the traced node and its module path, and the accepted network's
parameter count must equal ``sum(p.numel() for p in module.parameters())`` (which catches a
parametric module used twice, weight sharing, or defined and never called).
"""

from __future__ import annotations

import dataclasses
import operator
import re
from typing import Any, Sequence

from ac_jax.arch.spec import Arch
from ac_jax.arch.printout import PrintoutError, parse_printout

# Leaf modules whose PyTorch repr the printout reader understands.
PRINTABLE_MODULES = frozenset({
    "Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm2d", "BatchNorm1d", "Linear", "ReLU",
    "Sigmoid", "Dropout", "Flatten", "Identity", "Softmax", "LogSoftmax",
})


class UnsupportedModuleError(ValueError):
    """The module does something outside the sequential CNN space; the message names where."""


@dataclasses.dataclass(frozen=True)
class _Step:
    printout: str | None  # the printout line; None: passes the tensor on unchanged
    where: str  # for messages: the traced node or module path


# ----------------------------------------------------------------------------- functional calls

def _bind(args: Sequence[Any], kwargs: dict, names: Sequence[str], defaults: dict) -> dict:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def _pair(value) -> Any:
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        return value[0]
    return value


def _max_pool(args, kwargs) -> str:
    a = _bind(args, kwargs, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                             "return_indices"),
              {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
               "return_indices": False})
    if a["return_indices"]:
        raise UnsupportedModuleError("max_pool2d with return_indices=True")
    k = _pair(a["kernel_size"])
    s = k if a["stride"] in (None, [], ()) else _pair(a["stride"])
    return (f"MaxPool2d(kernel_size={k}, stride={s}, padding={_pair(a['padding'])}, "
            f"dilation={_pair(a['dilation'])}, ceil_mode={a['ceil_mode']})")


def _avg_pool(args, kwargs) -> str:
    a = _bind(args, kwargs, ("input", "kernel_size", "stride", "padding", "ceil_mode",
                             "count_include_pad", "divisor_override"),
              {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
               "divisor_override": None})
    if a["divisor_override"] is not None:
        raise UnsupportedModuleError("avg_pool2d with divisor_override")
    k = _pair(a["kernel_size"])
    s = k if a["stride"] in (None, [], ()) else _pair(a["stride"])
    return (f"AvgPool2d(kernel_size={k}, stride={s}, padding={_pair(a['padding'])}, "
            f"ceil_mode={a['ceil_mode']}, count_include_pad={a['count_include_pad']})")


def _dropout(args, kwargs) -> str | None:
    # Recorded whatever `training` says: F.dropout(x, p, training=self.training) is a layer of
    # the network even when the module is traced in eval mode (the recorded pass always is).
    a = _bind(args, kwargs, ("input", "p", "training", "inplace"),
              {"p": 0.5, "training": True, "inplace": False})
    return f"Dropout(p={a['p']!r}, inplace=False)"


def _flatten_call(args, kwargs) -> str:
    a = _bind(args, kwargs, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
    if a["start_dim"] != 1 or a["end_dim"] != -1:
        raise UnsupportedModuleError(
            f"flatten(start_dim={a['start_dim']}, end_dim={a['end_dim']}): only flattening all "
            "but the batch dimension (start_dim=1, end_dim=-1) is a sequential CNN's")
    return "Flatten(start_dim=1, end_dim=-1)"


def _softmax(args, kwargs) -> str:
    a = _bind(args, kwargs, ("input", "dim"), {"dim": None})
    return f"Softmax(dim={a['dim']})"


def _reshape(args) -> str:
    """`x.view(n, -1)`, `x.view(-1, features)`, `x.reshape(...)`: flattening to [batch, features]."""
    sizes = list(args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    if len(sizes) != 2:
        raise UnsupportedModuleError(
            f"view/reshape to {len(sizes)} dimensions: only flattening to [batch, features]")
    return "Flatten(start_dim=1, end_dim=-1)"


def _function_table():
    import torch
    import torch.nn.functional as F

    table = {
        F.relu: lambda a, k: "ReLU()", torch.relu: lambda a, k: "ReLU()",
        torch.relu_: lambda a, k: "ReLU()", F.relu_: lambda a, k: "ReLU()",
        torch.sigmoid: lambda a, k: "Sigmoid()", F.sigmoid: lambda a, k: "Sigmoid()",
        F.max_pool2d: _max_pool, torch.max_pool2d: _max_pool,
        F.avg_pool2d: _avg_pool,
        F.dropout: _dropout, torch.dropout: lambda a, k: _dropout(
            a, {"p": a[1], "training": a[2]} if len(a) >= 3 else k),
        torch.flatten: _flatten_call,
        F.softmax: _softmax, F.log_softmax: _softmax,
        torch.softmax: _softmax, torch.log_softmax: _softmax,
    }
    return table


_METHODS = {
    "relu": lambda a, k: "ReLU()", "relu_": lambda a, k: "ReLU()",
    "sigmoid": lambda a, k: "Sigmoid()", "sigmoid_": lambda a, k: "Sigmoid()",
    "flatten": _flatten_call, "softmax": _softmax, "log_softmax": _softmax,
    "view": lambda a, k: _reshape(a), "reshape": lambda a, k: _reshape(a),
    "contiguous": lambda a, k: None,
}
# Calls that read the running tensor's shape (for `view`) without producing a layer.
_SHAPE_METHODS = frozenset({"size", "dim"})


def _name(target) -> str:
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{getattr(target, '__name__', repr(target))}".lstrip(".")


# ----------------------------------------------------------------------------- torch.fx


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
    return paths[-1] if paths else ""


def _fx_steps(gm, functions) -> list[_Step]:
    """The steps of an fx-traced module `gm`, in graph order."""
    modules = dict(gm.named_modules())
    steps: list[_Step] = []
    current = None  # the node holding the running tensor
    shape_nodes = set()
    for node in gm.graph.nodes:
        where = f"node '{node.name}'"
        if node.op == "placeholder":
            if current is not None:
                raise UnsupportedModuleError(
                    f"{where}: a second input ('{node.target}'); a sequential CNN has one")
            current = node
            continue
        if node.op == "output":
            (result,) = node.args
            if result is not current:
                raise UnsupportedModuleError(f"{where}: the output is not the last layer's")
            break
        if node.op == "get_attr":
            raise UnsupportedModuleError(
                f"{where}: forward reads the tensor '{node.target}' directly (parameters are "
                "used through modules in a sequential CNN)")
        is_shape = (node.op == "call_method" and node.target in _SHAPE_METHODS) or (
            node.op == "call_function" and node.target is operator.getitem
            and node.args and node.args[0] in shape_nodes)
        if is_shape:
            shape_nodes.add(node)
            continue
        inputs = [n for n in node.all_input_nodes if n not in shape_nodes]
        if inputs != [current]:
            names = ", ".join(f"'{n.name}'" for n in inputs) or "none"
            raise UnsupportedModuleError(
                f"{where} ({_describe(node)}) reads {names}, not only the previous layer's "
                f"output '{current.name}': branches, residual adds and concatenations are "
                "outside the sequential CNN space")
        steps.append(_step_of(node, modules, functions))
        current = node
    return steps


def _describe(node) -> str:
    if node.op == "call_module":
        return f"module '{node.target}'"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return f"call {_name(node.target)}"


def _step_of(node, modules, functions) -> _Step:
    path = _module_path(node)
    where = f"node '{node.name}' ({_describe(node)}" + (f", in '{path}'" if path and
                                                        node.op != "call_module" else "") + ")"
    args, kwargs = node.args, dict(node.kwargs)
    try:
        if node.op == "call_module":
            mod = modules[node.target]
            kind = type(mod).__name__
            if kind not in PRINTABLE_MODULES:
                raise UnsupportedModuleError(f"{kind} is outside the sequential CNN space")
            return _Step(_single_line(repr(mod)), where)
        if node.op in ("call_function", "call_method"):
            table, what = ((functions, _name(node.target)) if node.op == "call_function"
                           else (_METHODS, f"tensor method .{node.target}()"))
            rule = table.get(node.target)
            if rule is None:
                raise UnsupportedModuleError(f"{what} is outside the sequential CNN space")
            return _Step(rule(args, kwargs), where)
    except UnsupportedModuleError as err:
        raise UnsupportedModuleError(f"{where}: {err}") from None
    raise UnsupportedModuleError(f"{where}: unexpected fx op {node.op}")


def _single_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- recorded forward


def _recorded_steps(module, input_shape, functions) -> list[_Step]:
    """One forward pass on zeros, recording leaf modules (hooks) and functional calls made
    outside them (a `TorchFunctionMode`), in call order."""
    import torch
    from torch.overrides import TorchFunctionMode
    names = {m: n for n, m in module.named_modules()}
    steps: list[_Step] = []
    depth = [0]  # > 0 while a leaf module runs: its inner calls are the module's own

    def is_leaf(m):
        return type(m).__name__ in PRINTABLE_MODULES or not list(m.children())

    def pre(m, inputs):
        depth[0] += 1

    def post(m, inputs, output):
        depth[0] -= 1
        kind = type(m).__name__
        where = f"module '{names.get(m, '?')}' ({kind})"
        if kind not in PRINTABLE_MODULES:
            raise UnsupportedModuleError(f"{where}: {kind} is outside the sequential CNN space")
        if not any(a is current[0] for a in inputs):
            raise UnsupportedModuleError(
                f"{where} does not read the previous layer's output: branches are outside the "
                "sequential CNN space")
        steps.append(_Step(_single_line(repr(m)), where))
        current[0] = output

    current = [None]  # the running tensor: what the next layer must read

    def reads_current(args, kwargs) -> bool:
        flat = list(args) + list(kwargs.values())
        flat += [v for a in flat if isinstance(a, (list, tuple)) for v in a]
        return any(a is current[0] for a in flat)

    def is_activation(out) -> bool:  # a batch of feature maps or vectors, not a reduction
        return isinstance(out, torch.Tensor) and out.ndim >= 2

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            # Calls that do not read the running tensor (constants) or give no activation
            # (x.size(), x.sum() for a Python branch) are not layers.
            if depth[0] == 0 and reads_current(args, kwargs) and is_activation(out):
                name = getattr(func, "__name__", "")
                rule = functions.get(func) or _METHODS.get(name)
                where = f"call {_name(func)}"
                if rule is None:
                    raise UnsupportedModuleError(f"{where}: outside the sequential CNN space")
                steps.append(_Step(rule(args, kwargs), where))
                current[0] = out
            return out

    handles = []
    for m in module.modules():
        if m is not module and is_leaf(m):
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    h, w, c = input_shape
    was_training = module.training
    module.eval()  # a recorded pass must not update BatchNorm statistics
    current[0] = torch.zeros(1, c, h, w)
    try:
        with torch.no_grad(), Recorder():
            module(current[0])
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return steps


# ----------------------------------------------------------------------------- entry point


def from_torch(module, input_shape: Sequence[int], num_classes: int | None = None) -> Arch:
    """The `Arch` of a live `torch.nn.Module` for input ``(H, W, C)``.

    Traced with `torch.fx` (so functional calls in `forward` count, in order); where fx cannot
    trace, one recorded forward pass on zeros instead. Raises `UnsupportedModuleError` (a
    `ValueError`) naming the node and module path of anything outside the sequential CNN space,
    and when the accepted network's parameter count differs from the module's. `num_classes`,
    when given, must equal the last Linear's output size.
    """
    try:
        import torch
    except ImportError as err:  # the optional extra
        raise ImportError("from_torch needs PyTorch: pip install -e '.[torch]'") from err
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch takes a torch.nn.Module, got {type(module).__name__}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape is (H, W, C), got {input_shape}")
    import torch.fx

    functions = _function_table()
    try:
        graph_module = torch.fx.symbolic_trace(module)
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError,
            AttributeError) as fx_error:  # fx cannot trace this forward: record one pass
        try:
            steps = _recorded_steps(module, shape, functions)
        except (RuntimeError, TypeError, ValueError) as err:
            if isinstance(err, UnsupportedModuleError):
                raise
            raise UnsupportedModuleError(
                f"cannot trace {type(module).__name__}: torch.fx failed ({fx_error}) and a "
                f"forward pass on a {shape} input failed ({err})") from None
        how = "a recorded forward pass"
    else:
        steps = _fx_steps(graph_module, functions)
        how = "torch.fx"
    lines = [(s.printout, s.where) for s in steps if s.printout is not None]
    if not lines:
        raise UnsupportedModuleError(f"{type(module).__name__}: forward does no layer")
    text = "Traced(\n" + "".join(f"  ({i}): {p}\n" for i, (p, _) in enumerate(lines)) + ")"
    try:
        arch = parse_printout(text, input_shape=shape)
    except PrintoutError as err:
        raise UnsupportedModuleError(_located(str(err), lines)) from None
    if num_classes is not None and arch.num_classes != num_classes:
        raise UnsupportedModuleError(
            f"{type(module).__name__} has {arch.num_classes} outputs, the task {num_classes} classes")
    expected = sum(p.numel() for p in module.parameters())
    if arch.num_params != expected:
        raise UnsupportedModuleError(
            f"{type(module).__name__}: the traced network ({how}) has {arch.num_params:,} "
            f"parameters, the module {expected:,}: a parametric module is used twice (weight "
            "sharing) or never, or a layer's bias/affine setting is outside the space")
    return arch


def _located(message: str, lines) -> str:
    """A printout reader's "line N: ..." message rewritten to name the traced step."""
    match = re.match(r"line (\d+): (.*)", message, re.S)
    if match:
        index = int(match.group(1)) - 2  # line 1 is "Traced("
        if 0 <= index < len(lines):
            return f"{lines[index][1]}: {match.group(2)}"
    return message
