"""Knowledge distillation of a student architecture from a trained teacher (Table 2 "Distillation").

* KD (Hinton et al. 2015): the student is trained on
  ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)``
  with T = 4, alpha = 0.9 by default (`ac_jax.child.program.kd_loss`), by `ChildTrainer` with
  `TrainOptions(distill=...)`: all seeds in one program, the teacher in inference mode on the
  same (augmented) minibatch inside the step.
* From scratch: the same student, schedule and seeds with plain cross-entropy (`ChildTrainer`).
  A seed fixes the initialisation and data order, so each KD run is paired with a scratch run
  that differs only in the loss.
* FitNets hint (Romero et al. 2014, the paper's actual distillation baseline), optional
  (`hint_epochs > 0`): stage 1 regresses the output of a student Conv (the "guided" layer) onto
  a teacher Conv output (the "hint", the teacher's middle Conv) through a 1x1 convolution
  adapter, with an L2 loss; only the student layers up to the guided one receive gradients.
  Stage 2 is KD from there (`ChildTrainer`, warm start). The guided layer is the student Conv with the hint's spatial size
  closest in relative depth; without one, the hint stage is skipped (noted in the result).
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
    child_model,
    init_state,
    make_step,
    module_names,
    prng_key,
    run_steps,
)
from ac_jax.child.trainer import (
    ChildTrainer,
    DeviceData,
    Distillation,
    TrainOptions,
    TrainSchedule,
    kd_loss,
)

__all__ = ["DistillConfig", "distill", "hint_layers", "kd_loss"]


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft (teacher) term
    hint_epochs: int = 0  # FitNets stage 1 epochs; 0 disables the FitNets run
    seeds: tuple[int, ...] = (0,)


# --------------------------------------------------------------------------------------------
# FitNets hint
# --------------------------------------------------------------------------------------------


def _conv_outputs(arch: Arch) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(layer index, module name, output shape) of every Conv."""
    info = shapes.analyze(arch)
    names = module_names(arch)
    return [(i, names[i], tuple(info.layers[i].out_shape))
            for i, layer in enumerate(arch.layers) if layer.t == LayerType.CONV]


def hint_layers(teacher: Arch, student: Arch) -> tuple[str, str, int, int] | None:
    """(teacher hint module, student guided module, student channels, teacher channels).

    The hint is the teacher's middle Conv (FitNets: a middle layer); the guided layer is a
    student Conv with the same output height and width, closest in relative depth. None if the
    student has no such Conv.
    """
    t_convs, s_convs = _conv_outputs(teacher), _conv_outputs(student)
    if not t_convs or not s_convs:
        return None
    mid = (len(t_convs) - 1) // 2
    _, t_name, t_shape = t_convs[mid]
    depth = mid / max(len(t_convs) - 1, 1)
    matching = [(abs(j / max(len(s_convs) - 1, 1) - depth), name, shape)
                for j, (_, name, shape) in enumerate(s_convs) if shape[:2] == t_shape[:2]]
    if not matching:
        return None
    _, s_name, s_shape = min(matching)
    return t_name, s_name, s_shape[2], t_shape[2]


def _capture(model, variables, x, name: str, **kwargs):
    """`model.apply(...)` plus the output of submodule `name`."""
    captured = {}

    def interceptor(next_fun, args, kw, context):
        out = next_fun(*args, **kw)
        if context.method_name == "__call__" and context.module.name == name:
            captured["out"] = out
        return out

    with nn.intercept_methods(interceptor):
        result = model.apply(variables, x, **kwargs)
    return result, captured["out"]


def _hint_stage(teacher: TrainedNet, student: Arch, data: DeviceData, schedule: TrainSchedule,
                names, epochs: int, seed: int, progress: bool):
    """FitNets stage 1: returns student variables whose guided layer imitates the hint."""
    t_name, s_name, s_channels, t_channels = names
    teacher_model = child_model(teacher.arch, schedule)
    student_model = child_model(student, schedule)

    def loss_fn(params, batch_stats, teacher_variables, x, y, dropout_key):
        del y
        _, hint = _capture(teacher_model, teacher_variables, x, t_name, train=False)
        (_, updates), guided = _capture(
            student_model, {"params": params["student"], "batch_stats": batch_stats}, x, s_name,
            train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key},
        )
        adapter = params["adapter"]  # a 1x1 convolution is a matmul over channels
        predicted = guided.astype(jnp.float32) @ adapter["kernel"] + adapter["bias"]
        loss = 0.5 * jnp.mean((predicted - jax.lax.stop_gradient(hint)) ** 2)
        return loss, (updates.get("batch_stats", {}), None)

    tx = optax.adam(schedule.lr)
    init = init_state(student_model, tx, seed)  # its own init (not the trainer's key stream)
    bound = 1.0 / np.sqrt(s_channels)
    adapter = {
        "kernel": jnp.asarray(np.random.default_rng(seed + 1).uniform(
            -bound, bound, (s_channels, t_channels)), jnp.float32),
        "bias": jnp.zeros((t_channels,), jnp.float32),
    }
    params = {"student": init[0], "adapter": adapter}
    state = (params, init[1], tx.init(params))
    stream = BatchStream(data.train_x.shape[0], schedule.batch_size, seed)
    step = make_step(loss_fn, tx, data.augment)
    state, losses = run_steps(step, state, teacher.variables, data, stream,
                              epochs * stream.steps_per_epoch, prng_key(seed + 2),
                              progress=progress, desc="FitNets hint")
    params, batch_stats, _ = state
    return {"params": params["student"], "batch_stats": batch_stats}, float(losses[-1])


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def _summary(method: str, student: Arch, result, seconds: float, seeds: Sequence[int],
             notes: str) -> BaselineResult:
    """A row from a `TrainResult` over `seeds` (a diverged seed counts as NaN)."""
    if result.status not in ("ok", "diverged"):
        raise RuntimeError(f"{method}: training failed ({result.status}): {result.reason}")
    accs = result.finite_accuracies
    return BaselineResult(
        method=method,
        accuracy=float(np.mean(accs)),
        num_params=student.num_params,
        arch=student,
        wall_seconds=seconds,
        archs_evaluated=1,
        notes=notes,
        details={"seed_accuracies": accs, "seeds": list(seeds)},
        variables=result.variables[0] if result.variables else None,
    )


