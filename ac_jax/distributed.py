"""Batches of child trainings on a Ray cluster (the optional extra: ``pip install -e '.[ray]'``).

Each architecture's training (all its seeds, one compiled program, as in-process) is one Ray
task with declared resources. The driver keeps a bounded number of tasks in flight, hands each
result to the caller as it arrives (completion order), and the caller writes it into its SQLite
store, so the store stays the one record of what is done: a killed driver is restarted and skips
what is stored; a killed worker's task is retried by Ray on another worker (`max_retries`); a
training failure (NaN, out of memory) comes back as a `TrainResult` with that status and is
recorded as in-process, never retried; an exception in the task (a bug) stops the run, keeping
what was stored.

The data go into Ray's object store once per batch (`ray.put`), so workers on other machines need
no dataset files; each worker process keeps one `ChildTrainer` per (data, schedule, seeds) and
compiles through JAX's persistent compilation cache.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
import uuid
from typing import Callable, Iterable

INSTALL_HINT = "Ray is an optional extra: pip install -e '.[ray]'"


def require_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(f"--ray needs Ray. {INSTALL_HINT}") from None
    return ray


def task_env(gpus_per_task: float) -> dict:
    """The environment of a training task. A task that declares no GPU is kept off the GPUs
    (Ray hides none from it, and JAX would take GPU 0 unaccounted); a GPU task does not
    preallocate and takes about its share of the device's memory, so tasks sharing a GPU fit.
    The compilation cache is the worker's own default unless the driver sets one."""
    env = {}
    if gpus_per_task:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(0.95, 0.9 * gpus_per_task):.3f}"
    else:
        env["JAX_PLATFORMS"] = "cpu"
    if os.environ.get("AC_JAX_COMPILE_CACHE"):
        env["AC_JAX_COMPILE_CACHE"] = os.environ["AC_JAX_COMPILE_CACHE"]
    return env


@dataclasses.dataclass
class RayStats:
    submitted: int = 0
    finished: int = 0
    failed: int = 0  # training failures, recorded (including tasks whose worker kept dying)
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.finished / self.seconds if self.seconds else 0.0


def connect(address: str, num_cpus: int | None = None):
    """Joins a running cluster (`address`, e.g. "auto" or "10.0.0.1:6379") or, for "local",
    starts a Ray instance on this machine sized to it (`num_cpus`, default what Ray detects,
    which respects cgroup quotas). Worker nodes need ac_jax (the same commit) and JAX installed:
    tasks refer to `ac_jax.distributed._train_task` by name. The driver itself does not
    preallocate GPU memory (it fine-tunes surrogates while the workers train)."""
    ray = require_ray()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if ray.is_initialized():
        return ray
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return ray


# ----------------------------------------------------------------------------- worker side

_ARRAY_FIELDS = ("train_x", "train_y", "test_x", "test_y", "test_mask")


def _portable(data):
    """What goes into the object store: a `Dataset` as it is, a `DeviceData` as host arrays."""
    import numpy as np

    from ac_jax.child.trainer import DeviceData

    if isinstance(data, DeviceData):
        return dataclasses.replace(data, **{f: np.asarray(getattr(data, f)) for f in _ARRAY_FIELDS})
    return data


def _on_device(data, schedule, seed: int):
    import jax.numpy as jnp

    from ac_jax.child.trainer import DeviceData, to_device

    if isinstance(data, DeviceData):  # already subset and padded by the driver
        return dataclasses.replace(data, **{f: jnp.asarray(getattr(data, f)) for f in _ARRAY_FIELDS})
    return to_device(data, schedule, seed=seed)

_TRAINERS: dict = {}  # per worker process: batch token -> ChildTrainer


