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
    with pytest.raises(ValueError, match="cannot read"):  # an Optional int field, now None
        override(cfg, "archset.max_pooling_reads=4k")
    assert override(cfg, "archset.max_pooling_reads=4000").archset.max_pooling_reads == 4000
    with pytest.raises(SystemExit, match="error: .*holds float"):  # a script's flag, typed
        with_flags(cfg, {"archset.schedule.lr": "fast"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree) -> list:
    """Every import statement of a module, those inside functions included, except the ones
    under ``if TYPE_CHECKING:`` (annotations only: nothing runs them)."""
    out = []

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append(child)
            walk(child)

    walk(tree)
    return out


def test_module_imports_form_no_cycle():
    """Imports between ac_jax modules, deferred ones included, form a DAG: no cycle is hidden by
    moving an import into a function (the shared piece lives in a module below both)."""
    modules = {_module_name(p): p for p in LIBRARY.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if not node.module or node.level:
                    continue
                # `from pkg import module` needs that module; `from pkg import name`, pkg itself
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in modules] or [node.module]
            else:
                targets = [a.name for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