def distill(teacher: TrainedNet, student: Arch, data: DeviceData, schedule: TrainSchedule,
            cfg: DistillConfig = DistillConfig(), *, scratch: bool = True,
            progress: bool = False) -> dict[str, BaselineResult]:
    """Trains `student` with KD (and, if asked, FitNets and from scratch) with `schedule`.

    Returns results keyed "kd", "scratch" and "fitnets" (those that ran). Accuracies are means
    over `cfg.seeds`, on `data`'s evaluation split.
    """
    shapes.validate(student)
    if student.input_shape != teacher.arch.input_shape:
        raise ValueError(f"student input {student.input_shape} != teacher input "
                         f"{teacher.arch.input_shape}")
    if student.num_classes != teacher.arch.num_classes:
        raise ValueError("student and teacher have different class counts")
    if not cfg.seeds:
        raise ValueError("distillation needs at least one seed")
    results: dict[str, BaselineResult] = {}
    seeds = list(cfg.seeds)
    kd_note = f"T={cfg.temperature:g}, alpha={cfg.alpha:g}, {schedule.epochs} epoch(s)"
    kd = Distillation(teacher.arch, cfg.temperature, cfg.alpha)
    bar = tqdm(total=1 + scratch + len(seeds) * (cfg.hint_epochs > 0), desc="distillation",
               leave=False, disable=not progress)

    start = time.perf_counter()
    kd_trainer = ChildTrainer(data, schedule, len(seeds),
                              TrainOptions(distill=kd, keep_weights=True), teacher.variables)
    results["kd"] = _summary("distillation (KD)", student, kd_trainer.train(student, seeds),
                             time.perf_counter() - start, seeds, kd_note)
    bar.update()

    if scratch:
        start = time.perf_counter()
        result = ChildTrainer(data, schedule, len(seeds), TrainOptions(keep_weights=True)).train(
            student, seeds)
        results["scratch"] = _summary("student from scratch", student, result,
                                      time.perf_counter() - start, seeds,
                                      "same schedule and seeds as KD, cross-entropy only")
        bar.update()

    if cfg.hint_epochs > 0:
        start = time.perf_counter()
        names = hint_layers(teacher.arch, student)
        if names is None:
            bar.update(len(seeds))
            results["fitnets"] = BaselineResult(
                "distillation (FitNets hint + KD)", None, student.num_params, student, 0.0, 0,
                notes="skipped: no student Conv has the spatial size of the teacher's hint layer",
            )
        else:
            # Each seed starts stage 2 from its own hinted weights: one warm-started KD
            # training per seed.
            warm = ChildTrainer(data, schedule, 1, TrainOptions(distill=kd, warm_start=True,
                                                                keep_weights=True),
                                teacher.variables)
            accs, losses, hint_losses, kept = [], [], [], []
            for seed in seeds:
                variables, hint_loss = _hint_stage(teacher, student, data, schedule, names,
                                                   cfg.hint_epochs, seed, progress)
                hint_losses.append(hint_loss)
                out = warm.train(student, [seed], init=variables)
                accs += list(out.seed_accuracies) or [float("nan")]
                losses += list(out.epoch_losses) or [(float("nan"),)]
                kept += list(out.variables or [None])
                bar.update()
            combined = dataclasses.replace(out, status="ok", seed_accuracies=tuple(accs),
                                           epoch_losses=tuple(losses), variables=tuple(kept))
            result = _summary(
                "distillation (FitNets hint + KD)", student, combined,
                time.perf_counter() - start, seeds, f"hint {names[0]} -> guided {names[1]}, "
                f"{cfg.hint_epochs} hint epoch(s), then KD ({kd_note})",
            )
            result.details["final_hint_loss"] = hint_losses
            results["fitnets"] = result
    bar.close()
    return results
