"""The equal-budget study (bin/study.py): ac_jax, random search and N2N under one constraint, the
same number of trained architectures, one proxy and one final schedule, several repeats."""

from ac_jax.study.config import METHODS, REFERENCES, StudyConfig, final_schedule
from ac_jax.study.runner import run_amortised, run_study

__all__ = ["METHODS", "REFERENCES", "StudyConfig", "final_schedule", "run_amortised", "run_study"]
