"""The compiled training program of one architecture (`build_program`): all seeds in one
`jax.vmap`, epochs and minibatches in `lax.scan`, evaluation at the end; its optimizer, the
per-seed random streams (`seed_streams`), and the options beyond plain cross-entropy
(distillation, warm starts, kept weights). `trainer.ChildTrainer` compiles and runs it.
`build_chunk_programs` cuts the same training into stretches of epochs whose state can be
checkpointed between them (`ChildTrainer.train_resumable`, for schedules of hours)."""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ac_jax.arch.spec import Arch
from ac_jax.child.model import ChildNet
from ac_jax.data.device import preprocess

if TYPE_CHECKING:  # annotations only: trainer imports this module
    from ac_jax.child.trainer import DeviceData, TrainSchedule

# How often each traced function was traced (Python side effect at trace time); tests use it to
# check that the whole training is one program whose step is traced once, not per epoch/step.
TRACE_COUNTS: collections.Counter = collections.Counter()


def make_optimizer(schedule: TrainSchedule, steps_per_epoch: int) -> optax.GradientTransformation:
    boundaries = {
        epoch * steps_per_epoch: 1.0 / schedule.lr_decay_factor for epoch in schedule.lr_decay_epochs
    }
    lr = optax.piecewise_constant_schedule(schedule.lr, boundaries)
    if schedule.optimizer == "adam":
        return optax.adam(lr)
    if schedule.optimizer == "sgd":
        return optax.sgd(lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {schedule.optimizer!r}; use 'adam' or 'sgd'")


def seed_streams(seed_keys: jax.Array, schedule: TrainSchedule, num_train: int):
    """What each seed draws, for any architecture: ``(init_keys [S, 2], batches [S, E, steps,
    batch], step_keys [S, E, steps, 2])`` (the minibatches' image indices and per-step keys for
    augmentation and dropout).

    Computed by its own small program, compiled once per trainer, instead of inside every
    architecture's training program: the shuffles were ~40 of the ~570 fused kernels XLA compiled
    for a 7-conv archset net (2026-12-01).
    """
    steps = num_train // schedule.batch_size

    def one_seed(key):
        init_key, order_key, step_key = jax.random.split(key, 3)

        def epoch(e):
            perm = jax.random.permutation(jax.random.fold_in(order_key, e), num_train)
            batches = perm[: steps * schedule.batch_size].reshape(steps, schedule.batch_size)
            keys = jax.random.split(jax.random.fold_in(step_key, e), steps)
            return batches, keys

        batches, keys = jax.vmap(epoch)(jnp.arange(schedule.epochs))
        return init_key, batches, keys

    return jax.vmap(one_seed)(seed_keys)


@dataclasses.dataclass(frozen=True)
class Distillation:
    """Train with Hinton et al.'s KD loss from `teacher` (its variables go to `ChildTrainer`)."""

    teacher: Arch
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft (teacher) term


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """What a training does besides cross-entropy from a fresh initialisation.

    distill      KD from a teacher (`Distillation`); the teacher runs in inference mode on the
                 same (augmented) minibatch inside the step.
    warm_start   start every seed from given variables (`ChildTrainer.train(init=...)`), e.g. a
                 pruned network's sliced weights; the seeds still differ in data order and dropout.
    keep_weights return the trained variables of every seed (`TrainResult.variables`).
    """

    distill: Distillation | None = None
    warm_start: bool = False
    keep_weights: bool = False


def kd_loss(student_logits, teacher_logits, labels, temperature: float = 4.0,
            alpha: float = 0.9) -> jax.Array:
    """``alpha T^2 KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) CE(student, y)``,
    averaged over the batch. T^2 keeps the soft term's gradient scale independent of T; KL
    rather than cross-entropy with the soft targets: same gradient, 0 when they match."""
    t = temperature
    log_q = jax.nn.log_softmax(teacher_logits / t)
    log_p = jax.nn.log_softmax(student_logits / t)
    soft = (jnp.exp(log_q) * (log_q - log_p)).sum(axis=-1)
    hard = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
    return (alpha * t * t * soft + (1.0 - alpha) * hard).mean()


class _Parts:
    """The pieces every training program of one architecture is made of: initialisation, the
    scan over epochs and minibatches, and evaluation, all per seed (`build_program` composes
    them into one whole training, `build_chunk_programs` into resumable stretches of epochs)."""

    def __init__(self, arch: Arch, schedule: TrainSchedule, data: DeviceData,
                 options: TrainOptions):
        self.arch, self.schedule, self.options = arch, schedule, options
        self.model = ChildNet(arch, jnp.dtype(schedule.compute_dtype), schedule.conv_impl)
        distill = options.distill
        self.teacher_model = (None if distill is None else
                              ChildNet(distill.teacher, jnp.dtype(schedule.compute_dtype),
                                       schedule.conv_impl))
        self.num_test = data.num_test
        self.augment = data.augment
        self.eval_batch = min(schedule.eval_batch_size, data.test_x.shape[0])
        self.eval_steps = data.test_x.shape[0] // self.eval_batch
        self.tx = make_optimizer(schedule, data.train_x.shape[0] // schedule.batch_size)
        # The parameters live as one flat vector, so that the optimizer's update is one fused
        # elementwise pass instead of one per tensor (a 7-conv net has 30 tensors); `unflatten`
        # gives the model its tree. Same values: slicing and concatenation move numbers without
        # arithmetic.
        self.layout = {}  # ravel_pytree's inverse, recorded while `init` is traced

    def unflatten(self, flat):
        return self.layout["unravel"](flat)

    def init(self, key, extra):
        if self.options.warm_start:
            variables = extra["init"]
        else:
            dummy = jnp.zeros((1, *self.arch.input_shape), jnp.float32)
            variables = self.model.init({"params": key}, dummy, train=False)
        params, self.layout["unravel"] = ravel_pytree(variables["params"])
        return params, variables.get("batch_stats", {}), self.tx.init(params)

    def loss_of(self, logits, x, y, extra):
        distill = self.options.distill
        if distill is None:
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        teacher_logits = jax.lax.stop_gradient(
            self.teacher_model.apply(extra["teacher"], x, train=False))
        return kd_loss(logits, teacher_logits, y, distill.temperature, distill.alpha)

    def train_step(self, state, batch_idx, key, train_x, train_y, extra):
        TRACE_COUNTS["train_step"] += 1
        params, batch_stats, opt_state = state
        aug_key, dropout_key = jax.random.split(key)
        x = preprocess(aug_key, train_x[batch_idx], self.augment)
        y = train_y[batch_idx]

        def loss_fn(flat):
            logits, updates = self.model.apply(
                {"params": self.unflatten(flat), "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            return self.loss_of(logits, x, y, extra), updates.get("batch_stats", {})

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    def train_epochs(self, state, batches, step_keys, train_x, train_y, extra):
        """`state` after the epochs of `batches` / `step_keys` ([E, steps, ...]); per-epoch mean
        losses [E]."""
        def epoch(state, xs):
            def step(state, xs):
                return self.train_step(state, xs[0], xs[1], train_x, train_y, extra)

            state, losses = jax.lax.scan(step, state, xs)
            return state, losses.mean()

        return jax.lax.scan(epoch, state, (batches, step_keys))

    def evaluate(self, params, batch_stats, test_x, test_y, test_mask):
        eval_batch = self.eval_batch

        def body(correct, i):
            x = jax.lax.dynamic_slice_in_dim(test_x, i * eval_batch, eval_batch)
            y = jax.lax.dynamic_slice_in_dim(test_y, i * eval_batch, eval_batch)
            m = jax.lax.dynamic_slice_in_dim(test_mask, i * eval_batch, eval_batch)
            variables = {"params": self.unflatten(params), "batch_stats": batch_stats}
            logits = self.model.apply(variables, preprocess(None, x, False), train=False)
            hits = (jnp.argmax(logits, -1) == y).astype(jnp.float32) * m
            return correct + hits.sum(), None

        correct, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), jnp.arange(self.eval_steps))
        return correct / self.num_test

    def over_seeds(self, fn, per_seed: tuple, shared: tuple):
        """`fn(*per_seed_i, *shared)` for every seed i: vmapped, or one after another."""
        axis = self.schedule.seed_axis
        if axis == "vmap":
            return jax.vmap(lambda *s: fn(*s, *shared))(*per_seed)
        if axis == "map":
            return jax.lax.map(lambda s: fn(*s, *shared), per_seed)
        raise ValueError(f"unknown seed_axis {axis!r}; use 'vmap' or 'map'")


def build_program(arch: Arch, schedule: TrainSchedule, data: DeviceData,
                  options: TrainOptions = TrainOptions()):
    """The un-jitted function ``(init_keys, batches, step_keys, *data, extra) -> (accuracy [S],
    epoch_loss [S, E])`` (plus ``(flat params [S, P], batch stats)`` with
    `options.keep_weights`), its first three arguments from `seed_streams`
    (`ChildTrainer._args`). `extra` holds what `options` need, shared by all seeds:
    ``{"teacher": variables}`` for distillation, ``{"init": variables}`` for a warm start.

    The data arrays are arguments (not closed-over constants) so they are not baked into the
    executable and one compiled program serves any data of the same shapes. The program's
    ``layout`` attribute unflattens a flat parameter vector once it has been traced.
    """
    parts = _Parts(arch, schedule, data, options)

    def one_seed(init_key, batches, step_keys, train_x, train_y, test_x, test_y, test_mask,
                 extra):
        state = parts.init(init_key, extra)
        state, epoch_loss = parts.train_epochs(state, batches, step_keys, train_x, train_y, extra)
        params, batch_stats, _ = state
        accuracy = parts.evaluate(params, batch_stats, test_x, test_y, test_mask)
        if options.keep_weights:
            return accuracy, epoch_loss, params, batch_stats
        return accuracy, epoch_loss

    def program(init_keys, batches, step_keys, train_x, train_y, test_x, test_y, test_mask,
                extra):
        TRACE_COUNTS["program"] += 1
        return parts.over_seeds(one_seed, (init_keys, batches, step_keys),
                                (train_x, train_y, test_x, test_y, test_mask, extra))

    program.layout = parts.unflatten
    return program


def build_chunk_programs(arch: Arch, schedule: TrainSchedule, data: DeviceData,
                         options: TrainOptions = TrainOptions()):
    """The same training as `build_program`, cut into stretches of epochs that hand their state
    on (`ChildTrainer.train_resumable` checkpoints it between them):

    - ``init(init_keys, extra) -> state``, the seeds' starting state ``(flat params [S, P],
      batch stats, optimizer state)``;
    - ``chunk(state, batches, step_keys, *data, extra, last) -> (state, epoch_loss [S, e],
      accuracy [S])`` for the epochs of `batches` / `step_keys` ([S, e, steps, ...], a slice
      of `seed_streams`' epochs); evaluates only where the traced flag `last` is true (zeros
      otherwise). The optimizer state carries its step count, so the learning-rate decay
      lands on the same step as in one whole training.

    Returns ``(init, chunk, layout)``, `layout` unflattening a flat parameter vector once `init`
    has been traced (`jax.eval_shape` of it will do).
    """
    parts = _Parts(arch, schedule, data, options)

    def init_program(init_keys, extra):
        return parts.over_seeds(lambda key, extra: parts.init(key, extra), (init_keys,), (extra,))

    def one_seed(state, batches, step_keys, train_x, train_y, test_x, test_y, test_mask, extra,
                 last):
        state, epoch_loss = parts.train_epochs(state, batches, step_keys, train_x, train_y, extra)
        params, batch_stats, _ = state
        accuracy = jax.lax.cond(
            last, lambda: parts.evaluate(params, batch_stats, test_x, test_y, test_mask),
            lambda: jnp.zeros((), jnp.float32))
        return state, epoch_loss, accuracy

    def chunk_program(state, batches, step_keys, train_x, train_y, test_x, test_y, test_mask,
                      extra, last):
        TRACE_COUNTS["chunk_program"] += 1
        return parts.over_seeds(one_seed, (state, batches, step_keys),
                                (train_x, train_y, test_x, test_y, test_mask, extra, last))

    return init_program, chunk_program, parts.unflatten
