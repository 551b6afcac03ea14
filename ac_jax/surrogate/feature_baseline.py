"""Accuracy regressors on hand-made architecture features, scored on the surrogate's held-out
split: a yardstick for the surrogate's accuracy head (does the 1-D CNN see less than size, depth
and layer counts already say?). Not used by compression: they are not differentiable in the
embedding.
"""

from __future__ import annotations

import numpy as np

from ac_jax.archset.report import kendall_tau
from ac_jax.archset.store import ArchsetArrays
from ac_jax.surrogate.splits import holdout_mask

FEATURE_NAMES = ("log_params", "log_macs", "depth", *(f"count_type{t}" for t in range(1, 9)),
                 "log_widest_conv", "mean_conv_kernel", "strided_convs")


def features(arrays: ArchsetArrays) -> np.ndarray:
    """[N, len(FEATURE_NAMES)] features of every record, from its layer matrix and exact counts."""
    rows = []
    for matrix, length, params, macs in zip(arrays.matrices, arrays.lengths, arrays.num_params,
                                            arrays.macs):
        layers = np.asarray(matrix[:length])
        convs = layers[layers[:, 0] == 1]
        rows.append([np.log1p(params), np.log1p(macs), length,
                     *((layers[:, 0] == t).sum() for t in range(1, 9)),
                     np.log(convs[:, 2].max()) if len(convs) else 0.0,
                     convs[:, 1].mean() if len(convs) else 0.0,
                     (convs[:, 3] > 1).sum()])
    return np.asarray(rows, np.float64)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)  # a feature constant on the training side carries nothing
    return (train - mean) / std, (test - mean) / std


def knn_predict(train_x, train_y, test_x, k: int = 7) -> np.ndarray:
    """Mean accuracy of the k nearest training records in standardised feature space."""
    a, b = _standardise(np.asarray(train_x, float), np.asarray(test_x, float))
    distances = ((b[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :min(k, len(a))]
    return np.asarray(train_y, float)[nearest].mean(axis=1)


def ridge_predict(train_x, train_y, test_x, penalty: float = 1.0) -> np.ndarray:
    """Linear ridge regression on standardised features (the intercept is not penalised)."""
    a, b = _standardise(np.asarray(train_x, float), np.asarray(test_x, float))
    y = np.asarray(train_y, float)
    offset = y.mean()
    weights = np.linalg.solve(a.T @ a + penalty * np.eye(a.shape[1]), a.T @ (y - offset))
    return b @ weights + offset


def holdout_scores(arrays: ArchsetArrays, holdout_fraction: float) -> dict:
    """Held-out Kendall tau and MAE of each feature regressor, on the id-hash split the
    surrogate uses (`holdout_mask`), trained on the rest."""
    held = holdout_mask(arrays.idx, holdout_fraction)
    x, y = features(arrays), np.asarray(arrays.accuracy, float)
    if held.sum() < 3 or (~held).sum() < 3:
        raise ValueError(f"{held.sum()} held-out and {(~held).sum()} training records: the "
                         "feature baselines need at least 3 of each")
    out = {}
    for name, predict in (("knn7", knn_predict), ("ridge", ridge_predict)):
        pred = predict(x[~held], y[~held], x[held])
        out[name] = {"accuracy_kendall_tau": kendall_tau(pred, y[held]),
                     "accuracy_mae": float(np.abs(pred - y[held]).mean()),
                     "num": int(held.sum())}
    return out
