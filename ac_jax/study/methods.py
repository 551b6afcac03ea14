"""One repeat of one search method under a study's constraint and budget.

Every method trains its candidates with the archset's proxy schedule and seeds through
`ChildTrainer`, on the training set minus the validation split, judged on that split (the
`search` data of `Context`), and records each training in a store as it finishes, so a killed
study resumes without retraining. Each returns a `MethodRun`: the pick, its validation accuracy,
how many architectures it trained and its anytime curve (validation accuracy of every trained
architecture in training order, None where it failed or breaks the constraint).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ac_jax.arch.spec import Arch
from ac_jax.archset.store import ArchsetArrays, ArchsetStore, load_arrays, record_of
from ac_jax.child.trainer import ChildTrainer, DeviceData
from ac_jax.config import Config
from ac_jax.study.config import refine_trainings


@dataclasses.dataclass
class Context:
    """What every method of a study shares."""

    cfg: Config
    dataset: object  # the dataset as loaded (methods take views of it)
    search: DeviceData  # proxy data: train minus validation (subset), validation (subset)
    original: Arch
    max_params: int
    model_name: str
    archset_path: Path
    work: Path  # per-study folder for stores and surrogate runs
    surrogate_steps: int | None = None
    rounds: int = 2
    refine_top: int = 6
    refine_finetune_steps: int = 400
    log: object = print
    progress: bool = True
    extra_archsets: tuple = ()  # drawn from together with `archset_path` (ac_jax's subset)
    region_share: float | None = None  # share of the subset from "region:" records
    plain_decoding: bool = False  # the paper's decoding instead of the anchored one
    acquisition: str = "ucb"  # ac_jax_rounds' refinement rule
    acquisition_pool: int = 0  # ucb: region samples per round besides the search's candidates
    runner: object = None  # an `ac_jax.distributed.RayRunner`: trainings on a cluster

    @property
    def archset_paths(self) -> list:
        return [Path(self.archset_path), *map(Path, self.extra_archsets)]


@dataclasses.dataclass
class MethodRun:
    method: str
    repeat: int
    search_seed: int
    arch: Arch | None
    val_accuracy: float | None  # the pick's proxy validation accuracy
    trained_archs: int
    seconds: float
    curve: list  # per trained architecture, in order: validation accuracy or None
    within_constraint: bool
    notes: str = ""
    details: dict = dataclasses.field(default_factory=dict)


def _within(arch: Arch, ctx: Context) -> bool:
    return arch.num_params <= ctx.max_params


def _curve(records, ctx: Context) -> list:
    """Validation accuracy per trained record (None: failed or over the constraint)."""
    return [r.mean_accuracy if r.status == "ok" and _within(r.arch, ctx) else None
            for r in records]


# --------------------------------------------------------------------------------------------
# Random search and N2N
# --------------------------------------------------------------------------------------------


def run_random_search(ctx: Context, repeat: int, seed: int, budget: int,
                      store_tag: str | None = None, region: bool = False) -> MethodRun:
    from ac_jax.baselines.random_search import RandomSearchConfig, random_search

    a = ctx.cfg.archset
    start = time.perf_counter()
    method = "random_search_region" if region else "random_search"
    store = ctx.work / (f"{method}_r{repeat}.sqlite" if store_tag is None
                        else f"amortised_{method}_{store_tag}.sqlite")
    num = budget
    for _ in range(5):  # candidates over the pooling cap are "rejected" untrained: draw more
        rs_cfg = RandomSearchConfig(num_archs=num, num_seeds=a.seeds,
                                    neighbourhood_fraction=a.neighbourhood_fraction,
                                    sample_seed=seed, max_pooling_reads=a.max_pooling_reads,
                                    neighbourhood_kind="region" if region else "edits")
        result = random_search(ctx.search, a.schedule, ctx.max_params, rs_cfg, a.sampler,
                               neighbourhood_of=ctx.original, store=store,
                               progress=ctx.progress, runner=ctx.runner)
        with ArchsetStore(store, readonly=True) as db:
            records = [r for r in sorted(db.records(), key=lambda r: r.idx)
                       if r.status != "rejected"]
        if len(records) >= budget:
            break
        num += budget - len(records)
    return MethodRun(method, repeat, seed, result.arch, result.search_accuracy,
                     len(records), time.perf_counter() - start, _curve(records, ctx),
                     result.within_budget, result.notes)


def run_n2n(ctx: Context, repeat: int, seed: int, budget: int) -> MethodRun:
    from ac_jax.archset.generate import archset_meta
    from ac_jax.baselines.n2n import N2NConfig, n2n

    a = ctx.cfg.archset
    start = time.perf_counter()
    # Episode counts are caps here: the budget ends each stage (N2NConfig.max_trained).
    n2n_cfg = N2NConfig(stage1_episodes=10_000, stage2_episodes=10_000, num_seeds=a.seeds,
                        seed=seed, max_trained=budget)
    meta = {**archset_meta(ctx.cfg, ctx.search.input_shape, ctx.search.num_classes),
            "kind": "n2n", "teacher": ctx.original.to_matrix().tolist(), "seed": seed,
            "budget": budget}
    with ArchsetStore(ctx.work / f"n2n_r{repeat}.sqlite", meta) as store:
        result = n2n(ctx.original, ctx.search, a.schedule, ctx.max_params, n2n_cfg, store=store,
                     progress=ctx.progress, runner=ctx.runner)
        records = sorted(store.records(), key=lambda r: r.idx)
    return MethodRun("n2n", repeat, seed, result.arch, result.search_accuracy,
                     result.archs_evaluated, time.perf_counter() - start, _curve(records, ctx),
                     result.within_budget, result.notes)


# --------------------------------------------------------------------------------------------
# ac_jax
# --------------------------------------------------------------------------------------------


def archset_subset(path, size: int, seed: int, max_len: int,
                   region_share: float | None = None) -> tuple[ArchsetArrays, list]:
    """`size` trained records of the archset (one file or several, ids distinct) drawn at
    random with `seed` (all of them when it holds fewer): the surrogate's training data for one
    repeat, and those records in plan order. "rejected" records were never trained and are not
    drawn; failed trainings are drawn (they were spent) but, as in `load_arrays`, only
    successful ones become training data. `region_share`: that share of `size` is drawn from the
    "region:" records (the compression-region sampler's), the rest from the others; None draws
    from all alike."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    trained = []
    for p in paths:
        with ArchsetStore(p, readonly=True) as db:
            trained += [r for r in db.records() if r.status != "rejected"]
    rng = np.random.default_rng([seed, 0xAC])
    if region_share is None:
        chosen = [trained[i] for i in rng.permutation(len(trained))[:size]]
    else:
        region = [r for r in trained if r.source.startswith("region:")]
        other = [r for r in trained if not r.source.startswith("region:")]
        # The share from the region records; a shortfall on either side is filled from the other.
        want = min(len(region), round(size * region_share))
        want = max(want, size - len(other))
        chosen = [region[i] for i in rng.permutation(len(region))[:want]]
        chosen += [other[i] for i in rng.permutation(len(other))[: size - want]]
    chosen = sorted(chosen, key=lambda r: r.idx)
    arrays = load_arrays(paths, max_len=max_len)
    keep = np.isin(arrays.idx, [r.idx for r in chosen if r.status == "ok"])
    subset = dataclasses.replace(
        arrays, matrices=arrays.matrices[keep], lengths=arrays.lengths[keep],
        accuracy=arrays.accuracy[keep], num_params=arrays.num_params[keep],
        macs=arrays.macs[keep], idx=arrays.idx[keep])
    return subset, chosen


def _surrogate(ctx: Context, arrays: ArchsetArrays, run_dir: Path, seed: int):
    from ac_jax.surrogate.checkpoint import load_surrogate
    from ac_jax.surrogate.train import train

    scfg = dataclasses.replace(ctx.cfg.surrogate, seed=seed)
    if ctx.surrogate_steps is not None:
        every = max(1, min(scfg.steps_per_call, ctx.surrogate_steps))
        scfg = dataclasses.replace(scfg, steps=ctx.surrogate_steps, steps_per_call=every,
                                   eval_every=ctx.surrogate_steps,
                                   checkpoint_every=ctx.surrogate_steps)
    task = {"dataset": ctx.cfg.dataset, "config": ctx.cfg.name,
            "input_shape": list(arrays.input_shape), "num_classes": arrays.num_classes,
            "archsets": [str(p) for p in ctx.archset_paths],
            "num_records": int(len(arrays.accuracy)),
            "subset_seed": seed}
    outcome = train(scfg, arrays, run_dir, task, progress=ctx.progress, log=ctx.log)
    return load_surrogate(run_dir), outcome


def _proxy_accuracy(ctx: Context, arch: Arch) -> tuple[str, float | None]:
    """The proxy validation accuracy of `arch`, trained once per study and stored (reported for
    the paper mode's pick, which the surrogate chose without training it; not counted)."""
    from ac_jax.archset.generate import archset_meta

    a = ctx.cfg.archset
    meta = {**archset_meta(ctx.cfg, ctx.search.input_shape, ctx.search.num_classes),
            "kind": "study_pick_proxy"}
    with ArchsetStore(ctx.work / "pick_proxy.sqlite", meta) as db:
        done = {r.arch: r for r in db.records()}
        rec = done.get(arch)
        if rec is None:
            out = ChildTrainer(ctx.search, a.schedule, a.seeds).train(arch, list(range(a.seeds)))
            rec = record_of(len(db), arch, "pick", out)
            db.add(rec)
    return rec.status, rec.mean_accuracy if rec.status == "ok" else None


def _archset_seconds(records) -> float:
    return float(sum(r.compile_seconds + r.train_seconds for r in records))


def run_ac_jax(ctx: Context, repeat: int, seed: int, budget: int, rounds: bool,
               tag: str | None = None) -> MethodRun:
    """ac_jax in the paper's mode (`rounds` False) or with refinement rounds.

    The surrogate lives in ``work/<method>_r<repeat>/surrogate``, whatever the input network:
    compressing several networks in one repeat (the amortised case, `tag` names each one's
    refinement folder) shares one archset subset and one trained surrogate.
    """
    from ac_jax.compress.candidates import Constraint
    from ac_jax.compress.pipeline import compress_batch
    from ac_jax.compress.search import SearchConfig

    method = "ac_jax_rounds" if rounds else "ac_jax"
    start = time.perf_counter()
    extra = refine_trainings(ctx.rounds, ctx.refine_top) if rounds else 0
    max_len = ctx.cfg.surrogate.arch.max_len
    arrays, records = archset_subset(ctx.archset_paths, budget - extra, seed, max_len,
                                     ctx.region_share)
    work = ctx.work / "work" / f"{method}_r{repeat}"
    surrogate, outcome = _surrogate(ctx, arrays, work / "surrogate", seed)
    if tag is not None:
        work = ctx.work / "work" / tag
    search_cfg = SearchConfig()
    if ctx.plain_decoding:  # the paper's decoding, unbounded walk (the issue-20 study's)
        search_cfg = dataclasses.replace(search_cfg, anchored=False, trust_radius=None)
    constraint = Constraint(max_params=ctx.max_params)
    (result,) = compress_batch(surrogate, [ctx.original], [ctx.model_name], search_cfg,
                               constraint)
    details = {"archset_records": len(records), "surrogate_holdout": outcome.metrics,
               "reconstructed_exactly": bool(result.reconstructed_exactly),
               "num_candidates": len(result.candidates)}
    curve = _curve(records, ctx)
    trained = len(records)
    if rounds:
        from ac_jax.compress.refine import refine

        result = refine(result, surrogate, ctx.cfg, search_cfg, constraint, ctx.rounds,
                        ctx.refine_top, work / "refine", ctx.refine_finetune_steps,
                        dataset=ctx.dataset, base_arrays=arrays, log=ctx.log,
                        acquisition=ctx.acquisition, runner=ctx.runner,
                        pool=ctx.acquisition_pool, pool_seed=seed)
        with ArchsetStore(work / "refine" / result.name / "refine.sqlite", readonly=True) as db:
            refined = sorted(db.records(), key=lambda r: r.idx)
        curve += _curve(refined, ctx)
        trained += len(refined)
        details["rounds"] = result.rounds
    chosen = result.chosen
    within = chosen.arch != ctx.original and _within(chosen.arch, ctx)
    if chosen.measured_accuracy is not None:
        val, how = chosen.measured_accuracy, "measured during refinement"
    else:
        status, val = _proxy_accuracy(ctx, chosen.arch)
        how = f"trained after the pick for the report ({status}; not counted)"
    notes = (f"surrogate on {len(records)} archset records ({int(len(arrays.accuracy))} ok)"
             + (f" + {trained - len(records)} refinement trainings" if rounds else "")
             + f"; pick's validation accuracy {how}"
             + ("" if within else "; no candidate under the constraint: the original"))
    seconds = time.perf_counter() - start + _archset_seconds(records)
    details["archset_train_seconds"] = _archset_seconds(records)
    return MethodRun(method, repeat, seed, chosen.arch, val, trained, seconds, curve, within,
                     notes, details)


def run_method(ctx: Context, method: str, repeat: int, seed: int, budget: int) -> MethodRun:
    if method in ("random_search", "random_search_region"):
        return run_random_search(ctx, repeat, seed, budget,
                                 region=method == "random_search_region")
    if method == "n2n":
        return run_n2n(ctx, repeat, seed, budget)
    if method in ("ac_jax", "ac_jax_rounds"):
        return run_ac_jax(ctx, repeat, seed, budget, rounds=method == "ac_jax_rounds")
    raise ValueError(f"unknown method {method!r}")
