"""Experiment configs: each module has ``get_config(variant=None) -> ac_jax.config.Config``."""

import pathlib


def available() -> list[str]:
    here = pathlib.Path(__file__).parent
    return sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_"))
