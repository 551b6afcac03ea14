"""Trainings on a local Ray instance (2 CPUs, one per test session): same records as in-process,
and a worker killed mid-task loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install -e '.[ray]')")

from ac_jax import distributed  # noqa: E402
from ac_jax.archset import generate  # noqa: E402
from ac_jax.archset.store import ArchsetStore  # noqa: E402
from ac_jax.config import get_config  # noqa: E402
from ac_jax.data import load  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    distributed.connect("local", num_cpus=2)
    yield ray
    ray.shutdown()


def _cfg(tmp_path):
    import dataclasses

    cfg = get_config("tiny")
    return cfg.replace(archset=dataclasses.replace(cfg.archset, compile_workers=1))


def _records(path):
    with ArchsetStore(path, readonly=True) as store:
        return sorted(store.records(), key=lambda r: r.idx)


def test_an_archset_on_ray_holds_the_in_process_records(local_ray, tmp_path):
    cfg, data = _cfg(tmp_path), load("synthetic")
    generate.generate(cfg, 6, tmp_path / "here.sqlite", dataset=data, progress=False)
    stats = generate.generate(cfg, 6, tmp_path / "ray.sqlite", dataset=data, progress=False,
                              runner=distributed.RayRunner(max_in_flight=2))
    here, there = _records(tmp_path / "here.sqlite"), _records(tmp_path / "ray.sqlite")
    assert stats.trained == 6
    assert [(r.idx, r.arch, r.status) for r in there] == [(r.idx, r.arch, r.status) for r in here]
    for a, b in zip(here, there):  # the same training (programs compiled with other flags
        if a.status == "ok":  # in the suite's process, so within float noise, not bit-equal)
            assert abs(a.mean_accuracy - b.mean_accuracy) < 0.05
    # Resumed: nothing left to train.
    again = generate.generate(cfg, 6, tmp_path / "ray.sqlite", dataset=data, progress=False,
                              runner=distributed.RayRunner())
    assert again.trained == 0 and again.skipped == 6


def _task_pids() -> list[int]:
    """Worker processes running a training task (Ray names them after the task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="ignore")
            except OSError:
                continue
            if "ray::_train_task" in cmdline:
                pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_task_is_retried_and_nothing_is_lost(local_ray, tmp_path):
    cfg, data = _cfg(tmp_path), load("synthetic")
    path = tmp_path / "killed.sqlite"
    killed = []

    def kill_one():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            pids = _task_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one)
    killer.start()
    stats = generate.generate(cfg, 8, path, dataset=data, progress=False,
                              runner=distributed.RayRunner(max_in_flight=2))
    killer.join()
    assert killed, "no training task was seen running"
    records = _records(path)
    assert [r.idx for r in records] == list(range(8))  # every plan position, once
    assert stats.trained == 8


def test_random_search_on_ray_stores_every_candidate_and_picks_by_the_same_rule(local_ray,
                                                                                 tmp_path):
    from ac_jax.arch import zoo
    from ac_jax.baselines.random_search import RandomSearchConfig, random_search
    from ac_jax.child.trainer import TrainSchedule, to_device

    schedule = TrainSchedule(epochs=1, batch_size=32, lr=0.01, eval_batch_size=128)
    data = to_device(load("synthetic"), schedule)
    sampler = get_config("tiny").archset.sampler
    store = tmp_path / "rs.sqlite"
    result = random_search(data, schedule, 600, RandomSearchConfig(num_archs=3), sampler,
                           neighbourhood_of=zoo.tinycnn(), store=store,
                           runner=distributed.RayRunner())
    records = _records(store)
    assert [r.idx for r in records] == [0, 1, 2]
    ok = [r for r in records if r.status == "ok"]
    best = max(ok, key=lambda r: (r.mean_accuracy, -r.num_params))
    assert result.arch == best.arch and result.accuracy == best.mean_accuracy
    assert "resumed" not in result.notes  # trained on the cluster, not read back


def test_without_ray_the_flag_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        distributed.require_ray()
