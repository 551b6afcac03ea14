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


# Each preset's effort, one column per knob (None: the config's own value):
#   data: training / test images (None: all; "tiny" uses all of the synthetic task), the
#         searches' training images; search proxy epochs; final epochs, lr decay epochs, seeds;
#   proxy seeds per candidate (None: the archset's); random search architectures; N2N episodes
#   per stage and rollouts; pruning iterations, fine-tune steps, final epochs, repeats; KD hint
#   epochs. "cpu": two final epochs with the rate divided by 10 for the second, short but
#   converged enough that the ranking of architectures means something.
_PRESETS = {
    "tiny": ((512, 256, None), 1, (2, (), (0,)), 1, 3, (1, 2), (2, 4, 1, 1), 1),
    "cpu": ((6000, 2000, 3000), 1, (2, (1,), (0,)), 1, 10, (2, 4), (6, 15, 1, 1), 0),
    "gpu": ((None, None, None), None, (None, None, (0, 1, 2)), None, 100, (10, 5),
            (20, 50, 5, 5), 5),
}


def get_budget(name: str, cfg: Config) -> Budget:
    """The preset `name` for the task of `cfg` (its schedules are the starting point)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown budget {name!r}; use one of {', '.join(BUDGETS)}")
    ((train, test, search_train), search_epochs, (final_epochs, decay, seeds), proxy_seeds,
     archs, (episodes, rollouts), (iterations, steps, pruned_epochs, repeats), hint) = \
        _PRESETS[name]
    if name == "tiny" and cfg.dataset == "synthetic":  # the whole of the small task
        train = test = None
    proxy_seeds = proxy_seeds or cfg.archset.seeds
    final = {k: v for k, v in (("epochs", final_epochs), ("lr_decay_epochs", decay))
             if v is not None}
    return Budget(
        name=name, train_subset=train, test_subset=test, search_train_subset=search_train,
        search_schedule=_plain(cfg.archset.schedule, **(
            {} if search_epochs is None else {"epochs": search_epochs})),
        final_schedule=_plain(cfg.final_schedule, **final),
        final_seeds=seeds,
        random_search=RandomSearchConfig(num_archs=archs, num_seeds=proxy_seeds,
                                         neighbourhood_fraction=cfg.archset.neighbourhood_fraction),
        n2n=N2NConfig(stage1_episodes=episodes, stage2_episodes=episodes, rollouts=rollouts,
                      num_seeds=proxy_seeds),
        pruning=PruningConfig(iterations=iterations, finetune_steps=steps,
                              final_epochs=pruned_epochs, repeats=repeats),
        distill=DistillConfig(seeds=seeds, hint_epochs=hint),
    )
