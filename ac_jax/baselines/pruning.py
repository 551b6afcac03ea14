"""Filter pruning of a trained teacher (Molchanov et al. 2017; the paper's Table 2 "Pruning" row).

Loop (Molchanov et al., "Pruning convolutional neural networks for resource efficient
inference"): fine-tune a few minibatches, rank the remaining filters of every Conv, remove the
lowest-ranked ones, repeat until the pruned network has at most `target_params` parameters; then
cut the weights down to the pruned architecture and fine-tune it a little longer.

Criteria:
  taylor  |mean over positions of (activation * dLoss/dactivation)| per example, averaged over
          the examples of the fine-tuning minibatches (first-order Taylor estimate of the loss
          change from zeroing the feature map; Molchanov et al. eq. 8);
  l1      the L1 norm of the filter's weights (Li et al. 2017), counting only input channels
          that are still alive.
Both are L2-normalised within each layer before the global ranking (Molchanov et al. Sec. 2.2:
without it the ranking is dominated by layers with large activations or many weights).

How filters are removed during the loop: every Conv's output channel c gets a *gate* (1 alive, 0
removed) applied right before that channel's consumer (the next Conv, or the first Linear after
the flatten), i.e. after its BatchNorm/ReLU/pooling. A removed channel then contributes nothing
to the rest of the network, which is exactly what deleting the filter, its BatchNorm entries and
the consumer's input weights does (all layers in between are per-channel). So the whole loop
runs on one compiled step of the full teacher (no recompilation per round), the gates' gradients
*are* the Taylor terms, and `slice_variables` turns the gated network into the smaller one with
the same function (tested). The gates are injected with `flax.linen.intercept_methods` around the
consumer's call, so the ChildNet definition is reused unchanged.

Not modelled: the paper's second stop rule (accuracy 1% below the compressor's student), FLOPs
regularisation of the criterion, and pruning Linear neurons (only Conv widths shrink).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ac_jax.arch import shapes
from ac_jax.arch.spec import Arch, LayerType
from ac_jax.baselines.common import (
    BaselineResult,
    BatchStream,
    TrainedNet,
    Variables,
    child_model,
    evaluate,
    init_state,
    minibatch,
    module_names,
    prng_key,
    run_steps,
    state_variables,
    train_network,
)
from ac_jax.child.trainer import DeviceData, TrainSchedule

CRITERIA = ("taylor", "l1")


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    criterion: str = "taylor"
    iterations: int = 10  # pruning rounds; the parameter count falls linearly to the target
    finetune_steps: int = 20  # minibatch updates before each round (criterion accumulated here)
    finetune_lr: float = 1e-3  # Adam, fresh state; smaller than training so the teacher is kept
    final_epochs: int = 1  # fine-tuning of the cut-down network after the last round
    repeats: int = 1  # independent runs (seeds); the best is kept (the paper used 5)


@dataclasses.dataclass(frozen=True)
class ConvGroup:
    """A Conv's output channels and every parameter tensor indexed by them."""

    conv: int  # layer index of the Conv
    name: str  # its Flax module name
    batchnorms: tuple[str, ...]  # BatchNorms between it and its consumer (same channels)
    consumer: int  # layer index of the next Conv, or of the first Linear
    consumer_name: str
    consumer_in_shape: tuple[int, int, int]  # (H, W, C) entering the consumer
    producer: int | None  # index (in the group list) of the group feeding this Conv
    width: int


def conv_groups(arch: Arch) -> list[ConvGroup]:
    """One `ConvGroup` per Conv, in order."""
    info = shapes.analyze(arch)
    names = module_names(arch)
    groups: list[ConvGroup] = []
    open_group: dict | None = None
    for index, layer in enumerate(arch.layers):
        if layer.t in (LayerType.CONV, LayerType.LINEAR) and open_group is not None:
            groups.append(ConvGroup(
                consumer=index, consumer_name=names[index],
                consumer_in_shape=tuple(info.layers[index].in_shape), **open_group,
            ))
            open_group = None
            if layer.t == LayerType.LINEAR:
                break  # layers after the flatten have no Conv channels
        if layer.t == LayerType.CONV:
            open_group = dict(
                conv=index, name=names[index], batchnorms=(),
                producer=len(groups) - 1 if groups and groups[-1].consumer == index else None,
                width=layer.o,
            )
        elif layer.t == LayerType.LINEAR:
            break
        elif layer.t == LayerType.BATCHNORM and open_group is not None:
            open_group["batchnorms"] += (names[index],)
    return groups


