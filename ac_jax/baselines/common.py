"""Shared pieces of the baselines: the result record, training through `ChildTrainer`, evaluation.

Every network a baseline trains to a schedule (the teacher, search candidates, retraining with
the final schedule, distillation students, the fine-tuning of a pruned network) trains through
`ChildTrainer` (ac_jax.child.trainer: seeds vmapped, one program per architecture), so all
methods share one training procedure. Two algorithm-specific inner loops remain, built on the
step helpers here: the pruning rounds (a few gated minibatches between removals, the gates'
gradients being the Taylor criterion) and the FitNets hint stage (an L2 loss on an intermediate
layer). They use Adam and the trainer's on-device preprocessing, so they see the same data
pipeline.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ac_jax.arch.spec import Arch, LayerType
from ac_jax.arch.json_spec import to_json
from ac_jax.archset.store import layer_rows
from ac_jax.child import onednn
from ac_jax.child.model import ChildNet
from ac_jax.child.trainer import (
    ChildTrainer,
    DeviceData,
    TrainOptions,
    TrainSchedule,
)
from ac_jax.data.device import preprocess

Variables = dict[str, Any]  # {"params": ..., "batch_stats": ...}

# Keys of the loops here use XLA's RngBitGenerator instead of threefry: on XLA:CPU a program with
# threefry compiles seconds slower (measured: tinycnn init 5.1 s vs 1.2 s, its training step
# 3.2 s vs 2.4 s), and every architecture is compiled anew. Its streams are reproducible on one
# backend and JAX version, which is what a baseline run needs.
PRNG_IMPL = "rbg"


def prng_key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl=PRNG_IMPL)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BaselineResult:
    """One row of the comparison table.

    `accuracy` is the test accuracy of the returned network as trained by the method itself
    (for the search methods: the winner retrained with the final schedule, if that was asked
    for; else its search-proxy accuracy, which is also kept in `search_accuracy`).
    `archs_evaluated` counts the distinct architectures the method trained or fine-tuned.
    `wall_seconds` excludes training the shared teacher (reported in its own row).
    """

    method: str
    accuracy: float | None
    num_params: int
    arch: Arch | None
    wall_seconds: float
    archs_evaluated: int
    search_accuracy: float | None = None
    within_budget: bool = True
    notes: str = ""
    details: dict = dataclasses.field(default_factory=dict)
    # Trained weights of `arch` where the method produced them (pruning, distillation); not
    # serialised.
    variables: Variables | None = dataclasses.field(default=None, repr=False)

    def to_dict(self, teacher_params: int | None = None) -> dict:
        ratio = None
        if teacher_params and self.num_params:
            ratio = teacher_params / self.num_params
        return {
            "method": self.method,
            "accuracy": self.accuracy,
            "num_params": self.num_params,
            "compression": ratio,
            "wall_seconds": self.wall_seconds,
            "archs_evaluated": self.archs_evaluated,
            "search_accuracy": self.search_accuracy,
            "within_budget": self.within_budget,
            "notes": self.notes,
            "spec": to_json(self.arch) if self.arch is not None else None,
            "details": _jsonable(self.details),
        }


def _jsonable(value):
    """Best-effort conversion of numpy scalars/arrays and tuples for json.dumps."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Arch):
        return layer_rows(value)
    return value


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedNet:
    """A trained network: its architecture, Flax variables and test accuracy."""

    arch: Arch
    variables: Variables
    accuracy: float
    train_seconds: float
    diverged: bool = False


# --------------------------------------------------------------------------------------------
# Model, data order, steps
# --------------------------------------------------------------------------------------------


def loop_conv_impl(schedule: TrainSchedule) -> str:
    """The convolution implementation for the per-step loops here.

    On CPU with the oneDNN convolution built, "auto" stays "auto" (oneDNN for layers with 16 or
    more input channels, im2col for the input layer). Without it, these loops (single jitted
    steps outside any `lax.scan`) use XLA's own convolution, the fastest of the XLA paths there
    (CONV-7, batch 64, 2 cores: 0.54 s/step against 0.76 s for im2col_grad and 0.86 s for
    im2col); inside `lax.scan` its weight gradient is a naive loop (see ac_jax.child.conv).
    """
    if schedule.conv_impl != "auto":
        return schedule.conv_impl
    on_cpu = jax.default_backend() == "cpu"
    return "auto" if on_cpu and onednn.available() else "xla"


def child_model(arch: Arch, schedule: TrainSchedule) -> ChildNet:
    return ChildNet(arch, jnp.dtype(schedule.compute_dtype), loop_conv_impl(schedule))


def init_variables(model: ChildNet, seed: int) -> Variables:
    """Fresh Flax variables; jitted, because op-by-op `init` of a ChildNet takes seconds."""
    dummy = jnp.zeros((1, *model.arch.input_shape), jnp.float32)
    return jax.jit(lambda key: model.init({"params": key}, dummy, train=False))(prng_key(seed))


