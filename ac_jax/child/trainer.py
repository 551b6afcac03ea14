"""Trains all seeds of one architecture together: one compiled program, one host sync.

Seeds are a `jax.vmap` axis over parameters, optimizer state, batch statistics, dropout keys and
data order. Epochs and minibatches run inside `lax.scan`, the dataset stays on the device as uint8
and is normalised (and, for CIFAR, augmented) inside the step. The program returns per-seed test
accuracy and per-epoch mean training loss; a non-finite loss marks a seed as diverged.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ac_jax.arch import shapes
from ac_jax.arch.spec import Arch
from ac_jax.child.model import init_variables
from ac_jax.child import resume
from ac_jax.child.program import (  # noqa: F401 (re-exported: the training API)
    TRACE_COUNTS,
    Distillation,
    TrainOptions,
    build_chunk_programs,
    build_program,
    kd_loss,
    make_optimizer,
    seed_streams,
)




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


def stretch_summary(progress, epochs: int) -> str:
    """How a resumable training stands, for its log line after a stretch: seconds so far, the
    mean pace, the time to go at that pace (a training of hours is watched through these lines)
    and the last epoch's training loss over the seeds (a diverging network shows here first)."""
    pace = progress.train_seconds / progress.epochs_done
    left = pace * (epochs - progress.epochs_done)
    to_go = f"~{left / 3600:.1f} h to go" if left >= 3600 else f"~{left / 60:.0f} min to go"
    loss = float(np.mean(progress.epoch_losses[:, -1]))
    return (f"{progress.train_seconds:,.0f} s of training, {pace:,.0f} s/epoch"
            + (f", {to_go}" if left > 0 else "") + f"; loss {loss:.4f}")


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
                dtype = jnp.dtype(self.schedule.compute_dtype)
                init = jax.eval_shape(lambda k: init_variables(arch, k, dtype),
                                      jax.random.key(0))
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

    def _check_call(self, arch: Arch, seeds: Sequence[int], init) -> None:
        """What every training call needs: this trainer's seed count, the variables a warm
        start starts from, and a valid architecture (`shapes.InvalidArchError` otherwise)."""
        if len(seeds) != self.num_seeds:
            raise ValueError(f"trainer was built for {self.num_seeds} seeds, got {len(seeds)}")
        if self.options.warm_start and init is None:
            raise ValueError("a warm-start trainer needs the variables to start from (init=)")
        shapes.validate(arch)

    def train(self, arch: Arch, seeds: Sequence[int], init=None) -> TrainResult:
        """Trains `arch` once per seed (from `init`'s variables with `warm_start`).

        Failures of the network are returned as a result: a non-finite loss ("diverged") and
        running out of memory ("oom", `classify_failure`). An invalid architecture raises
        `shapes.InvalidArchError` (callers train only valid ones) and any other exception
        propagates: a bug must stop the run, not be stored as a training outcome.
        """
        self._check_call(arch, seeds, init)
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
        kept = out[2:] if self.options.keep_weights else None
        return self._result(out[0], out[1], seeds, compile_seconds, train_seconds, kept,
                            executable.layout)

    def train_resumable(self, arch: Arch, seeds: Sequence[int], checkpoint: str | Path,
                        chunk_epochs: int, init=None, log=print,
                        remove_checkpoint: bool = True) -> TrainResult:
        """`train`, in stretches of `chunk_epochs` epochs with the state checkpointed to
        `checkpoint` after each (`ac_jax.child.resume`): rerun after a kill, it continues from
        the last finished stretch. The same seeds' data order, dropout keys and learning-rate
        steps as one whole training, so the same result up to float rounding; costs a host copy
        of the state per stretch and one more compile when the last stretch is shorter.

        `log` gets a line per stretch (and one when it resumes or sets a checkpoint aside).
        `remove_checkpoint=False` leaves the file for the caller to delete once it has stored
        the result (`resume.discard`), so that a kill in between costs only the last stretch.
        """
        self._check_call(arch, seeds, init)
        if chunk_epochs < 1:
            raise ValueError(f"chunk_epochs must be at least 1, got {chunk_epochs}")
        checkpoint = Path(checkpoint)
        epochs = self.schedule.epochs
        init_program, chunk_program, layout = build_chunk_programs(
            arch, self.schedule, self.data, self.options)
        init_keys, batches, step_keys = self._seed_streams(_seed_keys(seeds))
        extra = self._extra(arch, init)
        ident = resume.identity(arch, self.schedule, seeds, self.data, self.options, extra)
        state_shape = jax.eval_shape(init_program, init_keys, extra)
        progress = resume.load(checkpoint, ident, state_shape, log)
        if progress is not None:
            log(f"resuming from {checkpoint.name} after epoch {progress.epochs_done} of {epochs}")
        compile_seconds, executables = 0.0, {}

        def compiled(length: int):
            nonlocal compile_seconds
            if length not in executables:
                start = time.perf_counter()
                args = (state_shape, batches[:, :length], step_keys[:, :length],
                        *self._data_args(), extra, jnp.bool_(True))
                shaped = jax.tree_util.tree_map(
                    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
                executables[length] = jax.jit(chunk_program).lower(*shaped).compile(
                    compiler_options())
                compile_seconds += time.perf_counter() - start
            return executables[length]

        try:
            if progress is None:
                progress = resume.Progress(jax.jit(init_program)(init_keys, extra), 0,
                                           np.zeros((len(seeds), 0), np.float32), 0.0)
            accuracy = None
            while progress.epochs_done < epochs:
                done = progress.epochs_done
                length = min(chunk_epochs, epochs - done)
                last = done + length == epochs
                run = compiled(length)
                start = time.perf_counter()
                state, loss, accuracy = run(progress.state, batches[:, done:done + length],
                                            step_keys[:, done:done + length],
                                            *self._data_args(), extra, jnp.bool_(last))
                loss = np.asarray(jax.device_get(loss))  # the stretch's host sync
                progress = resume.Progress(
                    state, done + length, np.concatenate([progress.epoch_losses, loss], axis=1),
                    progress.train_seconds + time.perf_counter() - start)
                if not last:
                    resume.save(checkpoint, ident, progress)
                log(f"epoch {progress.epochs_done}/{epochs} ({stretch_summary(progress, epochs)})")
        except (jax.errors.JaxRuntimeError, MemoryError) as err:
            failure = classify_failure(err)
            # After a finished stretch the program is known to fit: a failure now is the
            # machine's (another process's memory, say), not the network's; the checkpoint stays.
            if failure is None or progress is not None and progress.epochs_done > 0:
                raise
            return TrainResult(*failure, (), (), 0.0, 0.0)
        if accuracy is None:  # a checkpoint at the last epoch is never written
            raise AssertionError("resumable training ended without its evaluating stretch")
        if remove_checkpoint:
            resume.discard(checkpoint)
        params, batch_stats, _ = progress.state
        kept = (params, batch_stats) if self.options.keep_weights else None
        return self._result(jax.device_get(accuracy), progress.epoch_losses, seeds,
                            compile_seconds, progress.train_seconds, kept, layout)

    def _result(self, accuracy, epoch_loss, seeds, compile_seconds, train_seconds, kept,
                layout) -> TrainResult:
        """A finished training's result; `kept`: its (flat params, batch stats) with
        `keep_weights`, unflattened by `layout`."""
        epoch_loss = np.asarray(epoch_loss)
        variables = None
        if kept is not None:
            flat, batch_stats = jax.device_get(kept)
            variables = tuple(
                {"params": jax.device_get(layout(flat[i])),
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