def pruned_arch(arch: Arch, groups: Sequence[ConvGroup], widths: Sequence[int]) -> Arch:
    """`arch` with each group's Conv narrowed to `widths`."""
    layers = list(arch.layers)
    for g, w in zip(groups, widths, strict=True):
        layers[g.conv] = layers[g.conv]._replace(o=int(w))
    return arch.replace_layers(layers)


# --------------------------------------------------------------------------------------------
# Gates and slicing
# --------------------------------------------------------------------------------------------


def _gating_interceptor(groups: Sequence[ConvGroup], gates: Sequence[jax.Array]):
    """Multiplies each consumer's input channels by its group's gate ([B or 1, C])."""
    by_consumer = {g.consumer_name: (g, gate) for g, gate in zip(groups, gates, strict=True)}

    def interceptor(next_fun, args, kwargs, context):
        hit = by_consumer.get(context.module.name) if context.method_name == "__call__" else None
        if hit is None:
            return next_fun(*args, **kwargs)
        group, gate = hit
        x = args[0]
        gate = gate.astype(x.dtype)
        if x.ndim == 4:  # NHWC into a Conv
            x = x * gate[:, None, None, :]
        else:  # flattened (H, W, C) features into the first Linear: the channel is the last axis
            b = x.shape[0]
            x = (x.reshape(b, -1, group.width) * gate[:, None, :]).reshape(b, -1)
        return next_fun(x, *args[1:], **kwargs)

    return interceptor


def gated_apply(model, variables, x, groups, masks, **kwargs):
    """`model.apply` with the channels whose mask is 0 removed (gated to zero)."""
    gates = [jnp.asarray(m, jnp.float32)[None, :] for m in masks]
    with nn.intercept_methods(_gating_interceptor(groups, gates)):
        return model.apply(variables, x, **kwargs)


def slice_variables(arch: Arch, variables: Variables, keep: Sequence[np.ndarray],
                    groups: Sequence[ConvGroup] | None = None) -> tuple[Arch, Variables]:
    """The pruned architecture and its weights: group i keeps the output channels `keep[i]`.

    Slices the Conv's kernel (output axis) and bias, the BatchNorms up to the consumer (scale,
    bias, running mean and variance), and the consumer's input: a Conv kernel's input-channel
    axis, or the first Linear's rows, which for NHWC are ordered (H, W, C) after the flatten.
    """
    groups = conv_groups(arch) if groups is None else list(groups)
    keep = [np.sort(np.asarray(k, np.int64)) for k in keep]
    if len(keep) != len(groups):
        raise ValueError(f"{len(groups)} Conv layers, but {len(keep)} keep lists")
    for g, k in zip(groups, keep):
        if len(k) < 1 or k.min() < 0 or k.max() >= g.width or len(np.unique(k)) != len(k):
            raise ValueError(f"{g.name}: keep indices must be 1..{g.width} distinct channels")
    params = jax.tree_util.tree_map(np.asarray, dict(variables["params"]))
    params = {name: dict(p) for name, p in params.items()}
    stats = jax.tree_util.tree_map(np.asarray, dict(variables.get("batch_stats", {})))
    stats = {name: dict(s) for name, s in stats.items()}
    for g, k in zip(groups, keep):
        conv = params[g.name]
        conv["kernel"] = conv["kernel"][..., k]
        conv["bias"] = conv["bias"][k]
        for bn in g.batchnorms:
            params[bn] = {key: value[k] for key, value in params[bn].items()}
            if bn in stats:
                stats[bn] = {key: value[k] for key, value in stats[bn].items()}
        consumer = params[g.consumer_name]
        if arch.layers[g.consumer].t == LayerType.CONV:
            consumer["kernel"] = consumer["kernel"][:, :, k, :]
        else:
            h, w, c = g.consumer_in_shape
            kernel = consumer["kernel"].reshape(h, w, c, -1)[:, :, k, :]
            consumer["kernel"] = kernel.reshape(h * w * len(k), -1)
    new_arch = shapes.validate(pruned_arch(arch, groups, [len(k) for k in keep]))
    sliced: Variables = {"params": jax.tree_util.tree_map(jnp.asarray, params)}
    if stats:
        sliced["batch_stats"] = jax.tree_util.tree_map(jnp.asarray, stats)
    return new_arch, sliced