def init_state(model: ChildNet, tx: optax.GradientTransformation, seed: int,
               variables: Variables | None = None):
    """(params, batch_stats, opt_state), from `variables` or a fresh init with `seed`."""
    if variables is None:
        variables = init_variables(model, seed)
    params = variables["params"]
    return params, variables.get("batch_stats", {}), tx.init(params)


def state_variables(state) -> Variables:
    params, batch_stats, _ = state
    return {"params": params, "batch_stats": batch_stats}


class BatchStream:
    """Endless minibatch indices: a new permutation each epoch, the last partial batch dropped
    (static shapes), deterministic in `seed`."""

    def __init__(self, num_train: int, batch_size: int, seed: int):
        if num_train < batch_size:
            raise ValueError(f"{num_train} training images, fewer than one batch of {batch_size}")
        self.num_train = num_train
        self.batch_size = batch_size
        self.steps_per_epoch = num_train // batch_size
        self._rng = np.random.default_rng([seed, 0xBA5E])
        self._batches: list[np.ndarray] = []

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if not self._batches:
            perm = self._rng.permutation(self.num_train).astype(np.int32)
            usable = perm[: self.steps_per_epoch * self.batch_size]
            self._batches = list(usable.reshape(self.steps_per_epoch, self.batch_size))[::-1]
        return self._batches.pop()


# loss_fn(params, batch_stats, extra, x, y, dropout_key) -> (loss, (new_batch_stats, aux))
LossFn = Callable[..., tuple[jax.Array, tuple[Any, Any]]]


def minibatch(key, idx, train_x, train_y, augment: bool):
    """``(x, y, dropout_key)``: the preprocessed (augmented) minibatch `idx` of a training step."""
    aug_key, dropout_key = jax.random.split(key)
    return preprocess(aug_key, train_x[idx], augment), train_y[idx], dropout_key


def make_step(loss_fn: LossFn, tx: optax.GradientTransformation, augment: bool):
    """A jitted training step ``(state, extra, idx, key, train_x, train_y) -> (state, loss, aux)``.

    `extra` is whatever the loss needs besides the student (teacher variables, adapter...); it is
    an argument, not a closed-over constant, so it is not baked into the executable.
    """

    @jax.jit
    def step(state, extra, idx, key, train_x, train_y):
        params, batch_stats, opt_state = state
        x, y, dropout_key = minibatch(key, idx, train_x, train_y, augment)
        (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, extra, x, y, dropout_key
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss, aux

    return step


def run_steps(step, state, extra, data: DeviceData, stream: BatchStream, num_steps: int,
              key: jax.Array, *, start: int = 0, progress: bool = False, desc: str = "train",
              on_aux: Callable[[Any], None] | None = None):
    """Runs `num_steps` steps; returns (state, losses as a numpy array).

    Keys are ``fold_in(key, start + i)`` so that a run split into several calls (pruning rounds)
    draws the same keys as one long call.
    """
    losses = []
    steps = range(num_steps)
    bar = tqdm(steps, desc=desc, leave=False, disable=not progress, mininterval=1.0)
    for i in bar:
        idx = next(stream)
        state, loss, aux = step(state, extra, idx, jax.random.fold_in(key, start + i),
                                data.train_x, data.train_y)
        losses.append(loss)
        if on_aux is not None:
            on_aux(aux)
    return state, np.asarray(jax.device_get(losses), np.float64)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def make_evaluator(apply_fn: Callable, eval_batch: int):
    """Jitted ``(variables, extra, test_x, test_y, test_mask) -> number correct``.

    `apply_fn(variables, extra, x) -> logits` in inference mode; the (padded) test set is walked
    in `lax.scan` chunks of `eval_batch` images, as `ChildTrainer` does.
    """

    @jax.jit
    def count(variables, extra, test_x, test_y, test_mask):
        steps = test_x.shape[0] // eval_batch

        def body(correct, i):
            x = jax.lax.dynamic_slice_in_dim(test_x, i * eval_batch, eval_batch)
            y = jax.lax.dynamic_slice_in_dim(test_y, i * eval_batch, eval_batch)
            m = jax.lax.dynamic_slice_in_dim(test_mask, i * eval_batch, eval_batch)
            logits = apply_fn(variables, extra, preprocess(None, x, False))
            return correct + ((jnp.argmax(logits, -1) == y) * m).sum(), None

        correct, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), jnp.arange(steps))
        return correct

    return count


def eval_batch_size(data: DeviceData, schedule: TrainSchedule) -> int:
    """An evaluation batch that divides the padded test set.

    `to_device` pads the test set to a multiple of its schedule's eval batch; the gcd keeps the
    scan exact even if `schedule` is not the one the data was put on the device with.
    """
    return math.gcd(int(data.test_x.shape[0]), schedule.eval_batch_size)


@functools.lru_cache(maxsize=64)
def _plain_evaluator(arch: Arch, dtype: str, impl: str, eval_batch: int):
    model = ChildNet(arch, jnp.dtype(dtype), impl)
    return make_evaluator(lambda v, extra, x: model.apply(v, x, train=False), eval_batch)