def _train_task(token: str, data_box: list, data_seed: int, schedule, num_seeds: int, spec: str,
                seeds: list):
    """Runs in a Ray worker: trains the JSON-spec architecture `spec`; returns a TrainResult.

    The data's object ref comes boxed in a list, so Ray does not fetch and deserialise the
    data for every task; a worker fetches it once per batch (`token`) and keeps its trainer,
    whose compiled programs then serve that worker's later tasks."""
    import ray

    from ac_jax.arch.json_spec import parse_json
    from ac_jax.child.trainer import ChildTrainer
    from ac_jax.runtime import enable_compilation_cache

    trainer = _TRAINERS.get(token)
    if trainer is None:
        enable_compilation_cache()
        _TRAINERS.clear()  # one batch's data at a time per worker
        data = ray.get(data_box[0])
        trainer = _TRAINERS[token] = ChildTrainer(_on_device(data, schedule, data_seed),
                                                  schedule, num_seeds)
    return trainer.train(parse_json(spec), list(seeds))


# ----------------------------------------------------------------------------- driver side


@dataclasses.dataclass
class RayRunner:
    """Where and how trainings run: resources per task and the in-flight bound."""

    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    max_in_flight: int | None = None  # default: twice the cluster's task slots
    max_retries: int = 3  # per task, when its worker dies (a training failure is not retried)

    def slots(self, ray) -> int:
        resources = ray.cluster_resources()
        if self.gpus_per_task:
            return max(1, int(resources.get("GPU", 0) / self.gpus_per_task))
        return max(1, int(resources.get("CPU", 1) / self.cpus_per_task))

    def run(self, dataset, schedule, num_seeds: int, items: Iterable,
            on_result: Callable, progress: Callable | None = None,
            data_seed: int = 0) -> RayStats:
        """Trains every ``(key, arch, seeds)`` of `items` on the cluster; calls
        ``on_result(key, arch, TrainResult)`` in the driver as each finishes (completion order).
        `dataset` is the view trained on (e.g. `protocol.search_view`) or data already on the
        device (`DeviceData`, e.g. a random search's), copied to the object store once;
        `data_seed` picks the schedule's subsets, as `to_device`'s seed does. A task whose
        worker dies is retried `max_retries` times, then recorded as "crashed" (host out of
        memory: "oom"), so one architecture cannot stop every restart of a run."""
        ray = require_ray()
        from ac_jax.arch.json_spec import to_json

        items = list(items)
        stats, start = RayStats(), time.perf_counter()
        if not items:
            return stats
        from ray.exceptions import OutOfMemoryError, WorkerCrashedError

        from ac_jax.child.trainer import TrainResult

        # max_calls=0: a worker keeps serving tasks (Ray's default for GPU tasks is one task per
        # process, which would rebuild the trainer and recompile every time).
        remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task or None,
                            max_retries=self.max_retries, retry_exceptions=False, max_calls=0,
                            runtime_env={"env_vars": task_env(self.gpus_per_task)})(_train_task)
        data_box, token = [ray.put(_portable(dataset))], uuid.uuid4().hex
        limit = self.max_in_flight or 2 * self.slots(ray)
        pending: dict = {}
        queue = collections.deque(items)
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    key, arch, seeds = queue.popleft()
                    ref = remote.remote(token, data_box, data_seed, schedule, num_seeds,
                                        to_json(arch), list(seeds))
                    pending[ref] = (key, arch)
                    stats.submitted += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    key, arch = pending.pop(ref)
                    try:
                        result = ray.get(ref)  # a bug in the task raises here: the run stops
                    except OutOfMemoryError as err:  # the host ran out: a training failure
                        result = TrainResult("oom", f"host memory: {err}"[:500], (), (), 0.0, 0.0)
                    except WorkerCrashedError as err:  # died on every retry (a segfault...)
                        result = TrainResult("crashed", f"worker died {self.max_retries + 1} "
                                             f"times: {err}"[:500], (), (), 0.0, 0.0)
                    stats.finished += 1
                    stats.failed += not result.ok
                    stats.seconds = time.perf_counter() - start
                    on_result(key, arch, result)
                    if progress is not None:
                        progress(stats)
        finally:  # an error (or Ctrl-C) leaves nothing training on the cluster
            for ref in pending:
                ray.cancel(ref, force=True)
        stats.seconds = time.perf_counter() - start
        return stats
