"""Trains all seeds of one architecture together: one compiled program, one host sync.

Seeds are a `jax.vmap` axis over parameters, optimizer state, batch statistics, dropout keys and
data order. Epochs and minibatches run inside `lax.scan`, the dataset stays on the device as uint8
and is normalised (and, for CIFAR, augmented) inside the step. The program returns per-seed test
accuracy and per-epoch mean training loss; a non-finite loss marks a seed as diverged.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ac_jax.arch import shapes
from ac_jax.arch.spec import Arch
from ac_jax.child.model import ChildNet
from ac_jax.data.device import preprocess


# How often each traced function was traced (Python side effect at trace time); tests use it to
# check that the whole training is one program whose step is traced once, not per epoch/step.
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class TrainSchedule:
    """How a child network is trained (paper Section 5.2.1 and our proxies).

    The learning rate is divided by `lr_decay_factor` at each epoch in `lr_decay_epochs`. The last
    incomplete minibatch of an epoch is dropped (static shapes). `train_subset`/`test_subset` take
    a fixed random subset of the data (None: all of it).
    """

    epochs: int
    batch_size: int
    lr: float
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_factor: float = 10.0
    optimizer: str = "adam"
    train_subset: int | None = None
    test_subset: int | None = None
    eval_batch_size: int = 500
    compute_dtype: str = "float32"  # "bfloat16" trades exactness for speed on GPUs
    conv_impl: str = "auto"  # see ac_jax.child.conv.conv2d
    seed_axis: str = "vmap"  # "vmap": seeds batched; "map": seeds one after another in-program


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceData:
    """A dataset resident on the device (uint8 images, int32 labels); test set padded."""

    train_x: jax.Array
    train_y: jax.Array
    test_x: jax.Array  # padded to a multiple of the eval batch size
    test_y: jax.Array
    test_mask: jax.Array  # 1 for real test images, 0 for padding
    num_test: int
    augment: bool
    input_shape: tuple[int, int, int]
    num_classes: int
    evaluation: str = "test"  # what the test arrays hold (ac_jax.data.protocol)

    @property
    def signature(self) -> tuple:
        return (
            self.train_x.shape,
            self.test_x.shape,
            self.augment,
            self.input_shape,
            self.num_classes,
        )


def to_device(dataset, schedule: TrainSchedule, seed: int = 0) -> DeviceData:
    """Puts a `ac_jax.data.Dataset` on the default device, subset per `schedule`."""
    if schedule.train_subset is not None or schedule.test_subset is not None:
        dataset = dataset.subset(schedule.train_subset, schedule.test_subset, seed=seed)
    eval_batch = min(schedule.eval_batch_size, len(dataset.test_y))
    padded = -(-len(dataset.test_y) // eval_batch) * eval_batch
    pad = padded - len(dataset.test_y)
    test_x = np.concatenate([dataset.test_x, np.zeros((pad, *dataset.test_x.shape[1:]), np.uint8)])
    test_y = np.concatenate([dataset.test_y, np.zeros(pad, np.int32)])
    mask = np.concatenate([np.ones(len(dataset.test_y), np.float32), np.zeros(pad, np.float32)])
    if len(dataset.train_y) < schedule.batch_size:
        raise ValueError(
            f"training set has {len(dataset.train_y)} images, fewer than one batch of "
            f"{schedule.batch_size}"
        )
    return DeviceData(
        train_x=jnp.asarray(dataset.train_x, jnp.uint8),
        train_y=jnp.asarray(dataset.train_y, jnp.int32),
        test_x=jnp.asarray(test_x, jnp.uint8),
        test_y=jnp.asarray(test_y, jnp.int32),
        test_mask=jnp.asarray(mask),
        num_test=len(dataset.test_y),
        augment=bool(dataset.augment),
        input_shape=tuple(dataset.input_shape),
        num_classes=int(dataset.num_classes),
        evaluation=getattr(dataset, "evaluation", "test"),
    )


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
    model = ChildNet(arch, jnp.dtype(schedule.compute_dtype), schedule.conv_impl)
    distill = options.distill
    teacher_model = (None if distill is None else
                     ChildNet(distill.teacher, jnp.dtype(schedule.compute_dtype),
                              schedule.conv_impl))
    num_train = data.train_x.shape[0]
    steps = num_train // schedule.batch_size
    eval_batch = min(schedule.eval_batch_size, data.test_x.shape[0])
    eval_steps = data.test_x.shape[0] // eval_batch
    tx = make_optimizer(schedule, steps)
    augment = data.augment

    # The parameters live as one flat vector, so that the optimizer's update is one fused
    # elementwise pass instead of one per tensor (a 7-conv net has 30 tensors); `unflatten` gives
    # the model its tree. Same values: slicing and concatenation move numbers without arithmetic.
    layout = {}  # ravel_pytree's inverse, recorded while `init` is traced

    def unflatten(flat):
        return layout["unravel"](flat)

    def init(key, extra):
        if options.warm_start:
            variables = extra["init"]
        else:
            dummy = jnp.zeros((1, *arch.input_shape), jnp.float32)
            variables = model.init({"params": key}, dummy, train=False)
        params, layout["unravel"] = ravel_pytree(variables["params"])
        return params, variables.get("batch_stats", {}), tx.init(params)

    def loss_of(logits, x, y, extra):
        if distill is None:
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        teacher_logits = jax.lax.stop_gradient(teacher_model.apply(extra["teacher"], x, train=False))
        return kd_loss(logits, teacher_logits, y, distill.temperature, distill.alpha)

    def train_step(state, batch_idx, key, train_x, train_y, extra):
        TRACE_COUNTS["train_step"] += 1
        params, batch_stats, opt_state = state
        aug_key, dropout_key = jax.random.split(key)
        x = preprocess(aug_key, train_x[batch_idx], augment)
        y = train_y[batch_idx]

        def loss_fn(flat):
            logits, updates = model.apply(
                {"params": unflatten(flat), "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            return loss_of(logits, x, y, extra), updates.get("batch_stats", {})

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    def evaluate(params, batch_stats, test_x, test_y, test_mask):
        def body(correct, i):
            x = jax.lax.dynamic_slice_in_dim(test_x, i * eval_batch, eval_batch)
            y = jax.lax.dynamic_slice_in_dim(test_y, i * eval_batch, eval_batch)
            m = jax.lax.dynamic_slice_in_dim(test_mask, i * eval_batch, eval_batch)
            variables = {"params": unflatten(params), "batch_stats": batch_stats}
            logits = model.apply(variables, preprocess(None, x, False), train=False)
            hits = (jnp.argmax(logits, -1) == y).astype(jnp.float32) * m
            return correct + hits.sum(), None

        correct, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), jnp.arange(eval_steps))
        return correct / data.num_test

    def one_seed(init_key, batches, step_keys, train_x, train_y, test_x, test_y, test_mask,
                 extra):
        state = init(init_key, extra)

        def epoch(state, xs):
            def step(state, xs):
                return train_step(state, xs[0], xs[1], train_x, train_y, extra)

            state, losses = jax.lax.scan(step, state, xs)
            return state, losses.mean()

        state, epoch_loss = jax.lax.scan(epoch, state, (batches, step_keys))
        params, batch_stats, _ = state
        accuracy = evaluate(params, batch_stats, test_x, test_y, test_mask)
        if options.keep_weights:
            return accuracy, epoch_loss, params, batch_stats
        return accuracy, epoch_loss

    def program(init_keys, batches, step_keys, train_x, train_y, test_x, test_y, test_mask,
                extra):
        TRACE_COUNTS["program"] += 1
        data_args = (train_x, train_y, test_x, test_y, test_mask, extra)
        if schedule.seed_axis == "vmap":
            return jax.vmap(lambda *s: one_seed(*s, *data_args))(init_keys, batches, step_keys)
        if schedule.seed_axis == "map":
            return jax.lax.map(lambda s: one_seed(*s, *data_args), (init_keys, batches, step_keys))
        raise ValueError(f"unknown seed_axis {schedule.seed_axis!r}; use 'vmap' or 'map'")

    program.layout = unflatten
    return program


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of training one architecture with several seeds."""

    # "ok", "diverged", "oom", or "rejected" (not trained: over the pooling cap, see archset).
    # Archsets written before 2026-12 may also hold "error" (any exception was recorded then).
    status: str
    reason: str
    seed_accuracies: tuple[float, ...]
    epoch_losses: tuple[tuple[float, ...], ...]  # [seed][epoch]
    compile_seconds: float
    train_seconds: float
    # Per seed, the trained Flax variables (host arrays), when the trainer keeps weights.
    variables: tuple | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def finite_accuracies(self) -> list[float]:
        """Per seed, its accuracy, or NaN where its training loss became non-finite (its weights
        are NaN: the "accuracy" is that of a constant prediction)."""
        return [float(a) if np.isfinite(losses).all() else float("nan")
                for a, losses in zip(self.seed_accuracies, self.epoch_losses)]

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(self.seed_accuracies)) if self.seed_accuracies else float("nan")

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# XLA:CPU's LLVM optimisation level for the training programs. Level 1 instead of the default
# (LLVM -O2 with the default passes) cut compile CPU time 2.3x over the first 12 architectures of
# the fashion_mnist `cpu` archset plan (330 -> 142 CPU-s) and CONV-7's compile 16 -> 9 s, while
# their training ran as fast (CONV-7 11.7-17.9 s vs 11.7-13.0 s, 2 seeds x 2,048 images; 2-core
# CPU, 2026-12-01): the heavy work is in oneDNN and matmul library calls, not in generated code.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def compiler_options() -> dict:
    """Options for compiling a child-training program on the default backend."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


def _seed_keys(seeds: Sequence[int]) -> jax.Array:
    return jnp.stack([jax.random.key_data(jax.random.key(int(s))) for s in seeds])


# What XLA and the oneDNN kernels say when memory runs out (compile or run time).
_OUT_OF_MEMORY_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def classify_failure(err: BaseException) -> tuple[str, str] | None:
    """``(status, reason)`` when `err` is a failure of the *network* that is worth recording
    (the device ran out of memory), else None: anything else is a bug or a broken install and
    must raise, never become a record (a record is data the surrogate learns from).

    Divergence is not an exception: a non-finite loss is read off the training's own output.
    """
    text = str(err)
    first_line = text.splitlines()[0][:300] if text else type(err).__name__
    if isinstance(err, MemoryError):
        return "oom", f"out of memory (host): {first_line}"
    if isinstance(err, jax.errors.JaxRuntimeError) and any(m in text for m in _OUT_OF_MEMORY_MARKERS):
        return "oom", "out of memory: " + first_line
    return None


class ChildTrainer:
    """Compiles (and caches) one program per architecture and trains seeds together.

    The one trainer of the project: archset records, every search method's candidates, the
    final schedule's retraining, distillation (`TrainOptions.distill`, with `teacher_variables`)
    and the fine-tuning of a pruned network (`warm_start`) all train through it.
    `compile` may be called from background threads to overlap XLA compilation of the next
    architectures with training of the current one.
    """

    def __init__(self, data: DeviceData, schedule: TrainSchedule, num_seeds: int,
                 options: TrainOptions = TrainOptions(), teacher_variables=None):
        if (options.distill is None) != (teacher_variables is None):
            raise ValueError("distillation needs the teacher's variables, and only it takes them")
        self.data = data
        self.schedule = schedule
        self.num_seeds = num_seeds
        self.options = options
        self.teacher_variables = teacher_variables
        self._compiled: dict[Arch, tuple[object, float]] = {}
        self._lock = threading.Lock()
        self._seed_streams = jax.jit(
            lambda keys: seed_streams(keys, schedule, int(data.train_x.shape[0])))

    def _extra(self, arch: Arch | None, init):
        extra = {}
        if self.teacher_variables is not None:
            extra["teacher"] = self.teacher_variables
        if self.options.warm_start:
            if init is None:  # compiling ahead: only the shapes matter
                model = ChildNet(arch, jnp.dtype(self.schedule.compute_dtype))
                dummy = jnp.zeros((1, *arch.input_shape), jnp.float32)
                init = jax.eval_shape(
                    lambda k: model.init({"params": k}, dummy, train=False), jax.random.key(0))
            # One tree structure whether or not the caller's variables carry (empty) batch
            # statistics: the compiled program checks the structure exactly.
            extra["init"] = {"params": init["params"], "batch_stats": init.get("batch_stats", {})}
        return extra

    def _args(self, seeds: Sequence[int], arch: Arch | None = None, init=None):
        """The training program's arguments for these seeds (`build_program`)."""
        return (*self._seed_streams(_seed_keys(seeds)), *self._data_args(),
                self._extra(arch, init))

    def _data_args(self):
        d = self.data
        return (d.train_x, d.train_y, d.test_x, d.test_y, d.test_mask)

    def compile(self, arch: Arch):
        """AOT-compiles the program for `arch` (cached); returns (executable, seconds)."""
        with self._lock:
            if arch in self._compiled:
                return self._compiled[arch]
        start = time.perf_counter()
        program = build_program(arch, self.schedule, self.data, self.options)
        # Lowering needs only shapes: the seed streams' shapes, without running their program.
        streams = jax.eval_shape(self._seed_streams, _seed_keys(range(self.num_seeds)))
        args = (*streams, *self._data_args(), self._extra(arch, None))
        executable = jax.jit(program).lower(*args).compile(compiler_options())
        executable.layout = program.layout  # set while tracing: unflattens the kept weights
        entry = (executable, time.perf_counter() - start)
        with self._lock:
            self._compiled[arch] = entry
        return entry

    def forget(self, arch: Arch) -> None:
        with self._lock:
            self._compiled.pop(arch, None)

    def train(self, arch: Arch, seeds: Sequence[int], init=None) -> TrainResult:
        """Trains `arch` once per seed (from `init`'s variables with `warm_start`).

        Failures of the network are returned as a result: a non-finite loss ("diverged") and
        running out of memory ("oom", `classify_failure`). An invalid architecture raises
        `shapes.InvalidArchError` (callers train only valid ones) and any other exception
        propagates: a bug must stop the run, not be stored as a training outcome.
        """
        if len(seeds) != self.num_seeds:
            raise ValueError(f"trainer was built for {self.num_seeds} seeds, got {len(seeds)}")
        if self.options.warm_start and init is None:
            raise ValueError("a warm-start trainer needs the variables to start from (init=)")
        shapes.validate(arch)
        try:
            executable, compile_seconds = self.compile(arch)
            start = time.perf_counter()
            out = executable(*self._args(seeds, arch, init))
            out = jax.device_get(out)  # the one host sync
            train_seconds = time.perf_counter() - start
        except (jax.errors.JaxRuntimeError, MemoryError) as err:
            failure = classify_failure(err)
            if failure is None:
                raise
            return TrainResult(*failure, (), (), 0.0, 0.0)
        finally:
            self.forget(arch)
        accuracy, epoch_loss = out[:2]
        variables = None
        if self.options.keep_weights:
            flat, batch_stats = out[2:]
            variables = tuple(
                {"params": jax.device_get(executable.layout(flat[i])),
                 "batch_stats": jax.tree_util.tree_map(lambda v, i=i: v[i], batch_stats)}
                for i in range(len(seeds)))
        finite = np.isfinite(epoch_loss).all(axis=1)
        status, reason = "ok", ""
        if not finite.all():
            bad = [int(s) for s, f in zip(seeds, finite) if not f]
            first_epoch = int(np.argmin(np.isfinite(epoch_loss[~finite][0])))
            status = "diverged"
            reason = f"non-finite training loss for seeds {bad} (first at epoch {first_epoch})"
        return TrainResult(
            status=status,
            reason=reason,
            seed_accuracies=tuple(float(a) for a in accuracy),
            epoch_losses=tuple(tuple(float(v) for v in row) for row in epoch_loss),
            compile_seconds=compile_seconds,
            train_seconds=train_seconds,
            variables=variables,
        )
