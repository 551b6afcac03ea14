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

# The kill test runs in the default suite (one local instance, a 4-network plan); the other
# two take minutes on the 2-core CPU (workers start, import JAX and compile every
# architecture), so they are `slow`. The install hint and the task environments are tested
# without Ray in tests/test_distributed_cli.py.

from ac_jax import distributed  # noqa: E402
from ac_jax.archset import generate  # noqa: E402
from ac_jax.archset.store import ArchsetStore  # noqa: E402
from configs import get_config  # noqa: E402
from ac_jax.data import load  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    # Workers inherit this process's environment: they compile as the suite does in-process
    # (most XLA optimizations off, tests/conftest.py), which is what keeps these tests short.
    saved = os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS")
    if os.environ.get("AC_JAX_TEST_OPTIMIZED") != "1":
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
    distributed.connect("local", num_cpus=2)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
    else:
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = saved


def _cfg(tmp_path):
    import dataclasses

    cfg = get_config("tiny")
    return cfg.replace(archset=dataclasses.replace(cfg.archset, compile_workers=1))


def _records(path):
    with ArchsetStore(path, readonly=True) as store:
        return sorted(store.records(), key=lambda r: r.idx)


@pytest.mark.slow
def test_an_archset_on_ray_holds_the_in_process_records(local_ray, tmp_path):
    cfg, data = _cfg(tmp_path), load("synthetic")
    generate.generate(cfg, 4, tmp_path / "here.sqlite", dataset=data, progress=False)
    stats = generate.generate(cfg, 4, tmp_path / "ray.sqlite", dataset=data, progress=False,
                              runner=distributed.RayRunner(max_in_flight=2))
    here, there = _records(tmp_path / "here.sqlite"), _records(tmp_path / "ray.sqlite")
    assert stats.trained == 4
    assert [(r.idx, r.arch, r.status) for r in there] == [(r.idx, r.arch, r.status) for r in here]
    for a, b in zip(here, there):  # the same training (programs compiled with other flags
        if a.status == "ok":  # in the suite's process, so within float noise, not bit-equal)
            assert abs(a.mean_accuracy - b.mean_accuracy) < 0.05
    # Resumed: nothing left to train.
    again = generate.generate(cfg, 4, tmp_path / "ray.sqlite", dataset=data, progress=False,
                              runner=distributed.RayRunner())
    assert again.trained == 0 and again.skipped == 4


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the (command) is the ppid


def _task_pids() -> list[int]:
    """This session's worker processes running a training task (Ray titles them after the
    task): descendants of this process only, never another Ray instance's."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if "ray::_train_task" not in cmdline:
            continue
        pid = ancestor = int(entry.name)
        while ancestor > 1 and ancestor != me:
            ancestor = _parent(ancestor)
        if ancestor == me:
            pids.append(pid)
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
    stats = generate.generate(cfg, 4, path, dataset=data, progress=False,
                              runner=distributed.RayRunner(max_in_flight=2))
    killer.join()
    assert killed, "no training task was seen running"
    records = _records(path)
    assert [r.idx for r in records] == list(range(4))  # every plan position, once
    assert stats.trained == 4


@pytest.mark.slow
def test_random_search_on_ray_stores_every_candidate_and_picks_by_the_same_rule(local_ray,
                                                                                 tmp_path):
    from ac_jax.arch import zoo
    from ac_jax.baselines.random_search import RandomSearchConfig, random_search
    from ac_jax.child.trainer import TrainSchedule, to_device

    schedule = TrainSchedule(epochs=1, batch_size=32, lr=0.01, eval_batch_size=128)
    data = to_device(load("synthetic"), schedule)
    sampler = get_config("tiny").archset.sampler
    store = tmp_path / "rs.sqlite"
    result = random_search(data, schedule, 600, RandomSearchConfig(num_archs=2), sampler,
                           neighbourhood_of=zoo.tinycnn(), store=store,
                           runner=distributed.RayRunner())
    records = _records(store)
    assert [r.idx for r in records] == [0, 1]
    ok = [r for r in records if r.status == "ok"]
    best = max(ok, key=lambda r: (r.mean_accuracy, -r.num_params))
    assert result.arch == best.arch and result.accuracy == best.mean_accuracy
    assert "resumed" not in result.notes  # trained on the cluster, not read back
