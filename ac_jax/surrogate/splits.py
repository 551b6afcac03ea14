"""The surrogate's training data: an archset's records as arrays (`Split`), the held-out split by
record id, and no-op-layer augmentation (Appendix 10: the same network written differently)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ac_jax.archset.store import ArchsetArrays
from ac_jax.surrogate.encoding import encode_matrices
from ac_jax.surrogate.state import Normaliser


def holdout_mask(idx: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic held-out split by record id (stable when the archset grows)."""
    hashed = (np.asarray(idx, np.uint64) * np.uint64(2654435761)) % np.uint64(10_000)
    return hashed < np.uint64(round(fraction * 10_000))


@dataclasses.dataclass(frozen=True)
class Split:
    feats: np.ndarray  # [N, T, 6] float32
    matrices: np.ndarray  # [N, T, 5] int64
    accuracy: np.ndarray  # [N] float32
    params_target: np.ndarray  # [N] float32
    num_params: np.ndarray  # [N]

    def __len__(self) -> int:
        return len(self.accuracy)


def make_split(arrays: ArchsetArrays, mask: np.ndarray, normaliser: Normaliser) -> Split:
    return Split(
        feats=encode_matrices(arrays.matrices[mask]),
        matrices=arrays.matrices[mask],
        accuracy=arrays.accuracy[mask].astype(np.float32),
        params_target=normaliser.to_target(arrays.num_params[mask]).astype(np.float32),
        num_params=arrays.num_params[mask],
    )


# Layers that change nothing wherever they stand (Appendix 10): Dropout with rate 0, MaxPool and
# AvgPool with kernel 1, stride 1 (channel fields are filled in by `legalize`).
_NOOP_ROWS = ((6, 0, 0, 0, 0), (2, 1, 0, 1, 0), (7, 1, 0, 1, 0))


def with_noop_copies(split: Split, copies: int, seed: int, input_shape, num_classes: int,
                     normaliser: Normaliser) -> Split:
    """`split` plus `copies` variants of each record with one no-op layer inserted at a random
    position before the classifier (records already `max_len` long get none): the same
    network, hence the same labels, written differently."""
    from ac_jax.arch.legalize import canonicalize, legalize

    if copies <= 0:
        return split
    rng = np.random.default_rng([seed, 0xA06])
    max_len = split.matrices.shape[1]
    mats, acc, nparams = [split.matrices], [split.accuracy], [split.num_params]
    for _ in range(copies):
        extra = []
        for mat in split.matrices:
            rows = mat[mat[:, 0] > 0]
            if len(rows) >= max_len:
                extra.append(mat)
                continue
            at = int(rng.integers(0, len(rows)))  # before row `at`; never after the classifier
            noop = _NOOP_ROWS[int(rng.integers(0, len(_NOOP_ROWS)))]
            arch = legalize(np.insert(rows, at, noop, axis=0), input_shape, num_classes, max_len)
            original = legalize(rows, input_shape, num_classes, max_len)
            if canonicalize(arch) != canonicalize(original):  # a guard on the premise
                raise AssertionError(f"inserting {noop} changed the network {rows.tolist()}")
            extra.append(arch.to_matrix(max_len))
        mats.append(np.stack(extra))
        acc.append(split.accuracy)
        nparams.append(split.num_params)
    mats, nparams = np.concatenate(mats), np.concatenate(nparams)
    return Split(feats=encode_matrices(mats), matrices=mats, accuracy=np.concatenate(acc),
                 params_target=normaliser.to_target(nparams).astype(np.float32), num_params=nparams)


def padded_size(n: int) -> int:
    """Rows data of `n` rows is padded to (a power of two, at least 16), so that trainings on
    archsets of similar sizes (a study's subsets, refinement rounds) reuse compiled programs."""
    return max(16, 1 << max(0, int(n) - 1).bit_length())
