"""`load_arch`: an `Arch` from whatever a user hands in (a zoo name, a JSON spec, a printout,
a PyTorch module file), with the hints a printout needs."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from ac_jax.arch import shapes, zoo
from ac_jax.arch.json_spec import json_object, parse_json
from ac_jax.arch.printout import PrintoutError, parse_printout
from ac_jax.arch.spec import (
    Arch,
    LayerType,
    linear,
)


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
    data = json_object(text)
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
    from ac_jax.arch import from_torch, module_file

    if one_line is not None and module_file.is_module_spec(one_line):
        if input_shape is None:
            raise ValueError(f"{one_line}: a module file needs the input shape (H, W, C)")
        module = module_file.load_module(one_line, model_args)
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
