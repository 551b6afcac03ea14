"""The experiment configuration: one frozen dataclass tree. `configs/<name>.py` build instances;
scripts load one (`configs.get_config`) and pass it in."""

from __future__ import annotations

import dataclasses

from ac_jax.arch.sampler import SamplerConfig
from ac_jax.child.trainer import TrainSchedule
from ac_jax.surrogate.config import SurrogateConfig


@dataclasses.dataclass(frozen=True)
class ArchsetConfig:
    """What the archset holds and how each architecture is trained (paper Section 5)."""

    num: int = 1500
    seeds: int = 5
    schedule: TrainSchedule = TrainSchedule(epochs=5, batch_size=64, lr=0.01)
    sampler: SamplerConfig = SamplerConfig()
    sample_seed: int = 0
    # Fraction of architectures drawn around the zoo model (`neighbourhood_of`) instead of from
    # the Appendix 9 sampler; 0 is the paper's setting. See `sampler.sample_neighbourhood`.
    neighbourhood_fraction: float = 0.0
    neighbourhood_of: str = "conv7"
    # "edits": `sampler.sample_neighbourhood` (broad random edits, under the sampler's caps);
    # "region": `sampler.sample_region`, the network and its versions down to `region_min_ratio`
    # times fewer parameters, under a MAC cap of its own (`region_max_macs`, None: 1.25x the
    # network's), i.e. the region a compression searches.
    neighbourhood_kind: str = "edits"
    region_min_ratio: float = 20.0
    region_max_macs: int | None = None
    # Record ids start here: a second archset (a region supplement) trained alongside the first
    # gets ids of its own, so the surrogate's id-hash hold-out and merges keep them apart.
    idx_offset: int = 0
    compile_workers: int = 2  # background threads compiling the next architectures
    # Cap on pooling window reads per image (`generate.pooling_work`); None: the sampler's MAC cap.
    # The sampler's MAC cap counts Conv and Linear only; an architecture over this cap is recorded
    # as "rejected" untrained. A cost guard like a timeout, so not part of the archset's meta.
    max_pooling_reads: int | None = None
    path: str = "archsets/fashion_mnist.sqlite"


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a stage needs; `bin/*` scripts take overrides of its fields from flags."""

    name: str
    dataset: str
    data_dir: str | None = None
    # The paper's full training schedule, used to verify a compressed architecture.
    final_schedule: TrainSchedule = TrainSchedule(
        epochs=50, batch_size=64, lr=0.01, lr_decay_epochs=(30,)
    )
    default_model: str = "conv7"
    archset: ArchsetConfig = ArchsetConfig()
    surrogate: SurrogateConfig = SurrogateConfig()  # the paper's settings unless a config sets them

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)
