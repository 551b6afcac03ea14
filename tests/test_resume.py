"""Resumable trainings (`ChildTrainer.train_resumable`): stretches of epochs give one whole
training's result, a killed training continues from its checkpoint, and a checkpoint that does
not belong is moved aside instead of being continued."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from ac_jax.arch.spec import Arch, batchnorm, conv, linear, maxpool, relu
from ac_jax.child import resume
from ac_jax.child.trainer import ChildTrainer, TrainSchedule, stretch_summary, to_device
from ac_jax.data import load

from conftest import training_seeds

# Plain SGD over few steps keeps two float orderings of one computation at rounding level (no
# Adam normalisation to blow a rounding-sized gradient up); a large learning rate divided by 10
# after epoch 2 makes a misplaced decay visible far above that level.
SCHEDULE = TrainSchedule(epochs=3, batch_size=32, lr=0.2, lr_decay_epochs=(2,),
                         optimizer="sgd", train_subset=96, eval_batch_size=128)


@pytest.fixture(scope="module")
def data():
    return to_device(load("synthetic"), SCHEDULE)


def arch_of(data, width=8):
    return Arch(data.input_shape, data.num_classes,
                (conv(3, width, 1, 1), batchnorm(), relu(), maxpool(2), linear(data.num_classes)))


@pytest.fixture(scope="module")
def whole(data):
    return ChildTrainer(data, SCHEDULE, 2).train(arch_of(data), training_seeds(2))


def assert_same_training(result, reference, num_test):
    assert result.ok, result.reason
    np.testing.assert_allclose(result.epoch_losses, reference.epoch_losses, rtol=1e-5)
    # Weights equal to rounding classify every test image alike, bar a tie on a boundary.
    np.testing.assert_allclose(result.seed_accuracies, reference.seed_accuracies,
                               atol=1.01 / num_test)


def test_stretches_of_epochs_give_the_whole_training(data, whole, tmp_path):
    log = []
    chunked = ChildTrainer(data, SCHEDULE, 2).train_resumable(
        arch_of(data), training_seeds(2), tmp_path / "ckpt.npz", chunk_epochs=2,
        log=lambda line: log.append(line.split(" (")[0]))
    assert_same_training(chunked, whole, data.num_test)
    assert not (tmp_path / "ckpt.npz").exists()  # removed once the training is done
    assert log == ["epoch 2/3", "epoch 3/3"]  # a line per stretch; nothing to resume
    # The decay matters at this tolerance: without it the third epoch's loss is elsewhere.
    no_decay = ChildTrainer(data, dataclasses.replace(SCHEDULE, lr_decay_epochs=()), 2)
    plain = no_decay.train(arch_of(data), training_seeds(2))
    assert not np.allclose(np.array(plain.epoch_losses)[:, 2],
                           np.array(whole.epoch_losses)[:, 2], rtol=1e-3)


def test_a_stretch_line_gives_pace_time_to_go_and_loss():
    """The line a long training is watched by: its figures follow from the progress alone."""
    progress = resume.Progress(None, 2, np.array([[1.0, 0.5], [1.0, 0.25]], np.float32), 7200.0)
    assert stretch_summary(progress, 5) == ("7,200 s of training, 3,600 s/epoch, ~3.0 h to go; "
                                            "loss 0.3750")
    quick = dataclasses.replace(progress, train_seconds=60.0)
    assert "30 s/epoch, ~2 min to go;" in stretch_summary(quick, 6)
    assert "to go" not in stretch_summary(quick, 2)  # the last stretch has nothing left


class Killed(Exception):
    pass


def test_a_killed_training_continues_from_its_last_stretch(data, whole, tmp_path,
                                                           monkeypatch):
    path = tmp_path / "ckpt.npz"
    real_save = resume.save
    saves = []

    def save_then_die(*args):
        real_save(*args)
        saves.append(args[2].epochs_done)
        raise Killed  # the process dies right after its first checkpoint

    trainer = ChildTrainer(data, SCHEDULE, 2)
    monkeypatch.setattr(resume, "save", save_then_die)
    with pytest.raises(Killed):
        trainer.train_resumable(arch_of(data), training_seeds(2), path, chunk_epochs=1)
    assert saves == [1] and path.exists()
    monkeypatch.setattr(resume, "save", real_save)

    log = []
    resumed = ChildTrainer(data, SCHEDULE, 2).train_resumable(
        arch_of(data), training_seeds(2), path, chunk_epochs=1,
        log=lambda line: log.append(line.split(" (")[0]))
    assert log == [f"resuming from ckpt.npz after epoch 1 of {SCHEDULE.epochs}", "epoch 2/3",
                   "epoch 3/3"]
    assert_same_training(resumed, whole, data.num_test)
    assert not path.exists()


@pytest.mark.parametrize("damage", ["garbage", "meta_not_a_dict", "other_network",
                                    "other_data"])
def test_a_checkpoint_that_does_not_belong_is_moved_aside(data, whole, tmp_path,
                                                          monkeypatch, damage):
    path = tmp_path / "ckpt.npz"
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif damage == "meta_not_a_dict":  # a readable archive whose contents make no sense
        with open(path, "wb") as f:
            np.savez(f, meta=np.frombuffer(b"[1]", np.uint8), epoch_losses=np.zeros((2, 1)))
    else:  # a real checkpoint left at this path: of a wider network, or of other same-shaped data
        real_save = resume.save

        def save_then_die(*args):
            real_save(*args)
            raise Killed

        other = (data if damage == "other_network" else
                 dataclasses.replace(data, train_y=jnp.roll(data.train_y, 1)))
        trainer = ChildTrainer(other, SCHEDULE, 2)
        monkeypatch.setattr(resume, "save", save_then_die)
        with pytest.raises(Killed):
            trainer.train_resumable(arch_of(data, width=12 if damage == "other_network" else 8),
                                    training_seeds(2), path, chunk_epochs=1)
        monkeypatch.undo()
        assert path.exists()
    log = []
    result = ChildTrainer(data, SCHEDULE, 2).train_resumable(
        arch_of(data), training_seeds(2), path, chunk_epochs=2,
        log=lambda line: log.append(line if "not used" in line else line.split(" (")[0]))
    assert_same_training(result, whole, data.num_test)
    assert (tmp_path / "ckpt.npz.unusable").exists() and not path.exists()
    assert "not used" in log[0] and "training from the start" in log[0]
    assert log[1:] == ["epoch 2/3", "epoch 3/3"]


def test_a_failure_after_a_finished_stretch_is_raised_not_recorded(data, tmp_path, monkeypatch):
    """Out of memory once a stretch has run is the machine's trouble, not the network's: the
    training must not be stored as "oom" (and its checkpoint thrown away) but stop, resumable."""
    path = tmp_path / "ckpt.npz"
    real_save = resume.save

    def save_then_run_out(*args):
        real_save(*args)
        raise MemoryError

    monkeypatch.setattr(resume, "save", save_then_run_out)
    with pytest.raises(MemoryError):
        ChildTrainer(data, SCHEDULE, 2).train_resumable(arch_of(data), training_seeds(2), path,
                                                         chunk_epochs=1)
    assert path.exists()


def test_peek_reads_a_checkpoints_progress_and_leaves_any_file_alone(tmp_path):
    path = tmp_path / "ckpt.npz"
    assert resume.peek(path) is None  # none yet
    resume.save(path, {"any": "identity"}, resume.Progress(
        {"w": np.zeros(3, np.float32)}, 4, np.ones((2, 4), np.float32), 12.5))
    assert resume.peek(path) == {"epochs_done": 4, "train_seconds": 12.5}
    path.write_bytes(b"not a checkpoint")
    assert resume.peek(path) is None and path.read_bytes() == b"not a checkpoint"


def test_a_distilling_training_in_stretches_gives_the_whole_one(data, tmp_path):
    """The long final stage's KD trainings (`--long-final-distill`) run in stretches too."""
    from ac_jax.child.trainer import Distillation, TrainOptions

    teacher_arch = arch_of(data, width=12)
    taught = ChildTrainer(data, SCHEDULE, 1, TrainOptions(keep_weights=True)).train(
        teacher_arch, training_seeds(1))
    assert taught.ok, taught.reason
    options = TrainOptions(distill=Distillation(teacher_arch))
    kd = ChildTrainer(data, SCHEDULE, 2, options, taught.variables[0])
    one_stretch = kd.train_resumable(arch_of(data), training_seeds(2), tmp_path / "kd3.npz",
                                     chunk_epochs=3)
    chunked = kd.train_resumable(arch_of(data), training_seeds(2), tmp_path / "kd2.npz",
                                 chunk_epochs=2)
    assert_same_training(chunked, one_stretch, data.num_test)
    # Against `train`'s own program (compiled apart, other fusion): the same training, up to
    # rounding that the KD term's softmax at T = 4 lets through a little more than plain
    # cross-entropy does (measured: one epoch's mean loss of one seed 2.5e-5 apart, the next
    # epoch 7e-7; identical accuracies), so the losses are held to 1e-4 here.
    whole = kd.train(arch_of(data), training_seeds(2))
    np.testing.assert_allclose(one_stretch.epoch_losses, whole.epoch_losses, rtol=1e-4)
    np.testing.assert_allclose(one_stretch.seed_accuracies, whole.seed_accuracies,
                               atol=1.01 / data.num_test)
