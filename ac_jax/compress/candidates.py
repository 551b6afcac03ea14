"""From the search's candidate matrices to ranked discrete candidates: dedupe, count parameters
and MACs exactly, re-score, and pick from the Pareto set. The search has already rounded the
decoder's sequences, legalized and canonicalized them on the device (`search._search`).

The candidates of all networks of a batch are post-processed together with array operations
(`arch.batch`), so that this step does not undo what batching the search buys.

The surrogate's parameter regressor only steers the search; every number a user sees about a
candidate's size is the exact count of the discrete architecture (`batch.batch_analyze`, tested
equal to `shapes.analyze`). Predicted accuracy is the accuracy regressor on the *re-encoded*
discrete architecture, not on the continuous embedding it came from, so rounding effects are
priced in.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import time
from typing import Iterable, Iterator, Sequence

import numpy as np

from ac_jax.arch import shapes
from ac_jax.arch.batch import batch_analyze
from ac_jax.arch.spec import Arch
from ac_jax.surrogate.encoding import encode_matrices


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
        from ac_jax.arch.json_spec import to_json

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


class CandidateList(collections.abc.Sequence):
    """One network's candidates as arrays; each `Candidate` object is made when it is first read.

    A network yields a few hundred distinct candidates, but only the Pareto set and the pick are
    ever looked at one by one; making every `Arch` up front cost ~4 ms per network, as much as
    the rest of the host's post-processing. Ranking (`pareto_front`, `pick`, the plot) reads
    the columns below directly. Indexing gives the same `Candidate` object on every read.
    """

    def __init__(self, rows, lengths, num_params, macs, predicted_accuracy, lam, step,
                 input_shape, num_classes):
        self.rows = rows  # [M, T, 5] legal, canonical matrices, zero after `lengths` rows
        self.lengths = np.asarray(lengths)
        # One array per `Candidate` field, under the field's name (`columns` reads them).
        self.num_params = np.asarray(num_params, np.int64)
        self.macs = np.asarray(macs, np.int64)
        self.predicted_accuracy = np.asarray(predicted_accuracy, np.float64)
        self.lam = np.asarray(lam, np.float64)
        self.step = np.asarray(step, np.int64)
        self.input_shape, self.num_classes = tuple(input_shape), int(num_classes)
        self._made: dict[int, Candidate] = {}

    def __len__(self) -> int:
        return len(self.num_params)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # negative indices; IndexError past the end
        if index not in self._made:
            arch = Arch.from_legal_rows(self.rows[index, : self.lengths[index]],
                                        self.input_shape, self.num_classes)
            self._made[index] = Candidate(
                arch=arch,
                num_params=int(self.num_params[index]),
                macs=int(self.macs[index]),
                predicted_accuracy=float(self.predicted_accuracy[index]),
                lam=float(self.lam[index]),
                step=int(self.step[index]),
            )
        return self._made[index]

    def contains_matrix(self, matrix: np.ndarray, first_step_only: bool = False) -> bool:
        """Whether one of the candidates is the ``[T, 5]`` `matrix` (zero-padded like `rows`)."""
        rows = self.rows[self.step == 0] if first_step_only else self.rows
        return bool((rows == matrix).all(axis=(1, 2)).any())


def columns(candidates: Sequence[Candidate], *fields: str) -> tuple[np.ndarray, ...]:
    """One array per named `Candidate` field over `candidates`; a `CandidateList`'s own columns,
    without making objects."""
    if isinstance(candidates, CandidateList):
        return tuple(getattr(candidates, f) for f in fields)
    return tuple(np.array([getattr(c, f) for c in candidates]) for f in fields)


@contextlib.contextmanager
def timed(timings: dict | None, stage: str):
    """Adds the block's wall seconds to ``timings[stage]`` (nothing to do when `timings` is None):
    where the time of compression goes, as `benchmarks/batch_compress.py` prints it."""
    if timings is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


_END = object()


def timed_items(items: Iterable, timings: dict | None, stage: str) -> Iterator:
    """`items`, with the time spent producing each one (a generator's work) added to `stage`."""
    iterator = iter(items)
    while True:
        with timed(timings, stage):
            item = next(iterator, _END)
        if item is _END:
            return
        yield item


def first_per_network(mats: np.ndarray, rows_per_network: int) -> np.ndarray:
    """Indices of the first occurrence of each distinct matrix within its network's block.

    `mats` is ``[N * rows_per_network, T, 5]``, network-major; the result is sorted, so it lists
    each network's distinct architectures in trajectory order (earlier lambdas and steps first).
    """
    keys = np.ascontiguousarray(mats, dtype=np.int32).reshape(len(mats), -1)
    seen: dict[tuple[int, bytes], int] = {}
    for i, key in enumerate(keys):
        seen.setdefault((i // rows_per_network, key.tobytes()), i)
    return np.fromiter(seen.values(), np.int64, len(seen))


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
    params, acc, lams, steps = columns(candidates, "num_params", "predicted_accuracy", "lam",
                                       "step")
    if c.lam is not None:
        mine = np.flatnonzero(np.isclose(lams, c.lam))
        return candidates[mine[np.argmax(steps[mine])]] if len(mine) else original
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
    canonical: np.ndarray,
    lengths: np.ndarray,
    lambdas: Sequence[float],
    decode_every: int,
    input_shape,
    num_classes: int,
    timings: dict | None = None,
) -> list[CandidateList]:
    """Candidates of each network from its visited architectures ``canonical[n]``
    (``[L, S, T, 5]`` legal, canonical integer matrices, zero after ``lengths[n]`` rows, as
    `search` returns them under "candidates" and "lengths").

    All networks are post-processed together with whole-batch array operations (dedupe, exact
    counts) and one scoring call; `Arch` and `Candidate` objects are only made for the
    candidates that are read (`CandidateList`). `timings` (optional) collects seconds per stage
    (`timed`).
    """
    from ac_jax.compress.scoring import score_matrices  # JAX on first use: Constraint stays cheap

    num_networks, num_lambdas, snapshots = canonical.shape[:3]
    per_network = num_lambdas * snapshots
    mats = canonical.reshape(num_networks * per_network, *canonical.shape[3:])
    lengths = np.asarray(lengths).reshape(-1)
    with timed(timings, "dedupe"):
        first = first_per_network(mats, per_network)
        mats, lengths = mats[first], lengths[first]
    with timed(timings, "exact counts"):
        info = batch_analyze(mats, input_shape, num_classes)
    if not info.valid.all():  # legalize guarantees validity; this would be a bug there
        bad = Arch.from_matrix(mats[~info.valid][0], input_shape, num_classes)
        raise RuntimeError(f"legalized candidate is not a valid architecture: {bad}")
    with timed(timings, "re-score (surrogate, encoding compiled in)"):
        acc, _ = score_matrices(surrogate, mats)
    with timed(timings, "per-network candidate lists"):
        network, position = np.divmod(first, per_network)
        lams = np.asarray(lambdas, np.float64)[position // snapshots]
        steps = (position % snapshots) * decode_every
        # `first` is sorted, so each network's candidates are one contiguous block.
        bounds = np.searchsorted(network, np.arange(num_networks + 1))
        out = []
        for n in range(num_networks):
            block = slice(bounds[n], bounds[n + 1])
            out.append(CandidateList(mats[block], lengths[block], info.num_params[block],
                                     info.macs[block], acc[block], lams[block], steps[block],
                                     input_shape, num_classes))
    return out


def original_candidates(surrogate, archs: Sequence[Arch]) -> list[Candidate]:
    """The input networks as candidates, scored in one batched call."""
    from ac_jax.compress.scoring import score

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
