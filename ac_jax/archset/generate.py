"""Fills an archset: sample the plan, train each architecture (seeds vmapped), store, resume.

The plan is deterministic: position i of the plan is the same architecture for any `num`
(growing an archset keeps its first records), and shard K/N takes positions i with i % N == K.
While one architecture trains, background threads compile the next ones (XLA releases the GIL),
and the persistent compilation cache makes a restarted run skip recompiling.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import platform
import socket
import time
from pathlib import Path
from typing import Callable

import jax

from ac_jax.arch import shapes, zoo
from ac_jax.arch.sampler import sample, sample_neighbourhood, sample_region
from ac_jax.arch.spec import Arch
from ac_jax.archset.store import ArchsetStore, Record, record_of
from ac_jax.child.trainer import ChildTrainer, TrainResult, to_device
from ac_jax.config import ArchsetConfig, Config
from ac_jax.data import protocol


@dataclasses.dataclass(frozen=True)
class PlannedArch:
    idx: int
    arch: Arch
    source: str  # "appendix9", "neighbourhood:<model>" or "region:<model>"


def plan(cfg: ArchsetConfig, input_shape, num_classes: int, num: int) -> list[PlannedArch]:
    """The first `num` architectures of the deterministic plan (prefix-stable in `num`)."""
    fraction = cfg.neighbourhood_fraction
    is_neighbour = [
        int((i + 1) * fraction) > int(i * fraction) for i in range(num)
    ]  # evenly interleaved, and the same prefix for any num
    num_neighbours = sum(is_neighbour)
    # Spare draws so that duplicates (a neighbour equal to a random one) can be skipped; both
    # samplers are prefix-stable, so the spares do not change the earlier picks.
    random_archs, _ = sample(num + 8, input_shape, num_classes, cfg.sample_seed, cfg.sampler)
    neighbours: list[Arch] = []
    if cfg.neighbourhood_kind not in ("edits", "region"):
        raise ValueError(f"neighbourhood_kind must be 'edits' or 'region', got "
                         f"{cfg.neighbourhood_kind!r}")
    if num_neighbours:
        seed_arch = zoo.get(cfg.neighbourhood_of, input_shape, num_classes)
        spares = num_neighbours + num_neighbours // 4 + 8
        if cfg.neighbourhood_kind == "region":
            neighbours = sample_region(seed_arch, spares, cfg.sample_seed, cfg.sampler,
                                       cfg.region_min_ratio, cfg.region_max_macs)
        else:
            neighbours = sample_neighbourhood(seed_arch, spares, cfg.sample_seed, cfg.sampler)
    kind = "region" if cfg.neighbourhood_kind == "region" else "neighbourhood"
    source = f"{kind}:{cfg.neighbourhood_of}"
    out, seen = [], set()
    random_iter, neighbour_iter = iter(random_archs), iter(neighbours)
    for i, neighbour in enumerate(is_neighbour):
        pool, src = (neighbour_iter, source) if neighbour else (random_iter, "appendix9")
        arch = next(a for a in pool if a not in seen)
        seen.add(arch)
        out.append(PlannedArch(cfg.idx_offset + i, arch, src))
    return out


def versions() -> dict:
    import flax
    import optax

    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
    }


def archset_meta(cfg: Config, input_shape, num_classes: int) -> dict:
    """What the records' numbers depend on; resuming with other values is refused."""
    a = cfg.archset
    return {
        "dataset": cfg.dataset,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "schedule": dataclasses.asdict(a.schedule),
        "seeds": a.seeds,
        "sampler": dataclasses.asdict(a.sampler),
        "sample_seed": a.sample_seed,
        "neighbourhood_fraction": a.neighbourhood_fraction,
        "neighbourhood_of": a.neighbourhood_of,
        **protocol.SEARCH_META,  # records are validation accuracies (generate's search view)
        # Only where set, so the meta of archsets made before these options is unchanged.
        **({"neighbourhood_kind": a.neighbourhood_kind, "region_min_ratio": a.region_min_ratio,
            "region_max_macs": a.region_max_macs} if a.neighbourhood_kind != "edits" else {}),
        **({"idx_offset": a.idx_offset} if a.idx_offset else {}),
    }


