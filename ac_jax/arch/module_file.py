"""A network given as a class in a Python file, ``path/to/net.py:ClassName``: recognised and
constructed here, traced into an Arch by `from_torch`."""

from __future__ import annotations

import re

MODULE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


def is_module_spec(text: str) -> bool:
    """Whether `text` names a class in a Python file, ``path/to/net.py:ClassName``."""
    return isinstance(text, str) and MODULE_SPEC.match(text.strip()) is not None


def load_module(spec: str, kwargs: dict | None = None):
    """Imports ``path/to/net.py`` and constructs ``ClassName(**kwargs)`` from it."""
    import importlib.util
    from pathlib import Path

    match = MODULE_SPEC.match(spec.strip())
    if match is None:
        raise ValueError(f"a module file is named path/to/net.py:ClassName, got {spec!r}")
    path, name = Path(match["path"]), match["name"]
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    import sys

    module_name = f"ac_jax_user_model_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    py_module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = py_module  # dataclasses and pickling look their module up here
    try:
        loader_spec.loader.exec_module(py_module)
    except Exception as err:  # the user's file: its error is theirs to read, not a traceback
        del sys.modules[module_name]
        raise ValueError(f"{path} failed to run: {type(err).__name__}: {err}") from err
    cls = getattr(py_module, name, None)
    if cls is None:
        raise ValueError(f"{path} defines no {name!r}")
    try:
        return cls(**(kwargs or {}))
    except TypeError as err:
        raise ValueError(f"cannot construct {name}(**{kwargs or {}}) from {path}: {err} "
                         "(give keyword arguments with --model-args JSON)") from None
