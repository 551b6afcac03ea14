"""A seconds-long end-to-end config on the synthetic 12x12 dataset, for tests and smoke runs."""

from ac_jax.arch.sampler import SamplerConfig
from ac_jax.child.trainer import TrainSchedule
from ac_jax.config import ArchsetConfig, Config
from ac_jax.surrogate.config import SurrogateConfig
from ac_jax.surrogate.model import SurrogateArch


VARIANTS = ("default",)


def get_config(variant: str = "default") -> Config:
    if variant != "default":
        raise ValueError(f"unknown variant {variant!r} of tiny; use default")
    schedule = TrainSchedule(epochs=1, batch_size=32, lr=0.01, eval_batch_size=128)
    return Config(
        name="tiny/default",
        dataset="synthetic",
        final_schedule=TrainSchedule(epochs=2, batch_size=32, lr=0.01, eval_batch_size=128),
        default_model="tinycnn",
        archset=ArchsetConfig(
            num=12,
            seeds=2,
            schedule=schedule,
            sampler=SamplerConfig(max_len=12, max_params=40_000, max_macs=400_000),
            neighbourhood_fraction=0.5,
            neighbourhood_of="tinycnn",
            compile_workers=1,
            path="archsets/tiny.sqlite",
        ),
        # A small surrogate that trains in seconds (the tests' own settings).
        surrogate=SurrogateConfig(
            arch=SurrogateArch(max_len=16, widths=(16, 32), embed_dim=16, regressor_hidden=32),
            steps=1000, batch_size=16, optimizer="adam", lr=3e-3, steps_per_call=250,
            eval_every=250, checkpoint_every=500, decay_every_epochs=0,
        ),
    )
