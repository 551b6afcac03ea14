"""The library's imports point one way: nothing under ac_jax/ but its two front doors (`cli`,
for bin/, and `api`, for users) reads named configs or the command-line plumbing; scripts load a
config and pass it in."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent.parent / "ac_jax"
FRONT_DOORS = {"cli.py", "api.py"}


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_library_never_imports_configs_cli_or_scripts():
    offenders = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.parent == LIBRARY and path.name in FRONT_DOORS:
            continue
        bad = {n for n in _imported(path)
               if n.split(".")[0] in ("configs", "bin") or n.startswith("ac_jax.cli")}
        if bad:
            offenders[str(path.relative_to(LIBRARY))] = sorted(bad)
    assert offenders == {}


def test_every_config_variant_of_every_dataset_loads():
    import configs

    for name in configs.available():
        for variant in configs.variants(name):
            cfg = configs.get_config(name, variant)
            assert cfg.name == f"{name}/{variant}", cfg.name
            assert cfg.archset.seeds >= 1 and cfg.final_schedule.epochs >= 1
            assert cfg.surrogate.arch.max_len >= cfg.archset.sampler.max_len, (name, variant)
        assert configs.get_config(name) == configs.get_config(name, configs.variants(name)[0])


def test_set_overrides_config_fields_by_path_and_checks_types():
    import pytest

    import configs
    from ac_jax.cli import override, with_flags

    cfg = configs.get_config("tiny")
    changed = override(cfg, "surrogate.steps=2000")
    assert changed.surrogate.steps == 2000 and changed.archset == cfg.archset
    changed = with_flags(cfg, {"archset.schedule.epochs": 3, "archset.seeds": None,
                               "archset.schedule.lr": 1, "data_dir": "/data"})
    assert changed.archset.schedule.epochs == 3 and changed.archset.seeds == cfg.archset.seeds
    assert changed.archset.schedule.lr == 1.0 and isinstance(changed.archset.schedule.lr, float)
    assert changed.data_dir == "/data"
    assert override(cfg, "archset.schedule.lr_decay_epochs=[1, 2]").archset.schedule \
        .lr_decay_epochs == (1, 2)
    with pytest.raises(ValueError, match="no field 'stpes'.*steps"):
        override(cfg, "surrogate.stpes=3")
    with pytest.raises(ValueError, match="holds int values"):
        override(cfg, "surrogate.steps='many'")
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        override(cfg, "surrogate.steps")
    with pytest.raises(ValueError, match="has no fields"):
        override(cfg, "surrogate.steps.more=1")
