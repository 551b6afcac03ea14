"""Baselines in the same harness as the compressor (paper Table 2): random search, N2N (RL),
filter pruning and knowledge distillation, all on the same data, proxy and final schedules.

Entry point: bin/baselines.py. Each method returns a `BaselineResult` (one table row).
"""

from ac_jax.baselines.budget import BUDGETS, Budget, get_budget
from ac_jax.baselines.common import (
    BaselineResult,
    TrainedNet,
    evaluate,
    retrain,
    scale_widths,
    trained_net,
    train_network,
    width_scaled_to,
)
from ac_jax.baselines.distill import DistillConfig, distill, kd_loss
from ac_jax.baselines.n2n import N2NConfig, n2n, n2n_reward
from ac_jax.baselines.pruning import PruningConfig, prune, slice_variables
from ac_jax.baselines.random_search import RandomSearchConfig, random_search, sample_under_budget

__all__ = [
    "BUDGETS",
    "BaselineResult",
    "Budget",
    "DistillConfig",
    "N2NConfig",
    "PruningConfig",
    "RandomSearchConfig",
    "TrainedNet",
    "distill",
    "evaluate",
    "get_budget",
    "kd_loss",
    "n2n",
    "n2n_reward",
    "prune",
    "random_search",
    "retrain",
    "sample_under_budget",
    "scale_widths",
    "slice_variables",
    "trained_net",
    "train_network",
    "width_scaled_to",
]