# --------------------------------------------------------------------------------------------
# The pruning loop
# --------------------------------------------------------------------------------------------


def _make_gated_step(model, groups, tx, augment: bool):
    """Jitted ``(state, masks, idx, key, train_x, train_y) -> (state, loss, taylor)``.

    `taylor[i]` is group i's per-channel Taylor criterion on this minibatch. The gates are
    per-example ([B, C]) so that their gradient is the per-example sum over positions of
    activation x gradient; the loss is a batch mean, hence the factor B.
    """
    positions = [g.consumer_in_shape[0] * g.consumer_in_shape[1] for g in groups]

    @jax.jit
    def step(state, masks, idx, key, train_x, train_y):
        params, batch_stats, opt_state = state
        x, y, dropout_key = minibatch(key, idx, train_x, train_y, augment)
        b = x.shape[0]
        gates = tuple(jnp.broadcast_to(m, (b, m.shape[0])) for m in masks)

        def loss_fn(p, gates):
            with nn.intercept_methods(_gating_interceptor(groups, gates)):
                logits, updates = model.apply(
                    {"params": p, "batch_stats": batch_stats}, x, train=True,
                    mutable=["batch_stats"], rngs={"dropout": dropout_key},
                )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates.get("batch_stats", {})

        (loss, batch_stats), (grads, gate_grads) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True
        )(params, gates)
        taylor = tuple(jnp.abs(g * (b / n)).mean(axis=0) for g, n in zip(gate_grads, positions))
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss, taylor

    return step


def _l1_scores(params, groups, alive) -> list[np.ndarray]:
    scores = []
    for g in groups:
        kernel = np.abs(np.asarray(params[g.name]["kernel"]))  # [k, k, c_in, c_out]
        if g.producer is not None:  # dead input channels are not part of the filter any more
            kernel = kernel * alive[g.producer][None, None, :, None]
        scores.append(kernel.sum(axis=(0, 1, 2)))
    return scores


