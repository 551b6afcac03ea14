"""Random search under a parameter budget: the baseline the paper says RL methods were never
compared against (Section 1), run with the same sampler and proxy training as the archset.

K architectures are drawn from the archset's own distribution (the Appendix 9 sampler, mixed
with edits of the input network in the archset config's `neighbourhood_fraction`) with the
sampler's parameter cap lowered to the target, each is trained with the proxy schedule by
`ChildTrainer` (seeds vmapped, exactly as archset records are made), and the most accurate one
is returned.

With `store` (a path) every trained candidate is written to an archset-format SQLite file as it
finishes, keyed by its position in the deterministic candidate list: a killed search resumes
where it stopped and never retrains or duplicates a candidate (the archset store's guarantees).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ac_jax.arch.sampler import SamplerConfig, sample_batches, sample_neighbourhood, sample_region
from ac_jax.arch.spec import Arch
from ac_jax.archset.generate import over_pooling_cap
from ac_jax.archset.store import ArchsetStore, Record, arch_key, layer_rows, record_of
from ac_jax.baselines.common import BaselineResult
from ac_jax.child.trainer import ChildTrainer, DeviceData, TrainResult, TrainSchedule


@dataclasses.dataclass(frozen=True)
class RandomSearchConfig:
    num_archs: int = 20
    num_seeds: int = 1  # proxy-training seeds per architecture
    neighbourhood_fraction: float = 0.5  # share drawn around the input network (archset mix)
    sample_seed: int = 1  # the archset uses 0: draw other architectures than it holds
    max_rounds: int = 200  # sampler rounds (of SamplerConfig.batch candidates) before giving up
    # Candidates whose pooling layers read more window elements per image are recorded as
    # "rejected" untrained (see archset.generate.pooling_work); None: no cap.
    max_pooling_reads: int | None = None
    # "edits": the neighbourhood share comes from `sample_neighbourhood` (the archset's mix);
    # "region": from `sample_region`, the compression-region sampler ac_jax's region archset
    # uses, under the budget (so a study can tell the sampler's gain from the search's).
    neighbourhood_kind: str = "edits"


def sample_under_budget(num: int, input_shape: Sequence[int], num_classes: int,
                        target_params: int, sampler: SamplerConfig = SamplerConfig(),
                        neighbourhood_of: Arch | None = None, neighbourhood_fraction: float = 0.0,
                        seed: int = 1, max_rounds: int = 200,
                        neighbourhood_kind: str = "edits") -> list[tuple[Arch, str]]:
    """`num` distinct (architecture, source) pairs with at most `target_params` parameters.

    Interleaves the two sources like the archset plan. Raises `ValueError` when the sampler
    cannot find enough architectures under the budget within `max_rounds` rounds.
    """
    if num < 1:
        raise ValueError("random search needs at least one architecture")
    if not 0.0 <= neighbourhood_fraction <= 1.0:
        raise ValueError("neighbourhood_fraction must be in [0, 1]")
    cfg = dataclasses.replace(sampler, max_params=min(sampler.max_params, int(target_params)))
    is_neighbour = [int((i + 1) * neighbourhood_fraction) > int(i * neighbourhood_fraction)
                    for i in range(num)]
    if neighbourhood_of is None:
        is_neighbour = [False] * num
    neighbours: list[Arch] = []
    if any(is_neighbour):
        try:
            if neighbourhood_kind == "region":
                neighbours = sample_region(neighbourhood_of, 2 * num, seed, cfg)
            else:
                neighbours = sample_neighbourhood(neighbourhood_of, 2 * num, seed, cfg)
        except ValueError:  # the budget is below almost every edit of the input network
            warnings.warn(f"random search: too few {neighbourhood_kind} neighbours of the input "
                          f"within {target_params:,} parameters; every candidate comes from the "
                          "Appendix 9 sampler", stacklevel=2)
            is_neighbour = [False] * num
    randoms: list[Arch] = []
    # Enough to fill every slot (if the neighbourhood runs dry), plus spares for duplicates.
    need_random = num + 4
    rounds = 0
    for batch in sample_batches(input_shape, num_classes, seed, cfg):
        randoms.extend(batch.archs)
        rounds += 1
        if len(randoms) >= need_random or rounds >= max_rounds:
            break
    out: list[tuple[Arch, str]] = []
    seen: set[Arch] = set()
    rand_iter, neigh_iter = iter(randoms), iter(neighbours)
    for neighbour in is_neighbour:
        pool, source = (neigh_iter, "neighbourhood") if neighbour else (rand_iter, "appendix9")
        arch = next((a for a in pool if a not in seen), None)
        if arch is None:  # that source ran dry: take the other one
            pool, source = (rand_iter, "appendix9") if neighbour else (neigh_iter, "neighbourhood")
            arch = next((a for a in pool if a not in seen), None)
        if arch is None:
            raise ValueError(
                f"found only {len(out)} architectures with at most {target_params:,} parameters "
                f"in {rounds} sampler rounds; raise the target or the sampler's rounds"
            )
        seen.add(arch)
        out.append((arch, source))
    return out


def _search_meta(data: DeviceData, schedule: TrainSchedule, target_params: int,
                 cfg: RandomSearchConfig, sampler: SamplerConfig, seed: int,
                 neighbourhood_of: Arch | None) -> dict:
    """What a resumed search must share with the stored one for its records to be reused."""
    return {
        "kind": "random_search",
        "input_shape": list(data.input_shape),
        "num_classes": int(data.num_classes),
        "train_images": int(data.train_x.shape[0]),
        "test_images": int(data.test_x.shape[0]),
        "evaluation": data.evaluation,  # what the candidates were judged on
        "schedule": dataclasses.asdict(schedule),
        "seeds": cfg.num_seeds,
        "target_params": int(target_params),
        "sample_seed": int(seed),
        "neighbourhood_fraction": cfg.neighbourhood_fraction,
        "neighbourhood_of": None if neighbourhood_of is None else arch_key(neighbourhood_of),
        "sampler": dataclasses.asdict(sampler),
        **({"neighbourhood_kind": cfg.neighbourhood_kind}
           if cfg.neighbourhood_kind != "edits" else {}),  # older stores have no such key
    }


def _train_candidate(idx: int, arch: Arch, source: str, trainer: ChildTrainer,
                     seeds: list[int], cfg: RandomSearchConfig) -> Record:
    too_costly = over_pooling_cap(arch, cfg.max_pooling_reads)
    if too_costly:
        result = TrainResult("rejected", too_costly, (), (), 0.0, 0.0)
    else:
        result = trainer.train(arch, seeds)
    return record_of(idx, arch, source, result)


def random_search(data: DeviceData, schedule: TrainSchedule, target_params: int,
                  cfg: RandomSearchConfig = RandomSearchConfig(),
                  sampler: SamplerConfig = SamplerConfig(), *,
                  neighbourhood_of: Arch | None = None, seed: int | None = None,
                  store: str | Path | None = None, progress: bool = False,
                  runner=None) -> BaselineResult:
    """Trains `cfg.num_archs` sampled architectures (<= `target_params`); returns the best.

    `accuracy` and `search_accuracy` are the winner's proxy accuracy (mean over seeds); retrain
    it with the final schedule to compare with other methods. Failed trainings (divergence,
    errors) are recorded in `details` and never win. `store`: resumable record file (module doc).
    `runner` (`ac_jax.distributed.RayRunner`) trains the candidates on a cluster first, each
    record stored as it arrives; the pick is the same rule over the same records.
    """
    start = time.perf_counter()
    seed = cfg.sample_seed if seed is None else seed
    candidates = sample_under_budget(
        cfg.num_archs, data.input_shape, data.num_classes, target_params, sampler,
        neighbourhood_of, cfg.neighbourhood_fraction, seed, cfg.max_rounds,
        cfg.neighbourhood_kind,
    )
    db = None
    done: dict[int, Record] = {}
    if store is not None:
        Path(store).parent.mkdir(parents=True, exist_ok=True)
        db = ArchsetStore(store, _search_meta(data, schedule, target_params, cfg, sampler, seed,
                                              neighbourhood_of))
        done = {r.idx: r for r in db.records()}
        for idx, record in done.items():
            if idx < len(candidates) and record.arch != candidates[idx][0]:
                db.close()
                raise ValueError(f"{store} holds another candidate at position {idx}; "
                                 "it was made by another search (delete it or pick another path)")
    trainer = ChildTrainer(data, schedule, cfg.num_seeds)
    seeds = list(range(cfg.num_seeds))
    records = []
    best = None
    bar = tqdm(total=len(candidates), desc="random search", leave=False, disable=not progress)
    resumed = 0
    # The next candidate compiles in a background thread while the current one trains (as in
    # archset generation); `trainer.compile` caches the executable that `train` then uses.
    to_train = [i for i, (arch, _) in enumerate(candidates)
                if i not in done and not over_pooling_cap(arch, cfg.max_pooling_reads)]
    next_compile = dict(zip(to_train, to_train[1:]))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    compiling = {}

    def compile_quietly(arch):
        try:
            trainer.compile(arch)
        except Exception:  # `train` compiles again: records an out-of-memory, raises a bug
            pass

    on_cluster: set = set()
    try:
        if runner is not None and to_train:
            def stored(idx, arch, result):
                record = record_of(idx, arch, candidates[idx][1], result)
                if db is not None:
                    db.add(record)
                done[idx] = record
                bar.update(1)

            runner.run(data, schedule, cfg.num_seeds,
                       [(i, candidates[i][0], seeds) for i in to_train], on_result=stored)
            on_cluster, to_train, next_compile = set(to_train), [], {}
            bar.reset()  # the loop below counts every candidate again, in plan order
        for idx, (arch, source) in enumerate(candidates):
            record = done.get(idx)
            if record is None:
                if idx in compiling:  # never compile the same program in two threads
                    compiling.pop(idx).result()
                if idx in next_compile:
                    nxt = next_compile[idx]
                    compiling[nxt] = pool.submit(compile_quietly, candidates[nxt][0])
                record = _train_candidate(idx, arch, source, trainer, seeds, cfg)
                if db is not None:
                    db.add(record)
            else:
                resumed += idx not in on_cluster
            ok = record.status == "ok"
            acc = record.mean_accuracy if ok else float("nan")
            records.append({"num_params": arch.num_params, "accuracy": acc,
                            "status": record.status, "source": source,
                            "layers": layer_rows(arch)})
            if ok and (best is None or (acc, -arch.num_params) > (best[0], -best[1].num_params)):
                best = (acc, arch)
                bar.set_postfix(best=f"{acc:.3f}", resumed=resumed)
            bar.update(1)
    finally:
        pool.shutdown(cancel_futures=True)
        bar.close()
        if db is not None:
            db.close()
    if best is None:
        raise RuntimeError(f"all {len(candidates)} sampled architectures failed to train")
    acc, arch = best
    trained = sum(r["status"] == "ok" for r in records)
    return BaselineResult(
        method="random search",
        accuracy=acc,
        num_params=arch.num_params,
        arch=arch,
        wall_seconds=time.perf_counter() - start,
        archs_evaluated=trained,
        search_accuracy=acc,
        within_budget=arch.num_params <= target_params,
        notes=f"best of {trained} trained ({len(candidates) - trained} rejected or failed), "
              f"{schedule.epochs}-epoch proxy x {cfg.num_seeds} seed(s)"
              + (f"; {resumed} resumed from {store}" if resumed else ""),
        details={"candidates": records},
    )