@dataclasses.dataclass
class RunStats:
    trained: int = 0
    failed: int = 0
    skipped: int = 0
    wall_seconds: float = 0.0
    compile_wait_seconds: float = 0.0  # compile time not hidden behind training
    compile_seconds: float = 0.0  # total compile time, including the hidden part
    train_seconds: float = 0.0

    @property
    def exposed_compile_fraction(self) -> float:
        return self.compile_wait_seconds / self.wall_seconds if self.wall_seconds else 0.0


def pooling_work(arch: Arch) -> int:
    """Window reads of the pooling layers per image (output positions x k*k x channels).

    The sampler's MAC cap counts Conv and Linear only, so it admits e.g. an 8x8 MaxPool over a
    44x44x1335 map, whose forward and backward pass took over 15 minutes on a 2-core CPU.
    """
    work = 0
    for layer, info in zip(arch.layers, shapes.analyze(arch).layers):
        if layer.t in (2, 7):  # MaxPool, AvgPool
            h, w, c = info.out_shape
            work += h * w * c * layer.k * layer.k
    return work


def over_pooling_cap(arch: Arch, cap: int | None) -> str:
    """Why `arch` is too costly to train (its `pooling_work` exceeds `cap`), or "" (None: no cap)."""
    if cap is None:
        return ""
    work = pooling_work(arch)
    if work > cap:
        return f"pooling work {work:,} window reads per image exceeds the cap {cap:,}"
    return ""


def _too_costly(arch: Arch, cfg: ArchsetConfig) -> str:
    cap = cfg.max_pooling_reads if cfg.max_pooling_reads is not None else cfg.sampler.max_macs
    return over_pooling_cap(arch, cap)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def generate(
    cfg: Config,
    num: int,
    out: str | Path,
    shard: tuple[int, int] = (0, 1),
    dataset=None,
    progress: bool = True,
    on_record: Callable[[Record], None] | None = None,
    runner=None,
) -> RunStats:
    """Trains the plan's architectures that are in `shard` and not yet in `out`.

    Records hold validation accuracy: the architectures train on the training set minus the
    validation split and are evaluated on that split (`protocol.search_view` of `dataset`).
    `runner` (an `ac_jax.distributed.RayRunner`, with Ray connected) trains on a cluster
    instead of in this process; records are written here, as they arrive.
    """
    from ac_jax.data import load

    if dataset is None:
        dataset = load(cfg.dataset, cfg.data_dir)
    dataset = protocol.search_view(dataset)
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard must be K/N with 0 <= K < N, got {k}/{n}")
    store = ArchsetStore(out, archset_meta(cfg, dataset.input_shape, dataset.num_classes))
    try:  # whatever raises (a bug in training, say) leaves the store closed and its records kept
        if runner is not None:
            return _fill_on_cluster(store, cfg, num, shard, dataset, progress, on_record, runner)
        return _fill(store, cfg, num, shard, dataset, progress, on_record)
    finally:
        store.close()