def evaluate(arch: Arch, variables: Variables, data: DeviceData, schedule: TrainSchedule) -> float:
    """Test accuracy of a ChildNet with `variables` (inference mode, running BN statistics)."""
    run = _plain_evaluator(arch, schedule.compute_dtype, loop_conv_impl(schedule),
                           eval_batch_size(data, schedule))
    correct = run(variables, None, data.test_x, data.test_y, data.test_mask)
    return float(correct) / data.num_test


def train_network(arch: Arch, data: DeviceData, schedule: TrainSchedule, seed: int = 0, *,
                  variables: Variables | None = None, progress: bool = False,
                  desc: str | None = None) -> TrainedNet:
    """Trains one network with cross-entropy for `schedule.epochs` epochs (`ChildTrainer`, one
    seed; from `variables` when given) and keeps its weights; accuracy on `data`'s eval split."""
    del progress, desc  # one compiled program: no per-step progress to show
    options = TrainOptions(warm_start=variables is not None, keep_weights=True)
    result = ChildTrainer(data, schedule, 1, options).train(arch, [seed], init=variables)
    return trained_net(arch, result)


def trained_net(arch: Arch, result) -> TrainedNet:
    """The first seed of a `TrainResult` from a weight-keeping trainer, as a `TrainedNet`."""
    if result.variables is None:
        if result.ok:
            raise ValueError("the trainer did not keep weights (TrainOptions.keep_weights)")
        raise RuntimeError(f"training failed ({result.status}): {result.reason}")
    diverged = result.status == "diverged"
    accuracy = float("nan") if diverged else float(result.seed_accuracies[0])
    return TrainedNet(arch, result.variables[0], accuracy, result.train_seconds, diverged)


def retrain(arch: Arch, data: DeviceData, schedule: TrainSchedule, seeds=(0,), *,
            progress: bool = False, desc: str | None = None) -> tuple[float, list[float]]:
    """Mean and per-seed accuracy (on `data`'s eval split) of `arch` trained from scratch with
    `schedule`, all seeds in one `ChildTrainer` program.

    Used to put every method's architecture through the same final training, so the table
    compares architectures, not training budgets. A diverged seed counts as NaN.
    """
    del progress, desc
    result = ChildTrainer(data, schedule, len(seeds)).train(arch, list(seeds))
    if result.status not in ("ok", "diverged"):
        raise RuntimeError(f"retraining failed ({result.status}): {result.reason}")
    accs = result.finite_accuracies
    return float(np.mean(accs)), accs


# --------------------------------------------------------------------------------------------
# Architectures under a parameter budget
# --------------------------------------------------------------------------------------------


def _resizable(arch: Arch) -> list[int]:
    """Indices of Conv and hidden Linear layers (the final classifier keeps `num_classes`)."""
    last = len(arch.layers) - 1
    return [i for i, layer in enumerate(arch.layers)
            if layer.t == LayerType.CONV or (layer.t == LayerType.LINEAR and i != last)]


def scale_widths(arch: Arch, factor: float) -> Arch:
    """`arch` with every Conv and hidden Linear width multiplied by `factor` (at least 1)."""
    layers = list(arch.layers)
    for i in _resizable(arch):
        layers[i] = layers[i]._replace(o=max(1, int(round(layers[i].o * factor))))
    return arch.replace_layers(layers)


def width_scaled_to(arch: Arch, target_params: int) -> Arch:
    """The widest uniformly thinned `arch` with at most `target_params` parameters.

    A FitNets-style student of the teacher ("thin" version of the same layer sequence). The
    parameter count is non-decreasing in the factor, so bisection finds the largest one.
    """
    if arch.num_params <= target_params:
        return arch
    lo, hi = 0.0, 1.0
    if scale_widths(arch, lo).num_params > target_params:
        raise ValueError(
            f"even with every width at 1 the network has {scale_widths(arch, lo).num_params:,} "
            f"parameters, more than the target {target_params:,}"
        )
    for _ in range(40):
        mid = (lo + hi) / 2
        if scale_widths(arch, mid).num_params <= target_params:
            lo = mid
        else:
            hi = mid
    return scale_widths(arch, lo)


def module_names(arch: Arch) -> list[str | None]:
    """The Flax submodule name ChildNet gives each layer (None for parameterless layers).

    ChildNet creates its submodules inline in `@nn.compact`, so Flax names them by class and
    creation order: Conv_0, Conv_1, ..., BatchNorm_0, ..., Dense_0, ... .
    """
    counters = {LayerType.CONV: "Conv", LayerType.BATCHNORM: "BatchNorm", LayerType.LINEAR: "Dense"}
    seen: dict[str, int] = {}
    names: list[str | None] = []
    for layer in arch.layers:
        prefix = counters.get(LayerType(layer.t))
        if prefix is None:
            names.append(None)
            continue
        names.append(f"{prefix}_{seen.get(prefix, 0)}")
        seen[prefix] = seen.get(prefix, 0) + 1
    return names