def _normalised(scores: list[np.ndarray], alive: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for s, a in zip(scores, alive):
        s = np.where(a, np.abs(s), 0.0)
        out.append(s / (np.sqrt((s**2).sum()) + 1e-12))
    return out


def _remove(scores, alive, arch, groups, goal: int) -> tuple[int, int]:
    """Removes the lowest-scored alive filters until the parameter count is <= `goal`.

    Each Conv keeps at least one filter. Returns (filters removed, parameter count).
    """
    widths = [int(a.sum()) for a in alive]
    params_now = pruned_arch(arch, groups, widths).num_params
    order = sorted(
        (float(s[c]), gi, c)
        for gi, (s, a) in enumerate(zip(scores, alive))
        for c in np.flatnonzero(a)
    )
    removed = 0
    for _, gi, c in order:
        if params_now <= goal:
            break
        if widths[gi] <= 1:
            continue
        alive[gi][c] = False
        widths[gi] -= 1
        removed += 1
        params_now = pruned_arch(arch, groups, widths).num_params
    return removed, params_now


def prune(teacher: TrainedNet, data: DeviceData, schedule: TrainSchedule, target_params: int,
          cfg: PruningConfig = PruningConfig(), seed: int = 0, *,
          report_data: DeviceData | None = None, progress: bool = False) -> BaselineResult:
    """Prunes `teacher` to at most `target_params` parameters; returns the best of the repeats.

    `schedule` gives the batch size, compute dtype and evaluation batch; fine-tuning uses Adam
    with `cfg.finetune_lr`; the final fine-tune trains through `ChildTrainer` (warm start from the
    sliced weights). The best repeat is chosen on `data`'s evaluation split (the validation split
    under the study's protocol); with `report_data` (the same training images, the test set to
    evaluate on), the result's `accuracy` is the chosen network's accuracy there and the
    choosing accuracy is kept in `search_accuracy`. The result's `arch` is the cut-down
    network; `details` holds each round's widths and parameter counts.
    """
    if cfg.criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {cfg.criterion!r}; use one of {CRITERIA}")
    if cfg.iterations < 1 or cfg.repeats < 1 or cfg.finetune_steps < 0:
        raise ValueError("pruning needs iterations >= 1, repeats >= 1, finetune_steps >= 0")
    start = time.perf_counter()
    arch = teacher.arch
    groups = conv_groups(arch)
    method = f"pruning ({cfg.criterion})"
    if not groups:
        raise ValueError("the teacher has no Conv layer to prune")
    model = child_model(arch, schedule)
    tx = optax.adam(cfg.finetune_lr)
    step = _make_gated_step(model, groups, tx, data.augment)
    final_schedule = dataclasses.replace(
        schedule, epochs=cfg.final_epochs, lr=cfg.finetune_lr, lr_decay_epochs=()
    )
    best: BaselineResult | None = None
    rounds_total = 0
    for repeat in range(cfg.repeats):
        run_seed = seed + repeat
        alive = [np.ones(g.width, bool) for g in groups]
        state = init_state(model, tx, run_seed, teacher.variables)
        stream = BatchStream(data.train_x.shape[0], schedule.batch_size, run_seed)
        key = prng_key(run_seed)
        p0 = arch.num_params
        params_now, history, steps_done = p0, [], 0
        bar = tqdm(range(cfg.iterations), desc=f"{method} run {repeat + 1}", leave=False,
                   disable=not progress)
        for it in bar:
            if params_now <= target_params:
                break
            masks = tuple(jnp.asarray(a, jnp.float32) for a in alive)
            sums = [jnp.zeros(g.width) for g in groups]

            def accumulate(taylor):
                for i, t in enumerate(taylor):
                    sums[i] = sums[i] + t

            state, losses = run_steps(step, state, masks, data, stream, cfg.finetune_steps, key,
                                      start=steps_done, on_aux=accumulate)
            steps_done += cfg.finetune_steps
            if cfg.criterion == "taylor" and cfg.finetune_steps > 0:
                raw = [np.asarray(s) / cfg.finetune_steps for s in sums]
            else:  # l1, or no minibatches to measure activations on
                raw = _l1_scores(state[0], groups, alive)
            goal = int(round(p0 - (p0 - target_params) * (it + 1) / cfg.iterations))
            removed, params_now = _remove(_normalised(raw, alive), alive, arch, groups, goal)
            rounds_total += 1
            history.append({"round": it + 1, "removed": removed, "num_params": params_now,
                            "widths": [int(a.sum()) for a in alive],
                            "finetune_loss": float(np.mean(losses)) if len(losses) else None})
            bar.set_postfix(params=f"{params_now:,}")
            if removed == 0 and params_now > target_params:
                break  # every Conv is down to one filter: the target is out of reach
        keep = [np.flatnonzero(a) for a in alive]
        small_arch, small_vars = slice_variables(arch, state_variables(state), keep, groups)
        if cfg.final_epochs > 0:
            net = train_network(small_arch, data, final_schedule, run_seed, variables=small_vars)
        else:
            accuracy = evaluate(small_arch, small_vars, data, schedule)
            net = TrainedNet(small_arch, small_vars, accuracy, 0.0)
        accuracy = float("nan") if net.diverged else net.accuracy
        result = BaselineResult(
            method=method,
            accuracy=accuracy,
            num_params=small_arch.num_params,
            arch=small_arch,
            wall_seconds=0.0,
            archs_evaluated=0,
            within_budget=small_arch.num_params <= target_params,
            notes=f"{len(history)} rounds x {cfg.finetune_steps} steps, then "
                  f"{cfg.final_epochs} epoch(s) fine-tuning",
            details={"history": history, "seed": run_seed},
            variables=net.variables,
        )
        if best is None or _better(result, best):
            best = result
    assert best is not None
    best.search_accuracy = best.accuracy
    if report_data is not None and best.variables is not None:
        best.accuracy = evaluate(best.arch, best.variables, report_data, schedule)
    best.wall_seconds = time.perf_counter() - start
    best.archs_evaluated = rounds_total
    if cfg.repeats > 1:
        best.notes += f"; best of {cfg.repeats} runs"
    return best


def _better(a: BaselineResult, b: BaselineResult) -> bool:
    """Within budget first, then accuracy (NaN counts as worst)."""
    def key(r):
        acc = r.accuracy if r.accuracy is not None and np.isfinite(r.accuracy) else -1.0
        return (r.within_budget, acc)

    return key(a) > key(b)
