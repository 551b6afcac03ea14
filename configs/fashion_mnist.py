"""Fashion-MNIST, CONV-7 (paper Sections 5.1-5.3); the embedded default task.

Variants:
  default  what we ship: the paper's archset budget (1500 architectures, 5 epochs x 5 seeds,
           full training set), half of them drawn around CONV-7 (see sampler.sample_neighbourhood)
  paper    the same with the pure Appendix 9 sampler
  cpu      the reduced proxy used for the archset built on a 2-core CPU: 1 epoch x 2 seeds on a
           4,000-image stratified training subset, evaluated on 2,000 validation images, with the
           sampler's MAC cap lowered to 20M per image and pooling capped at 2M window reads
           (compile + train ~15-20 s per architecture)
  cpu_region  the cpu archset's supplement around CONV-7 (200 architectures between CONV-7 and
           ~20x smaller, its MAC cap lifted to 1.25x CONV-7's; same proxy as cpu)
  cpu2, cpu2_region  the same plans under Adam lr 0.001 instead of 0.01, same cost: on 40 region
           networks that proxy ranks size the way the final schedule does and its seeds agree
           better (README, "The compression region"); their own archset files; their surrogate
           adds the ranking loss and no-op augmentation to the five heads
"""

import dataclasses

from ac_jax.arch.sampler import SamplerConfig
from ac_jax.child.trainer import TrainSchedule
from ac_jax.config import ArchsetConfig, Config
from ac_jax.surrogate.config import SurrogateConfig
from ac_jax.surrogate.model import SurrogateArch


VARIANTS = ("default", "paper", "cpu", "cpu_region", "cpu2", "cpu2_region")


def get_config(variant: str = "default") -> Config:
    plan = {"cpu2": "cpu", "cpu2_region": "cpu_region"}.get(variant, variant)  # cpu2*: the cpu plans
    proxy = TrainSchedule(epochs=5, batch_size=64, lr=0.01)
    archset = ArchsetConfig(
        num=1500,
        seeds=5,
        schedule=proxy,
        sampler=SamplerConfig(),
        neighbourhood_fraction=0.5,
        neighbourhood_of="conv7",
        path="archsets/fashion_mnist.sqlite",
    )
    if variant == "paper":
        archset = dataclasses.replace(
            archset, neighbourhood_fraction=0.0, path="archsets/fashion_mnist_paper.sqlite"
        )
    elif plan == "cpu":
        archset = dataclasses.replace(
            archset,
            num=310,  # >= 300 trained after the few "rejected" by the pooling cap
            seeds=2,
            schedule=dataclasses.replace(proxy, epochs=1, train_subset=4000, test_subset=2000),
            sampler=SamplerConfig(max_macs=20_000_000),
            compile_workers=1,
            # Pooling-heavy nets over 2M window reads per image took 10-12 min each on the 2-core
            # CPU (plan positions 42 and 102, trained before this cap was set at position 158).
            max_pooling_reads=2_000_000,
            path="archsets/fashion_mnist_cpu_val.sqlite",  # labelled on validation (2026-12-01)
        )
    elif plan == "cpu_region":
        # The supplement of the cpu archset where compressing CONV-7 happens (issue 21): CONV-7
        # itself, its uniformly thinner versions and random edits down to ~20x fewer parameters,
        # trained like the cpu archset; its ids start at 100,000 so both files train one surrogate.
        archset = dataclasses.replace(
            archset,
            num=200,
            seeds=2,
            schedule=dataclasses.replace(proxy, epochs=1, train_subset=4000, test_subset=2000),
            neighbourhood_fraction=1.0,
            neighbourhood_kind="region",
            compile_workers=1,
            max_pooling_reads=2_000_000,
            idx_offset=100_000,
            path="archsets/fashion_mnist_cpu_region.sqlite",
        )
    elif variant != "default":
        raise ValueError(
            f"unknown variant {variant!r} of fashion_mnist; use {', '.join(VARIANTS)}")
    if plan != variant:
        # 63 steps of Adam at lr 0.01 leave wide networks near chance (CONV-7: 0.44), so that
        # proxy ranks size backwards; lr 0.001 trains every size in the same steps.
        archset = dataclasses.replace(
            archset, schedule=dataclasses.replace(archset.schedule, lr=1e-3),
            path=archset.path.replace("_cpu", "_cpu2"))
    # The paper's surrogate optimiser (SGD, Nesterov 0.5, lr 0.003, 80k steps) for the full-size
    # variants; on the small CPU archset Adam reaches a far lower loss in the steps a CPU affords
    # (README, Results: both were measured).
    surrogate = SurrogateConfig(steps=80_000)
    if plan in ("cpu", "cpu_region"):
        # Five accuracy heads: in the ablation on the cpu + cpu_region archsets (README) the
        # ensemble ranked held-out records as well as any variant and is the only one whose
        # spread tracks its error (Spearman 0.39), which refinement's acquisition reads.
        surrogate = SurrogateConfig(arch=SurrogateArch(ensemble=5), steps=4_000, optimizer="adam",
                                    lr=3e-3, decay_every_epochs=0, eval_every=1_000,
                                    checkpoint_every=1_000)
    if plan != variant:
        # On the lr-0.001 labels the ablation's "all" (five heads, pairwise ranking loss, two
        # no-op-augmented copies per record) ranked 106 held-out records at tau 0.725 / 0.723 /
        # 0.696 over three surrogate seeds, the one-head base at 0.63-0.64 (README).
        surrogate = dataclasses.replace(surrogate, rank_weight=1.0, noop_augment=2)
    return Config(
        name=f"fashion_mnist/{variant}",
        dataset="fashion_mnist",
        final_schedule=TrainSchedule(epochs=50, batch_size=64, lr=0.01, lr_decay_epochs=(30,)),
        default_model="conv7",
        archset=archset,
        surrogate=surrogate,
    )