def _fill(store: ArchsetStore, cfg: Config, num: int, shard: tuple[int, int], dataset,
          progress: bool, on_record: Callable[[Record], None] | None) -> RunStats:
    """`generate`'s work on an open store: trains and adds the missing records of the shard."""
    a = cfg.archset
    k, n = shard
    done = store.done_indices()
    todo = [
        p for p in plan(a, dataset.input_shape, dataset.num_classes, num)
        if p.idx % n == k and p.idx not in done
    ]
    planned_ids = range(a.idx_offset, a.idx_offset + num)
    stats = RunStats(skipped=sum(1 for i in done if i in planned_ids and i % n == k))
    if not todo:
        return stats
    data = to_device(dataset, a.schedule, seed=a.sample_seed)
    trainer = ChildTrainer(data, a.schedule, a.seeds)
    seeds = list(range(a.seeds))
    start = time.perf_counter()
    bar = _progress_bar(len(todo), progress, initial_done=stats.skipped)

    def compile_quietly(arch):
        try:
            return trainer.compile(arch)[1]
        except Exception:  # `train` compiles again: records an out-of-memory, raises a bug
            return 0.0

    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, a.compile_workers)) as pool:
            pending: collections.deque = collections.deque()
            upcoming = iter(todo)

            def refill():
                while len(pending) < a.compile_workers + 1:
                    nxt = next(upcoming, None)
                    if nxt is None:
                        return
                    valid = shapes.is_valid(nxt.arch) and not _too_costly(nxt.arch, a)
                    future = pool.submit(compile_quietly, nxt.arch) if valid else None
                    pending.append((nxt, future))

            refill()
            while pending:
                planned, future = pending.popleft()
                waited = time.perf_counter()
                compile_seconds = future.result() if future is not None else 0.0
                stats.compile_wait_seconds += time.perf_counter() - waited
                refill()
                too_costly = shapes.is_valid(planned.arch) and _too_costly(planned.arch, a)
                if too_costly:  # recorded (so a rerun does not retry it), never trained
                    result = TrainResult("rejected", too_costly, (), (), 0.0, 0.0)
                else:
                    result = trainer.train(planned.arch, seeds)
                record = record_of(planned.idx, planned.arch, planned.source, result,
                                   compile_seconds=result.compile_seconds or compile_seconds,
                                   worker=_worker_name())
                store.add(record)
                stats.trained += 1
                stats.failed += not result.ok
                stats.compile_seconds += record.compile_seconds
                stats.train_seconds += result.train_seconds
                stats.wall_seconds = time.perf_counter() - start
                if on_record is not None:
                    on_record(record)
                if bar is not None:
                    bar.set_postfix(
                        acc=f"{record.mean_accuracy:.3f}" if record.mean_accuracy is not None else "-",
                        failed=stats.failed,
                        compile_exposed=f"{stats.exposed_compile_fraction:.0%}",
                    )
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    stats.wall_seconds = time.perf_counter() - start
    return stats


def _fill_on_cluster(store: ArchsetStore, cfg: Config, num: int, shard: tuple[int, int], dataset,
                     progress: bool, on_record, runner) -> RunStats:
    """`_fill` with the trainings as Ray tasks (`distributed.RayRunner`); the store is written
    by this process only, in completion order."""
    a = cfg.archset
    k, n = shard
    done = store.done_indices()
    todo = [p for p in plan(a, dataset.input_shape, dataset.num_classes, num)
            if p.idx % n == k and p.idx not in done]
    planned_ids = range(a.idx_offset, a.idx_offset + num)
    stats = RunStats(skipped=sum(1 for i in done if i in planned_ids and i % n == k))
    bar = _progress_bar(len(todo), progress, initial_done=stats.skipped)
    start = time.perf_counter()

    def add(planned, result):
        record = record_of(planned.idx, planned.arch, planned.source, result,
                           worker="ray" if result.status != "rejected" else _worker_name())
        store.add(record)
        stats.trained += 1
        stats.failed += not result.ok
        stats.compile_seconds += record.compile_seconds
        stats.train_seconds += result.train_seconds
        if on_record is not None:
            on_record(record)
        if bar is not None:
            rate = stats.trained / max(1e-9, time.perf_counter() - start)
            bar.set_postfix(failed=stats.failed, records_per_s=f"{rate:.2f}")
            bar.update(1)

    items = []
    for planned in todo:
        too_costly = shapes.is_valid(planned.arch) and _too_costly(planned.arch, a)
        if too_costly:  # recorded, never trained (as in-process)
            add(planned, TrainResult("rejected", too_costly, (), (), 0.0, 0.0))
        else:
            items.append((planned, planned.arch, list(range(a.seeds))))
    try:
        runner.run(dataset, a.schedule, a.seeds, items,
                   on_result=lambda planned, arch, result: add(planned, result),
                   data_seed=a.sample_seed)
    finally:
        if bar is not None:
            bar.close()
    stats.wall_seconds = time.perf_counter() - start
    return stats


def _progress_bar(total: int, enabled: bool, initial_done: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="archset", unit="arch", dynamic_ncols=True,
                postfix={"resumed": initial_done})
