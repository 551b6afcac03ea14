"""Shared fixtures: a small hand-made archset (no child training) and a tiny trained surrogate.

`AC_JAX_TEST_SEED` (default 0) shifts every training seed the suite uses (the tiny surrogate's,
the child networks', the baselines' and the policy's), so that one machine can show the suite
does not depend on one lucky float trajectory:

    AC_JAX_TEST_SEED=3 .venv/bin/python -m pytest

In this process XLA compiles with most optimizations off (`jax_disable_most_optimizations`, as
flax's own tests do): the suite's programs are tiny and compiling them dominated its time
(whole suite 586 s -> 332 s on a 2-core Intel, 2026-12-01). The end-to-end tests that run `bin/*.py` in subprocesses compile as a user's
run does (the setting is not passed on). `AC_JAX_TEST_OPTIMIZED=1` keeps optimizations on here
too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest

from ac_jax.arch.sampler import SamplerConfig, sample
from ac_jax.archset.store import ArchsetStore, Record
from ac_jax.runtime import enable_compilation_cache

TINY_SHAPE, TINY_CLASSES = (12, 12, 1), 4

if os.environ.get("AC_JAX_TEST_OPTIMIZED") != "1":
    jax.config.update("jax_disable_most_optimizations", True)

# One persistent XLA cache per run, shared by the xdist workers: many tests compile the same tiny
# programs again (a surrogate step, a child's training step rebuilt for each trainer), and
# reading one back is cheaper than compiling it. The run's first process (xdist's controller, or
# the only one) makes a fresh folder and removes it at the end; the workers it starts inherit
# the variable. `AC_JAX_TEST_CACHE=0` turns the in-process cache off.
_RUN_CACHE = "AC_JAX_TEST_RUN_CACHE"
_OWNS_CACHE = _RUN_CACHE not in os.environ
if _OWNS_CACHE:
    os.environ[_RUN_CACHE] = tempfile.mkdtemp(prefix="ac_jax_test_xla_")
TEST_COMPILE_CACHE = Path(os.environ[_RUN_CACHE])
# The scripts the tests run in subprocesses (bin/*.py) use it too, never the user's own cache.
os.environ["AC_JAX_COMPILE_CACHE"] = str(TEST_COMPILE_CACHE)
if os.environ.get("AC_JAX_TEST_CACHE", "1") != "0":
    # Every program: with optimizations off most compile in well under the scripts' 0.5 s.
    enable_compilation_cache(TEST_COMPILE_CACHE, min_compile_seconds=0.0)


def pytest_sessionfinish(session):
    if _OWNS_CACHE:  # after the workers have finished
        shutil.rmtree(TEST_COMPILE_CACHE, ignore_errors=True)


# Added to every training seed of the suite (see the module docstring).
TEST_SEED = int(os.environ.get("AC_JAX_TEST_SEED", "0"))


def training_seeds(n: int) -> list[int]:
    """`n` distinct training seeds, shifted by `TEST_SEED`."""
    return [TEST_SEED * 100 + i for i in range(n)]


def fake_accuracy(arch) -> float:
    """A smooth made-up target (more parameters, higher accuracy) so regressors have signal."""
    return float(0.3 + 0.6 * (1.0 - np.exp(-arch.num_params / 20_000.0)))


def made_up_accuracy(arch) -> float:
    """A trained accuracy for `fake_training`: grows with the parameter count, plus a fixed
    per-network offset (so networks of one size differ)."""
    noise = (zlib.crc32(repr(arch.layers).encode()) % 1000) / 1000.0
    return float(0.4 + 0.4 * (1 - np.exp(-arch.num_params / 800.0)) + 0.1 * noise)


class Interrupted(Exception):
    """What `fake_training` raises in place of a kill."""


@pytest.fixture
def fake_training(monkeypatch):
    """Child training without XLA: ChildTrainer's compile and train replaced, each network's
    accuracy `made_up_accuracy`; `calls` lists the trainings, `stop_after` makes the n-th one
    raise `Interrupted` (a kill)."""
    from ac_jax.child import trainer as trainer_lib

    state = {"calls": [], "stop_after": None}

    def train(self, arch, seeds, init=None):
        if state["stop_after"] is not None and len(state["calls"]) >= state["stop_after"]:
            raise Interrupted
        state["calls"].append(arch)
        acc = made_up_accuracy(arch)
        return trainer_lib.TrainResult("ok", "", (acc,) * len(seeds), ((1.0,),) * len(seeds),
                                       0.0, 0.0)

    monkeypatch.setattr(trainer_lib.ChildTrainer, "train", train)
    monkeypatch.setattr(trainer_lib.ChildTrainer, "compile", lambda self, arch: (None, 0.0))
    return state


@pytest.fixture(scope="session")
def tiny_archset(tmp_path_factory):
    """60 sampled 12x12 architectures with made-up accuracies in a real archset file."""
    path = tmp_path_factory.mktemp("archset") / "tiny.sqlite"
    archs, _ = sample(60, TINY_SHAPE, TINY_CLASSES, seed=1,
                      cfg=SamplerConfig(max_len=12, max_params=40_000, max_macs=400_000))
    meta = {"input_shape": list(TINY_SHAPE), "num_classes": TINY_CLASSES, "dataset": "synthetic"}
    with ArchsetStore(path, meta) as store:
        for i, arch in enumerate(archs):
            acc = fake_accuracy(arch)
            store.add(Record(i, arch, "appendix9", arch.num_params, arch.macs, "ok", "",
                             (acc, acc), acc, ((1.0,),), 0.0, 0.0))
    return path


@pytest.fixture(scope="session")
def tiny_surrogate_config():
    from ac_jax.surrogate.config import SurrogateConfig
    from ac_jax.surrogate.model import SurrogateArch

    return SurrogateConfig(
        arch=SurrogateArch(max_len=16, widths=(16, 32), embed_dim=16, regressor_hidden=32),
        steps=1000, batch_size=16, optimizer="adam", lr=3e-3, steps_per_call=250,
        eval_every=250, checkpoint_every=500, decay_every_epochs=0, seed=TEST_SEED,
    )


TINY_TASK = {"dataset": "synthetic", "input_shape": list(TINY_SHAPE), "num_classes": TINY_CLASSES}


@pytest.fixture(scope="session")
def tiny_surrogate_dir(tiny_archset, tiny_surrogate_config, tmp_path_factory):
    """The tiny surrogate, trained once per run: the xdist workers share it (the first to ask
    trains it holding a lock; the other waits for it instead of training its own copy).
    Tests only read it or copy it."""
    import fcntl

    from ac_jax.archset.store import load_arrays
    from ac_jax.surrogate.train import train

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder above each worker's own
    home = root / "tiny_surrogate"
    run_dir, done = home / "run", home / "trained"
    with open(root / "tiny_surrogate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(home, ignore_errors=True)  # a half-trained one from a failed worker
            arrays = load_arrays(tiny_archset, max_len=16)
            train(tiny_surrogate_config, arrays, run_dir, TINY_TASK, progress=False)
            done.touch()
    return run_dir
