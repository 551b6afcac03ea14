"""What an equal-budget study compares, and under which schedules (bin/study.py)."""

from __future__ import annotations

import dataclasses

from ac_jax.child.trainer import TrainSchedule
from ac_jax.compress.refine import DEFAULT_POOL
from ac_jax.config import Config

# The search methods, each spending `budget` trained architectures per repeat:
#   ac_jax         the paper's mode: surrogate on `budget` archset records, one search, the
#                  surrogate's pick under the constraint (no training after the archset)
#   ac_jax_rounds  `budget` minus the refinement's trainings from the archset, then refinement
#                  rounds (train candidates, fine-tune, search again; pick on measured accuracy)
#   random_search  `budget` architectures sampled under the constraint, best validation accuracy
#   n2n            N2N's two REINFORCE stages until `budget` networks are trained (teacher included)
#   random_search_region  random search whose neighbourhood share comes from the compression-
#                  region sampler (what ac_jax's region archset holds): not run by default; it
#                  tells how much of a gain is the sampler's rather than the search's
METHODS = ("ac_jax", "ac_jax_rounds", "random_search", "n2n")
OPTIONAL_METHODS = ("random_search_region",)
# Reference rows at the constraint's size, trained once from the trained original (not searches).
REFERENCES = ("pruning", "kd")
# Optional: the original uniformly thinned to the constraint and trained from scratch with the
# final schedule and seeds, like the picks: what compression gives with no search at all.
OPTIONAL_REFERENCES = ("thin",)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    cfg: Config  # the task: dataset, archset (proxy schedule, seeds, sampler), surrogate
    model: str = "conv7"
    target_ratio: float = 8.0  # the constraint: at most original params / target_ratio
    budget: int = 200  # trained architectures per method and repeat
    repeats: int = 3
    methods: tuple[str, ...] = METHODS
    references: tuple[str, ...] = REFERENCES
    final_schedule: TrainSchedule = TrainSchedule(epochs=6, batch_size=64, lr=0.01,
                                                  lr_decay_epochs=(4,))
    final_seeds: int = 2
    rounds: int = 2  # ac_jax_rounds: refinement rounds
    refine_top: int = 6  # ... candidates trained per round
    refine_finetune_steps: int = 400
    surrogate_steps: int | None = None  # None: the config's surrogate schedule
    seed: int = 0  # repeat r uses search seed seed + r (archset subset, sampler, policy)
    # ac_jax's own settings (issue 21). The issue-20 study ran the paper's plain decoding and
    # Pareto-spread rounds (`LEGACY_AC_JAX`); a folder made so resumes only with those.
    plain_decoding: bool = False  # True: the paper's decoding (step 0 = decoder(encoder(x)))
    acquisition: str = "ucb"  # ac_jax_rounds: "ucb" (active learning) or "pareto"
    # ucb: region samples per round the acquisition also ranks (`compress.refine.region_pool`;
    # 0: the search's candidates only, as the study's first repeat-0 run of issue 21 had)
    acquisition_pool: int = DEFAULT_POOL
    # Archset files drawn from besides the config's (e.g. the compression-region supplement),
    # and the share of ac_jax's subset drawn from their "region:" records (None: uniformly).
    extra_archsets: tuple[str, ...] = ()
    region_share: float | None = None

    def __post_init__(self):
        unknown = (set(self.methods) - set(METHODS) - set(OPTIONAL_METHODS)
                   | set(self.references) - set(REFERENCES) - set(OPTIONAL_REFERENCES))
        if unknown:
            raise ValueError(f"unknown method(s) {sorted(unknown)}; methods: {', '.join(METHODS)}"
                             f"; references: {', '.join(REFERENCES + OPTIONAL_REFERENCES)}")
        if self.budget < 2 or self.repeats < 1 or self.final_seeds < 1:
            raise ValueError("a study needs budget >= 2, repeats >= 1 and final_seeds >= 1")
        if self.target_ratio <= 1:
            raise ValueError(f"target ratio must be above 1, got {self.target_ratio}")
        if "ac_jax_rounds" in self.methods and (self.rounds < 1 or self.refine_top < 1):
            raise ValueError("ac_jax_rounds needs rounds >= 1 and refine_top >= 1 (the paper "
                             "mode is the `ac_jax` method)")
        if self.acquisition not in ("ucb", "pareto"):
            raise ValueError(f"acquisition must be 'ucb' or 'pareto', got {self.acquisition!r}")
        if self.region_share is not None and not 0.0 <= self.region_share <= 1.0:
            raise ValueError(f"region_share must be in [0, 1], got {self.region_share}")
        if self.surrogate_steps is not None and self.surrogate_steps < 1:
            raise ValueError("surrogate_steps must be positive")
        if "ac_jax_rounds" in self.methods and self.refine_trainings >= self.budget:
            raise ValueError(f"ac_jax_rounds trains up to {self.refine_trainings} networks in its "
                             f"rounds, which leaves no archset within a budget of {self.budget}")

    @property
    def refine_trainings(self) -> int:
        return refine_trainings(self.rounds, self.refine_top)

    def ac_jax_settings(self) -> dict:
        settings = {"plain_decoding": self.plain_decoding, "acquisition": self.acquisition,
                    "extra_archsets": [str(p) for p in self.extra_archsets],
                    "region_share": self.region_share}
        if self.acquisition == "ucb" and self.acquisition_pool:  # folders before it: no key
            settings["acquisition_pool"] = self.acquisition_pool
        return settings


# What the issue-20 study ran (before anchored search and active refinement existed).
LEGACY_AC_JAX = {"plain_decoding": True, "acquisition": "pareto", "extra_archsets": [],
                 "region_share": None}


def refine_trainings(rounds: int, top: int) -> int:
    """The most trainings refinement spends: the original, `top` per round, and the last
    search's `top` (fewer when candidates repeat)."""
    return 1 + (rounds + 1) * top


def final_schedule(cfg: Config, epochs: int | None) -> TrainSchedule:
    """The study's final schedule: the config's (the paper's recipe: Adam, lr divided by 10 at
    60% of the epochs) shortened to `epochs`, on the whole training set minus the validation
    split. The study default for Fashion-MNIST is 6 epochs (decay after 4), chosen before any
    run, as the paper's 50-epoch recipe at a length the 2-core CPU affords."""
    base = cfg.final_schedule
    epochs = epochs or base.epochs
    decay = tuple(sorted({max(1, round(0.6 * epochs))})) if epochs > 1 else ()
    return dataclasses.replace(base, epochs=epochs, lr_decay_epochs=decay, train_subset=None,
                               test_subset=None)
