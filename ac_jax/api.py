"""The small public API (`import ac_jax`): load a network, compress it, check the result.

    import ac_jax
    arch = ac_jax.load_arch("conv7", input_shape=(28, 28, 1), num_classes=10)
    surrogate = ac_jax.load_surrogate("surrogates/fashion_mnist")
    result = ac_jax.compress(arch, surrogate, ac_jax.Constraint(target_ratio=8))
    print(ac_jax.to_printout(result.chosen.arch))

Everything here is a thin layer over the modules that do the work (`compress.pipeline`,
`compress.refine`, `arch.load`, `arch.export`, `arch.from_torch`), so the command-line tools and this API
give the same results for the same settings.
"""

from __future__ import annotations

from typing import Sequence

from ac_jax.arch.spec import Arch
from ac_jax.compress.candidates import Constraint
from ac_jax.compress.pipeline import CompressResult
from ac_jax.compress.search import SearchConfig


def compress(networks: Arch | Sequence[Arch], surrogate, constraint: Constraint = Constraint(),
             search: SearchConfig = SearchConfig(), names: Sequence[str] | None = None,
             rounds: int = 0, refine_top: int = 6, work_dir="out/compress/refine",
             config=None, acquisition: str = "ucb", kappa: float = 1.0, runner=None,
             pool: int | None = None, batch: int | None = None,
             on_batch=None) -> CompressResult | list[CompressResult]:
    """Compresses one network (returns a `CompressResult`) or many (a list, searched together
    in one compiled program per `batch` networks, default 64) with `surrogate` (a
    `TrainedSurrogate` or its directory). Each result has `.chosen`, `.pareto`, `.original`
    and `.candidates`. `on_batch(n)` is called after each batch of n networks (a progress bar).

    `rounds` > 0 refines by training candidates (active learning by default, `acquisition`,
    `kappa`, `pool` region samples per round besides the search's candidates, default
    `refine.DEFAULT_POOL`; on a cluster with `runner`, a `distributed.RayRunner`); it needs the
    surrogate's dataset and archset schedule, read through `config` (default: the surrogate's own config).
    """
    from ac_jax.compress import pipeline
    from ac_jax.surrogate.checkpoint import TrainedSurrogate, load_surrogate

    if not isinstance(surrogate, TrainedSurrogate):
        surrogate = load_surrogate(surrogate)
    single = isinstance(networks, Arch)
    archs = [networks] if single else list(networks)
    if not archs:
        raise ValueError("no networks to compress")
    names = list(names) if names is not None else [f"net{i}" for i in range(len(archs))]
    batch = batch or pipeline.NETWORKS_PER_CALL
    results = []
    for start in range(0, len(archs), batch):
        chunk = slice(start, start + batch)
        results += pipeline.compress_batch(surrogate, archs[chunk], names[chunk], search,
                                           constraint)
        if on_batch is not None:
            on_batch(len(archs[chunk]))
    if rounds:
        from ac_jax.compress import refine

        cfg = _refine_config(surrogate, config)
        results = [refine.refine(r, surrogate, cfg, search, constraint, rounds, refine_top,
                                 work_dir, acquisition=acquisition, kappa=kappa, runner=runner,
                                 pool=refine.DEFAULT_POOL if pool is None else pool)
                   for r in results]
    return results[0] if single else results


def _refine_config(surrogate, config):
    """The config refinement trains with: that of the surrogate's archset (`configs.for_surrogate`;
    this front door, like `ac_jax.cli`, reads named configs, the library below never does)."""
    import configs

    if config is None:
        name = (surrogate.meta or {}).get("task", {}).get("config") or ""
        dataset, _, variant = name.partition("/")
        if not dataset:
            raise ValueError("the surrogate records no config; pass "
                             "config=configs.get_config(...)")
        config = configs.get_config(dataset, variant or None)
    return configs.for_surrogate(surrogate, config)


def verify(original: Arch, chosen: Arch, dataset, epochs: int | None = None, seeds: int = 2,
           schedule=None, log=print) -> dict:
    """Trains `original` and `chosen` with the same schedule, data order and seeds on the
    training set minus the validation split and evaluates both on the test set once (a
    Table-1 row: accuracies, parameters, delta, ratio). `dataset` is a `Dataset` or a name
    (loaded with `ac_jax.data.load`); the schedule is the dataset config's final schedule, or
    `epochs` of it, or `schedule` itself."""
    import dataclasses

    from ac_jax.compress import pipeline
    from ac_jax.data import load
    from configs import get_config

    if isinstance(dataset, str):
        dataset = load(dataset)
    if schedule is None:
        schedule = get_config(dataset.name).final_schedule
        if epochs is not None:
            schedule = dataclasses.replace(schedule, epochs=epochs, lr_decay_epochs=tuple(
                e for e in schedule.lr_decay_epochs if e < epochs))
    return pipeline.verify(original, chosen, dataset, schedule, list(range(seeds)), log=log)
