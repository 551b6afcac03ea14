"""Surrogate training configuration (paper Section 5.2.2 defaults)."""

from __future__ import annotations

import dataclasses

from ac_jax.surrogate.model import SurrogateArch


@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
    """How the encoder/decoder and regressors are trained.

    Defaults are the paper's: SGD with Nesterov momentum 0.5, lr 0.003, decayed by 1/5 every 30
    epochs, 80,000 iterations for Fashion-MNIST, joint loss ``L_d + l1 * L_a + l2 * L_p``.
    `param_target`: "log" standardises log10(params) (our default, see `normalise`), "linear" the
    raw count as in the paper.
    """

    arch: SurrogateArch = SurrogateArch()
    steps: int = 80_000
    batch_size: int = 32
    optimizer: str = "sgd_nesterov"  # or "adam", "adamw"
    lr: float = 0.003
    momentum: float = 0.5
    weight_decay: float = 0.0
    decay_every_epochs: float = 30.0  # 0: constant learning rate
    decay_factor: float = 0.2
    accuracy_weight: float = 1.0  # lambda_1
    params_weight: float = 1.0  # lambda_2
    param_target: str = "log"
    holdout_fraction: float = 0.1
    # Pairwise ranking loss on the accuracy heads (`train.ranking_loss`); 0 is the paper's.
    rank_weight: float = 0.0
    rank_margin: float = 0.02  # pairs closer than this (about the seed spread) are not ranked
    rank_temperature: float = 0.05
    # Training copies of each record with one no-op layer inserted (Appendix 10: the same
    # network, so the same label); 0: none. Held-out records are never augmented.
    noop_augment: int = 0
    seed: int = 0
    steps_per_call: int = 200  # steps run inside one compiled lax.scan between host syncs
    checkpoint_every: int = 2_000
    eval_every: int = 2_000
