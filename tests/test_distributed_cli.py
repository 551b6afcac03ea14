"""`--ray` without Ray installed says how to install it (runs whether Ray is installed or not)."""

from __future__ import annotations

import argparse
import builtins

import pytest

from ac_jax import cli, distributed


@pytest.fixture
def no_ray(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)


def test_the_flag_says_how_to_install_ray(no_ray, capsys):
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        distributed.require_ray()
    parser = argparse.ArgumentParser()
    cli.add_ray_args(parser)
    with pytest.raises(SystemExit) as exit_info:
        cli.ray_runner(parser.parse_args(["--ray", "local"]))
    assert "pip install -e '.[ray]'" in str(exit_info.value)
    assert cli.ray_runner(parser.parse_args([])) is None  # no flag: no Ray needed


def test_task_environments_keep_cpu_tasks_off_the_gpus(monkeypatch):
    monkeypatch.delenv("AC_JAX_COMPILE_CACHE", raising=False)
    assert distributed.task_env(0.0) == {"JAX_PLATFORMS": "cpu"}
    gpu = distributed.task_env(0.25)
    assert gpu["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert float(gpu["XLA_PYTHON_CLIENT_MEM_FRACTION"]) <= 0.25
    monkeypatch.setenv("AC_JAX_COMPILE_CACHE", "/tmp/cache")
    assert distributed.task_env(0.0)["AC_JAX_COMPILE_CACHE"] == "/tmp/cache"
