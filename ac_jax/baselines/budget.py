"""Budget presets for running every baseline in one harness (bin/baselines.py).

A budget fixes the data (subset sizes), two schedules and each method's effort:

* `search_schedule`: the proxy that random search and N2N train candidates with (as the archset
  does, seeds vmapped by `ChildTrainer`);
* `final_schedule`: how the teacher is trained, how distillation students are trained, and how
  every method's final architecture is retrained from scratch, so that the table compares
  architectures under one training protocol.

Presets:
  tiny  the synthetic 12x12 task (`--dataset tiny`), a few architectures each: seconds per method
  cpu   Fashion-MNIST subset (6,000 train / 2,000 test images; searches on 3,000), 1-epoch proxy,
        2-epoch final schedule; sized for under 20 minutes for everything with CONV-7 on 2 CPU
        cores (an estimate from measured step times: ~0.55 s per CONV-7 training step of 64
        images on a busy 2-core machine, ~10 s of compilation per architecture)
  gpu   the config's own archset proxy and final schedule (the paper's protocol: 5-epoch proxy,
        50 epochs final) on the whole dataset, with paper-sized searches
"""

from __future__ import annotations

import dataclasses

from ac_jax.baselines.distill import DistillConfig
from ac_jax.baselines.n2n import N2NConfig
from ac_jax.baselines.pruning import PruningConfig
from ac_jax.baselines.random_search import RandomSearchConfig
from ac_jax.child.trainer import TrainSchedule
from ac_jax.config import Config

BUDGETS = ("tiny", "cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class Budget:
    name: str
    train_subset: int | None  # None: the whole split
    test_subset: int | None
    search_train_subset: int | None  # the searches' training images (a prefix of the above)
    search_schedule: TrainSchedule
    final_schedule: TrainSchedule
    final_seeds: tuple[int, ...]
    random_search: RandomSearchConfig
    n2n: N2NConfig
    pruning: PruningConfig
    distill: DistillConfig


def _plain(schedule: TrainSchedule, **changes) -> TrainSchedule:
    """`schedule` without subsets (the budget subsets the data once for all methods)."""
    return dataclasses.replace(schedule, train_subset=None, test_subset=None, **changes)


def get_budget(name: str, cfg: Config) -> Budget:
    """The preset `name` for the task of `cfg` (its schedules are the starting point)."""
    proxy = cfg.archset.schedule
    neighbourhood = cfg.archset.neighbourhood_fraction
    if name == "tiny":
        return Budget(
            name="tiny",
            train_subset=None if cfg.dataset == "synthetic" else 512,
            test_subset=None if cfg.dataset == "synthetic" else 256,
            search_train_subset=None,
            search_schedule=_plain(proxy, epochs=1),
            final_schedule=_plain(cfg.final_schedule, epochs=2, lr_decay_epochs=()),
            final_seeds=(0,),
            random_search=RandomSearchConfig(num_archs=3, neighbourhood_fraction=neighbourhood),
            n2n=N2NConfig(stage1_episodes=1, stage2_episodes=1, rollouts=2),
            pruning=PruningConfig(iterations=2, finetune_steps=4, final_epochs=1),
            distill=DistillConfig(seeds=(0,), hint_epochs=1),
        )
    if name == "cpu":
        return Budget(
            name="cpu",
            train_subset=6000,
            test_subset=2000,
            search_train_subset=3000,
            search_schedule=_plain(proxy, epochs=1),
            # Two epochs with the rate divided by 10 for the second: short, but converged
            # enough that the ranking of architectures means something.
            final_schedule=_plain(cfg.final_schedule, epochs=2, lr_decay_epochs=(1,)),
            final_seeds=(0,),
            random_search=RandomSearchConfig(num_archs=10, neighbourhood_fraction=neighbourhood),
            n2n=N2NConfig(stage1_episodes=2, stage2_episodes=2, rollouts=4),
            pruning=PruningConfig(iterations=6, finetune_steps=15, final_epochs=1),
            distill=DistillConfig(seeds=(0,), hint_epochs=0),
        )
    if name == "gpu":
        return Budget(
            name="gpu",
            train_subset=None,
            test_subset=None,
            search_train_subset=None,
            search_schedule=_plain(proxy),
            final_schedule=_plain(cfg.final_schedule),
            final_seeds=(0, 1, 2),
            random_search=RandomSearchConfig(num_archs=100, num_seeds=cfg.archset.seeds,
                                             neighbourhood_fraction=neighbourhood),
            n2n=N2NConfig(stage1_episodes=10, stage2_episodes=10, rollouts=5,
                          num_seeds=cfg.archset.seeds),
            pruning=PruningConfig(iterations=20, finetune_steps=50, final_epochs=5, repeats=5),
            distill=DistillConfig(seeds=(0, 1, 2), hint_epochs=5),
        )
    raise ValueError(f"unknown budget {name!r}; use one of {', '.join(BUDGETS)}")
