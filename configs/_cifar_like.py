"""Shared settings of the 32x32 colour tasks (CIFAR-10/100, SVHN) with CONV-10."""

import dataclasses

from ac_jax.child.trainer import TrainSchedule
from ac_jax.config import ArchsetConfig, Config


VARIANTS = ("default", "paper")


def cifar_like_config(dataset: str, variant: str) -> Config:
    """Paper Section 5.2.1: Adam 1e-3, /10 at epochs 80 and 120, 150 epochs, batch 128."""
    if variant not in ("default", "paper"):
        raise ValueError(f"unknown variant {variant!r} of {dataset}; use default or paper")
    proxy = TrainSchedule(epochs=5, batch_size=128, lr=1e-3)
    archset = ArchsetConfig(
        num=1500,
        seeds=5,
        schedule=proxy,
        neighbourhood_fraction=0.5 if variant == "default" else 0.0,
        neighbourhood_of="conv10",
        path=f"archsets/{dataset}{'' if variant == 'default' else '_paper'}.sqlite",
    )
    # CONV-10 (499M MACs) must lie inside the caps for its neighbourhood to be sampled.
    archset = dataclasses.replace(
        archset,
        sampler=dataclasses.replace(archset.sampler, max_params=30_000_000, max_macs=600_000_000),
    )
    return Config(
        name=f"{dataset}/{variant}",
        dataset=dataset,
        final_schedule=TrainSchedule(
            epochs=150, batch_size=128, lr=1e-3, lr_decay_epochs=(80, 120)
        ),
        default_model="conv10",
        archset=archset,
    )
