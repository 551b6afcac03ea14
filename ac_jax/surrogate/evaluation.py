"""Held-out metrics of a trained surrogate: reconstruction rates of the decoder (after rounding),
accuracy MAE and Kendall tau, parameter R^2, and an ensemble's spread against its error."""

from __future__ import annotations

import functools

import jax
import numpy as np

from ac_jax.surrogate.encoding import decode_features
from ac_jax.surrogate.model import Surrogate
from ac_jax.surrogate.splits import Split, padded_size


def reconstruction_metrics(true_mats: np.ndarray, decoded_mats: np.ndarray) -> dict:
    """Per-field / whole-layer match rates over the true layers, length and exact-sequence match."""
    present = true_mats[..., 0] > 0
    equal = decoded_mats == true_mats
    fields = ("type", "kernel", "out", "stride", "pad")
    out = {f"field_{name}": float(equal[..., f][present].mean()) for f, name in enumerate(fields)}
    out["layer"] = float(equal.all(-1)[present].mean())
    # Exact out-channel counts are rarely hit through the log scale; within a factor of sqrt(2):
    log_ratio = np.abs(np.log2((1.0 + decoded_mats[..., 2]) / (1.0 + true_mats[..., 2])))
    out["field_out_within_sqrt2"] = float((log_ratio <= 0.5)[present].mean())
    true_len = present.sum(-1)
    decoded_len = (decoded_mats[..., 0] > 0).sum(-1)
    out["length"] = float((true_len == decoded_len).mean())
    out["sequence"] = float(equal.all(axis=(-1, -2)).mean())
    return out


def regression_metrics(split: Split, acc_pred, ptarget_pred) -> dict:
    from scipy.stats import kendalltau

    acc_pred = np.asarray(acc_pred, np.float64)
    ptarget_pred = np.asarray(ptarget_pred, np.float64)
    tau = kendalltau(split.accuracy, acc_pred).statistic if len(split) > 1 else float("nan")
    residual = ((split.params_target - ptarget_pred) ** 2).sum()
    total = ((split.params_target - split.params_target.mean()) ** 2).sum()
    return {
        "accuracy_mae": float(np.abs(split.accuracy - acc_pred).mean()),
        "accuracy_kendall_tau": float(tau),
        "params_r2": float(1.0 - residual / max(total, 1e-12)),
    }


@functools.lru_cache(maxsize=8)
def _jitted_apply(model: Surrogate):
    return jax.jit(lambda v, x: model.apply(v, x, False))


def evaluate(model: Surrogate, variables: dict, split: Split, batch: int = 256) -> dict:
    """Held-out metrics (all computed after rounding the decoder output)."""
    apply = _jitted_apply(model)  # one compile per model shape, not per call
    batch = min(batch, padded_size(len(split)))  # few distinct shapes across splits
    recon, acc, ptarget = [], [], []
    for start in range(0, len(split), batch):
        x = split.feats[start : start + batch]
        n = len(x)
        if n < batch:  # pad the last chunk: one input shape, one compile
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), x.dtype)])
        r, a, p, _ = apply(variables, x)
        recon.append(np.asarray(r)[:n])
        acc.append(np.asarray(a)[:, :n])  # [heads, n]
        ptarget.append(np.asarray(p)[:n])
    decoded = decode_features(np.concatenate(recon))
    metrics = reconstruction_metrics(split.matrices, decoded)
    heads = np.concatenate(acc, axis=1)
    metrics.update(regression_metrics(split, heads.mean(axis=0), np.concatenate(ptarget)))
    if heads.shape[0] > 1:  # the ensemble's own spread, and whether it knows where it errs
        from scipy.stats import spearmanr

        spread = heads.std(axis=0)
        error = np.abs(heads.mean(axis=0) - split.accuracy)
        metrics["accuracy_spread_mean"] = float(spread.mean())
        metrics["spread_error_spearman"] = (float(spearmanr(spread, error).statistic)
                                            if len(split) > 2 else float("nan"))
    metrics["num"] = len(split)
    return metrics
