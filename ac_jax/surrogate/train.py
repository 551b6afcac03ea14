"""Joint training of the surrogate on an archset (paper Section 4.3, Algorithm 1 TRAIN).

Loss ``L = L_d + l1 * L_a + l2 * L_p``: squared error of the decoded sequence (in rounding units,
see `encoding`, summed over the six channels and averaged over positions), L1 of the accuracy, Huber (delta 1) of the normalised
parameter count. Steps run in chunks of `steps_per_call` inside one jitted `lax.scan`, so the host
syncs (progress bar, checkpoints, held-out metrics) only between chunks.

A run directory holds ``surrogate.json`` (config, task, normaliser, metrics) and Orbax checkpoints
under ``ckpt/``; rerunning with the same directory resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ac_jax.archset.store import ArchsetArrays
from ac_jax.surrogate import checkpoint as ckpt_io
from ac_jax.surrogate.config import SurrogateConfig
from ac_jax.surrogate.encoding import ROUNDING_UNIT_WEIGHTS
from ac_jax.surrogate.evaluation import evaluate
from ac_jax.surrogate.model import Surrogate
from ac_jax.surrogate.splits import holdout_mask, make_split, padded_size, with_noop_copies
from ac_jax.surrogate.state import (  # noqa: F401 (re-exported: the training API)
    Normaliser,
    abstract_state,
    init_state,
    initialiser,
    make_optimizer,
    state_from,
)


def joint_loss(model, params, batch_stats, batch, cfg: SurrogateConfig, train: bool):
    """Returns (total, (parts dict, new batch_stats))."""
    x, acc_true, p_true = batch
    variables = {"params": params, "batch_stats": batch_stats}
    if train:
        (recon, acc, p, _), updates = model.apply(variables, x, True, mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
    else:
        recon, acc, p, _ = model.apply(variables, x, False)
    loss_d = jnp.mean(jnp.sum(ROUNDING_UNIT_WEIGHTS * (recon - x) ** 2, axis=-1))
    loss_a = jnp.mean(jnp.abs(acc - acc_true[None]))  # every head fits every record
    loss_p = jnp.mean(optax.huber_loss(p, p_true, delta=1.0))
    total = loss_d + cfg.accuracy_weight * loss_a + cfg.params_weight * loss_p
    parts = {"loss": total, "L_d": loss_d, "L_a": loss_a, "L_p": loss_p}
    if cfg.rank_weight:
        loss_r = ranking_loss(acc, acc_true, cfg.rank_margin, cfg.rank_temperature)
        total = total + cfg.rank_weight * loss_r
        parts.update(loss=total, L_r=loss_r)
    return total, (parts, batch_stats)


def ranking_loss(acc_heads, acc_true, margin: float, temperature: float):
    """Pairwise logistic loss on the order of the batch's accuracies, per head.

    For every ordered pair of records whose true accuracies differ by more than `margin`
    (closer pairs are within seed noise: their order is not information), the loss is
    ``softplus(-(a_i - a_j) / temperature)`` where record i is the more accurate one. The L1
    loss alone is satisfied by predicting the mode of a bimodal target; this one is only
    satisfied by the right order, which is what a compressor that picks by prediction needs.
    """
    diff_true = acc_true[:, None] - acc_true[None, :]  # [B, B]
    wanted = (diff_true > margin).astype(acc_heads.dtype)
    diff_pred = acc_heads[:, :, None] - acc_heads[:, None, :]  # [heads, B, B]
    losses = jax.nn.softplus(-diff_pred / temperature) * wanted[None]
    return losses.sum() / jnp.maximum(wanted.sum() * acc_heads.shape[0], 1.0)


def make_train_chunk(model: Surrogate, tx, cfg: SurrogateConfig, num_train: int) -> Callable:
    """``(state, data, key) -> (state, mean losses)``: `steps_per_call` steps in one `lax.scan`."""
    chunk = _chunk_program(model, tx, cfg)
    return lambda state, data, key: chunk(state, data, key, num_train)


def _chunk_program(model: Surrogate, tx, cfg: SurrogateConfig) -> Callable:
    """``(state, data, key, num_train) -> (state, mean losses)``; batches are drawn from the
    first `num_train` rows of `data` (a traced count: padded data of any size up to the
    padding shares one compiled program)."""

    def step(state, key, data, num_train):
        feats, acc, ptarget = data
        idx = jax.random.randint(key, (cfg.batch_size,), 0, num_train)
        batch = (feats[idx], acc[idx], ptarget[idx])
        grad_fn = jax.value_and_grad(
            lambda p: joint_loss(model, p, state["batch_stats"], batch, cfg, True), has_aux=True
        )
        (_, (parts, batch_stats)), grads = grad_fn(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": batch_stats,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, parts

    def chunk(state, data, key, num_train):
        keys = jax.random.split(key, cfg.steps_per_call)
        state, parts = jax.lax.scan(lambda s, k: step(s, k, data, num_train), state, keys)
        return state, jax.tree.map(jnp.mean, parts)

    return jax.jit(chunk, donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def _programs(cfg: SurrogateConfig, steps_per_epoch: int):
    """The jitted initialiser ``key -> state`` and training chunk for a config, built once per
    process: `train` is called many times with configs that differ only in seed and step counts
    (a study's repeats, every refinement round), and each build compiled anew (~10-25 s)."""
    model, tx = Surrogate(cfg.arch), make_optimizer(cfg, steps_per_epoch)
    return tx, jax.jit(initialiser(model, cfg, tx)), _chunk_program(model, tx, cfg)


def _program_key(cfg: SurrogateConfig, steps_per_epoch: int) -> tuple:
    """What the compiled programs depend on: not the seed (the key is an argument) nor the
    step counts; the epoch length only through a learning-rate decay."""
    key_cfg = dataclasses.replace(cfg, seed=0, steps=0, eval_every=1, checkpoint_every=1)
    return key_cfg, steps_per_epoch if cfg.decay_every_epochs > 0 else 1


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainOutcome:
    run_dir: Path
    step: int
    metrics: dict  # held-out metrics at the end
    train_metrics: dict
    history: list
    seconds: float


def _config_dict(cfg: SurrogateConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def train(
    cfg: SurrogateConfig,
    arrays: ArchsetArrays,
    run_dir: str | Path,
    task: dict,
    progress: bool = True,
    init_variables: dict | None = None,
    normaliser: Normaliser | None = None,
    log: Callable[[str], None] = print,
    always_train: np.ndarray | None = None,
) -> TrainOutcome:
    """Trains (or resumes training of) a surrogate in `run_dir` for `cfg.steps` steps in total.

    `task` (dataset, input_shape, num_classes, archset description) is stored with the
    checkpoints; resuming with a different task or config raises `ckpt_io.SurrogateMismatchError`.
    `init_variables`/`normaliser` start from an existing surrogate (fine-tuning).
    `always_train` (a mask over the records) keeps records out of the hold-out: refinement's
    own trainings, which are the point of fine-tuning.
    """
    run_dir = Path(run_dir)
    held = holdout_mask(arrays.idx, cfg.holdout_fraction)
    if always_train is not None:
        held &= ~np.asarray(always_train, bool)
    if held.all() or not held.any() and cfg.holdout_fraction > 0:
        # Tiny archsets: keep at least one record on each side (never an always-trained one).
        candidates = np.flatnonzero(~np.asarray(always_train, bool)) if always_train is not None \
            else np.arange(len(held))
        held = np.zeros(len(held), bool)
        held[candidates[-1] if len(candidates) else -1] = True
    meta = ckpt_io.read_meta(run_dir)
    if meta is not None:
        ckpt_io.check_compatible(meta, _config_dict(cfg), task, run_dir)
        normaliser = Normaliser(**meta["normaliser"])
    elif normaliser is None:
        normaliser = Normaliser.fit(arrays.num_params[~held], cfg.param_target)
    train_split = make_split(arrays, ~held, normaliser)
    holdout_split = make_split(arrays, held, normaliser)
    fit_split = with_noop_copies(train_split, cfg.noop_augment, cfg.seed, arrays.input_shape,
                                 arrays.num_classes, normaliser)

    model = Surrogate(cfg.arch)
    steps_per_epoch = max(1, len(fit_split) // cfg.batch_size)
    tx, initialise, chunk_program = _programs(*_program_key(cfg, steps_per_epoch))
    if init_variables is not None:  # fine-tuning: no fresh initialisation to compile and run
        # A copy: the training program donates its state, and the caller's surrogate (whose
        # buffers these are) must stay usable after its fine-tuned successor is trained.
        state = state_from(jax.tree.map(jnp.copy, init_variables), tx)
    else:
        state = initialise(jax.random.PRNGKey(cfg.seed))
    history = list(meta.get("history", [])) if meta else []
    manager = ckpt_io.manager(run_dir)
    state = ckpt_io.restore_latest(manager, state, run_dir)
    start_step = int(state["step"])
    if meta is None:
        ckpt_io.write_meta(
            run_dir,
            {
                "config": _config_dict(cfg),
                "task": task,
                "normaliser": normaliser.to_dict(),
                "num_train": len(train_split),
                "num_holdout": len(holdout_split),
                "history": history,
            },
        )
    if start_step:
        log(f"resuming {run_dir} from step {start_step}")

    rows = padded_size(len(fit_split))
    num_train = jnp.asarray(len(fit_split), jnp.int32)

    def chunk(state, data, key):
        return chunk_program(state, data, key, num_train)

    data = tuple(jnp.asarray(_pad_rows(a, rows)) for a in (
        fit_split.feats, fit_split.accuracy, fit_split.params_target))
    key = jax.random.PRNGKey(cfg.seed + 1)
    bar = _bar(cfg.steps, start_step, progress)
    began = time.perf_counter()
    step = start_step
    while step < cfg.steps:
        state, parts = chunk(state, data, jax.random.fold_in(key, step))
        step = int(state["step"])
        parts = {k: float(v) for k, v in parts.items()}
        if not np.isfinite(parts["loss"]):
            raise FloatingPointError(f"surrogate loss became {parts['loss']} at step {step}")
        if bar is not None:
            bar.update(step - bar.n)
            bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
        finished = step >= cfg.steps
        if finished or step % cfg.eval_every < cfg.steps_per_call:
            held_metrics = evaluate(model, _variables(state), holdout_split)
            history.append({"step": step, "train_loss": parts, "holdout": held_metrics})
        if finished or step % cfg.checkpoint_every < cfg.steps_per_call:
            ckpt_io.save(manager, step, state)
            meta = ckpt_io.read_meta(run_dir)
            meta["history"] = history
            ckpt_io.write_meta(run_dir, meta)
    if bar is not None:
        bar.close()
    manager.close()  # waits for the last save; stops the manager's background threads
    variables = _variables(state)
    metrics = evaluate(model, variables, holdout_split)
    train_metrics = evaluate(model, variables, train_split)
    meta = ckpt_io.read_meta(run_dir)
    meta.update(history=history, holdout_metrics=metrics, train_metrics=train_metrics, step=step)
    ckpt_io.write_meta(run_dir, meta)
    return TrainOutcome(
        run_dir, step, metrics, train_metrics, history, time.perf_counter() - began
    )


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)])


def _variables(state: dict) -> dict:
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="surrogate", unit="step", dynamic_ncols=True)
