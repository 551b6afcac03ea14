"""Child-network training: vmapped seeds, one trace, learning, failure reporting."""

import dataclasses

import chex
import jax
import numpy as np
import pytest

from ac_jax.arch.spec import Arch, batchnorm, conv, dropout, linear, maxpool, relu
from ac_jax.child import trainer as trainer_lib
from ac_jax.child.trainer import ChildTrainer, TrainSchedule, to_device
from ac_jax.data import load

SCHEDULE = TrainSchedule(epochs=2, batch_size=32, lr=0.01, eval_batch_size=128)


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic")


@pytest.fixture(scope="module")
def data(synthetic):
    return to_device(synthetic, SCHEDULE)


def small_arch(ds):
    return Arch(
        ds.input_shape,
        ds.num_classes,
        (conv(3, 8, 1, 1), batchnorm(), relu(), maxpool(2), dropout(0.1), linear(ds.num_classes)),
    )


def test_tiny_config_learns_and_traces_once(synthetic, data):
    trainer_lib.TRACE_COUNTS.clear()
    result = ChildTrainer(data, SCHEDULE, 3).train(small_arch(synthetic), [0, 1, 2])
    assert result.ok, result.reason
    assert len(result.seed_accuracies) == 3
    chance = 1 / synthetic.num_classes
    assert result.mean_accuracy > chance + 0.4
    # The whole run (2 epochs x 16 steps x 3 seeds, then evaluation) is one traced program.
    assert trainer_lib.TRACE_COUNTS["program"] == 1
    assert trainer_lib.TRACE_COUNTS["train_step"] == 1
    assert result.compile_seconds > 0 and result.train_seconds > 0


def test_program_is_reused_across_seed_sets(synthetic, data):
    program = chex.assert_max_traces(trainer_lib.build_program(small_arch(synthetic), SCHEDULE, data), n=1)
    run = jax.jit(program)
    args = (data.train_x, data.train_y, data.test_x, data.test_y, data.test_mask)
    first, _ = run(trainer_lib._seed_keys([0, 1]), *args)
    second, _ = run(trainer_lib._seed_keys([5, 6]), *args)  # no retrace (chex would raise)
    assert first.shape == second.shape == (2,)


def test_vmapped_seeds_differ_and_match_single_seed_runs(synthetic, data):
    arch = small_arch(synthetic)
    together = ChildTrainer(data, SCHEDULE, 3).train(arch, [0, 1, 2])
    losses = np.array(together.epoch_losses)
    assert len({round(v, 6) for v in losses[:, 0]}) == 3  # seeds really differ
    alone = ChildTrainer(data, SCHEDULE, 1).train(arch, [1])
    np.testing.assert_allclose(alone.epoch_losses[0], losses[1], rtol=2e-4)
    assert abs(alone.seed_accuracies[0] - together.seed_accuracies[1]) <= 2 / 256
    # Seeds one after another inside the program give the same numbers as vmapped seeds.
    mapped = ChildTrainer(data, dataclasses.replace(SCHEDULE, seed_axis="map"), 3).train(
        arch, [0, 1, 2]
    )
    np.testing.assert_allclose(np.array(mapped.epoch_losses), losses, rtol=2e-4)


def test_diverging_network_is_reported_not_raised(synthetic, data):
    exploding = dataclasses.replace(SCHEDULE, lr=1e30)
    result = ChildTrainer(to_device(synthetic, exploding), exploding, 2).train(
        small_arch(synthetic), [0, 1]
    )
    assert result.status == "diverged"
    assert "non-finite training loss" in result.reason


def test_invalid_architecture_is_reported(synthetic, data):
    bad = Arch(synthetic.input_shape, synthetic.num_classes, (conv(3, 4), linear(99)))
    result = ChildTrainer(data, SCHEDULE, 1).train(bad, [0])
    assert result.status == "error" and "invalid architecture" in result.reason


def test_out_of_memory_is_classified():
    status, reason = trainer_lib._classify_error(
        RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB")
    )
    assert status == "oom" and "out of memory" in reason
    assert trainer_lib._classify_error(ValueError("boom"))[0] == "error"
