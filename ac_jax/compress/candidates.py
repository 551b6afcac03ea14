"""From decoded sequences to ranked discrete candidates: round, legalize, canonicalize, dedupe,
count parameters and MACs exactly, re-score, and pick from the Pareto set.

The surrogate's parameter regressor only steers the search; every number a user sees about a
candidate's size is the exact count of the discrete architecture (`shapes.analyze`). Predicted
accuracy is the accuracy regressor on the *re-encoded* discrete architecture, not on the
continuous embedding it came from, so rounding effects are priced in.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ac_jax.arch import shapes
from ac_jax.arch.batch import batch_legalize
from ac_jax.arch.legalize import canonicalize
from ac_jax.arch.spec import Arch
from ac_jax.surrogate.encoding import decode_features, encode_matrices


@dataclasses.dataclass(frozen=True)
class Candidate:
    arch: Arch
    num_params: int
    macs: int
    predicted_accuracy: float
    lam: float  # lambda of the first trajectory that reached it (nan: the original)
    step: int  # gradient step at which it was first decoded
    # Proxy-schedule accuracy when it was trained (refinement rounds), else None.
    measured_accuracy: float | None = None

    def to_dict(self) -> dict:
        from ac_jax.arch.torch_io import to_json

        return {
            "num_params": self.num_params,
            "macs": self.macs,
            "predicted_accuracy": self.predicted_accuracy,
            "lambda": self.lam,
            "step": self.step,
            "measured_accuracy": self.measured_accuracy,
            "num_layers": len(self.arch),
            "spec": to_json(self.arch),
        }


def discretise(
    decoded: np.ndarray, input_shape, num_classes: int, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """``[M, T, 6]`` decoder outputs -> legal ``[M, max_len, 5]`` matrices and lengths."""
    mats = decode_features(decoded)
    return batch_legalize(mats, input_shape, num_classes, max_len=max_len)


def unique_archs(
    mats: np.ndarray, lengths: np.ndarray, input_shape, num_classes: int
) -> tuple[list[Arch], np.ndarray]:
    """Canonical architectures of legal matrices, deduplicated; returns (archs, first index)."""
    _, first = np.unique(mats.reshape(len(mats), -1), axis=0, return_index=True)
    first = np.sort(first)  # keep trajectory order: earlier steps first
    seen: dict[Arch, int] = {}
    for i in first:
        arch = Arch.from_matrix(mats[i, : lengths[i]], input_shape, num_classes)
        arch = canonicalize(arch)
        seen.setdefault(arch, int(i))
    return list(seen), np.array(list(seen.values()), np.int64)


def pareto_front(num_params: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of candidates no other candidate beats on both (fewer params, higher accuracy)."""
    order = np.lexsort((-accuracy, num_params))  # by params, then best accuracy first
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return np.array(front, np.int64)


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What the user asked for; the first one set wins, in this order."""

    max_params: int | None = None
    target_ratio: float | None = None
    min_accuracy: float | None = None
    lam: float | None = None  # the paper's mode: the last step of this lambda's trajectory
    # Default: the smallest candidate predicted within `max_drop` of the original's accuracy.
    max_drop: float = 0.01

    def describe(self) -> str:
        if self.max_params is not None:
            return f"best predicted accuracy with at most {self.max_params:,} parameters"
        if self.target_ratio is not None:
            return f"best predicted accuracy at >= {self.target_ratio:g}x fewer parameters"
        if self.min_accuracy is not None:
            return f"fewest parameters with predicted accuracy >= {self.min_accuracy:.4f}"
        if self.lam is not None:
            return f"last step of the lambda={self.lam:g} trajectory"
        return f"fewest parameters within {self.max_drop:.3f} of the original's predicted accuracy"


def pick(candidates: Sequence[Candidate], original: Candidate, c: Constraint) -> Candidate:
    """The candidate that satisfies `c` (the original itself if none does)."""
    params = np.array([x.num_params for x in candidates])
    acc = np.array([x.predicted_accuracy for x in candidates])
    if c.lam is not None:
        mine = [x for x in candidates if np.isclose(x.lam, c.lam)]
        return max(mine, key=lambda x: x.step) if mine else original
    if c.max_params is not None or c.target_ratio is not None:
        limit = c.max_params if c.max_params is not None else original.num_params / c.target_ratio
        ok = np.flatnonzero(params <= limit)
        return candidates[ok[np.argmax(acc[ok])]] if len(ok) else original
    floor = (
        c.min_accuracy if c.min_accuracy is not None else original.predicted_accuracy - c.max_drop
    )
    ok = np.flatnonzero((acc >= floor) & (params < original.num_params))
    if not len(ok):
        return original
    best = ok[params[ok] == params[ok].min()]
    return candidates[best[np.argmax(acc[best])]]


def build_candidates(
    surrogate,
    decoded: np.ndarray,
    lambdas: Sequence[float],
    decode_every: int,
    input_shape,
    num_classes: int,
) -> list[Candidate]:
    """Candidates of one network from its ``[L, S, T, 6]`` decoded trajectories."""
    from ac_jax.compress.search import score

    num_lambdas, snapshots = decoded.shape[:2]
    flat = decoded.reshape(num_lambdas * snapshots, *decoded.shape[2:])
    mats, lengths = discretise(flat, input_shape, num_classes, surrogate.max_len)
    # Legal matrices have at most max_len rows and canonicalize only drops layers, so every
    # candidate fits the surrogate (and `first` stays aligned with `archs`).
    archs, first = unique_archs(mats, lengths, input_shape, num_classes)
    infos = [shapes.analyze(a) for a in archs]
    feats = encode_matrices(np.stack([a.to_matrix(surrogate.max_len) for a in archs]))
    acc, _ = score(surrogate, feats)
    return [
        Candidate(
            arch=a,
            num_params=info.num_params,
            macs=info.macs,
            predicted_accuracy=float(acc[i]),
            lam=float(lambdas[first[i] // snapshots]),
            step=int(first[i] % snapshots) * decode_every,
        )
        for i, (a, info) in enumerate(zip(archs, infos))
    ]


def original_candidates(surrogate, archs: Sequence[Arch]) -> list[Candidate]:
    """The input networks as candidates, scored in one batched call."""
    from ac_jax.compress.search import score

    for arch in archs:
        if len(arch) > surrogate.max_len:
            raise ValueError(
                f"the network has {len(arch)} layers; this surrogate encodes at most "
                f"{surrogate.max_len}"
            )
    acc, _ = score(surrogate, encode_matrices(np.stack([a.to_matrix(surrogate.max_len) for a in archs])))
    out = []
    for arch, a in zip(archs, acc):
        info = shapes.analyze(arch)
        out.append(Candidate(arch, info.num_params, info.macs, float(a), float("nan"), 0))
    return out
