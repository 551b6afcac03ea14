"""Experiment configs: each module has ``get_config(variant=None) -> ac_jax.config.Config``.

Scripts (bin/, benchmarks/, tests) load a config here and pass it into the library, which
never imports this package.
"""

from __future__ import annotations

import importlib
import pathlib


def available() -> list[str]:
    here = pathlib.Path(__file__).parent
    return sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_"))


def variants(name: str) -> tuple[str, ...]:
    """The variants ``configs/<name>.py`` accepts (its ``VARIANTS``), the default first."""
    return tuple(importlib.import_module(f"configs.{name}").VARIANTS)


def get_config(name: str, variant: str | None = None):
    """Loads ``configs/<name>.py`` and calls its ``get_config(variant)``."""
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(f"configs.{module_name}")
    except ModuleNotFoundError as err:
        if err.name != f"configs.{module_name}":
            raise
        raise ValueError(f"no config {name!r}; available: {', '.join(available())}") from None
    return module.get_config(variant) if variant is not None else module.get_config()


def for_surrogate(surrogate, cfg):
    """The config whose archset `surrogate` was trained on (``task.config`` in its metadata,
    e.g. ``fashion_mnist/cpu``), else `cfg`, keeping `cfg`'s data folder. Refined records join
    that archset, so they must be trained with its proxy schedule and seeds and stored next to
    its records, whatever config variant the compression itself was started with."""
    name = (surrogate.meta or {}).get("task", {}).get("config") or ""
    dataset, _, variant = name.partition("/")
    if not dataset or not variant:
        return cfg
    try:
        own = get_config(dataset, variant)
    except (ValueError, FileNotFoundError, ModuleNotFoundError):
        return cfg
    return own.replace(data_dir=cfg.data_dir)
