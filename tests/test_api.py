"""The public API: `import ac_jax` names, and the README's "Python API" example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ac_jax

REPO = Path(__file__).resolve().parent.parent


def test_the_public_names_are_all_there():
    for name in ("load_arch", "from_torch", "load_surrogate", "compress", "verify",
                 "to_printout", "to_torch_module_source", "Arch", "Constraint"):
        assert name in ac_jax.__all__ and getattr(ac_jax, name) is not None
    with pytest.raises(AttributeError):
        ac_jax.no_such_name  # noqa: B018


def test_the_readme_example_runs(monkeypatch, capsys):
    pytest.importorskip("torch", reason="PyTorch is an optional dependency (pip install .[torch])")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- python-api-example -->\n```python\n(.*?)```", readme, re.S)
    assert match, "README lost its Python API example"
    monkeypatch.chdir(REPO)
    exec(compile(match.group(1), "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "->" in out and "Model(" in out


def test_compress_takes_one_or_many_networks(tiny_surrogate_dir):
    from ac_jax.arch import zoo

    surrogate = ac_jax.load_surrogate(tiny_surrogate_dir)
    net = zoo.tinycnn()
    one = ac_jax.compress(net, surrogate)
    assert isinstance(one, ac_jax.CompressResult) and one.original.arch == net
    assert [c.num_params for c in one.pareto] == sorted(c.num_params for c in one.pareto)
    many = ac_jax.compress([net, net], surrogate, names=["a", "b"])
    assert [r.name for r in many] == ["a", "b"]
    assert many[0].chosen.arch == one.chosen.arch
    with pytest.raises(ValueError, match="no networks"):
        ac_jax.compress([], surrogate)


def test_compress_stays_callable_after_its_subpackage_is_imported(tiny_surrogate_dir):
    import importlib

    importlib.import_module("ac_jax.compress.pipeline")  # what other modules do first
    import ac_jax.compress.search  # noqa: F401
    from ac_jax.arch import zoo

    assert callable(ac_jax.compress)
    result = ac_jax.compress(zoo.tinycnn(), ac_jax.load_surrogate(tiny_surrogate_dir))
    assert result.original.arch == zoo.tinycnn()
