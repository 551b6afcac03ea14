"""`Dataset`: a whole image-classification dataset in host memory, and its stratified subsets.
The loaders (`datasets.py`, `synthetic.py`) and the evaluation protocol build on it."""

from __future__ import annotations

import dataclasses

import numpy as np

EVALUATIONS = ("test", "validation", "final")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A whole image-classification dataset in host memory, NHWC uint8 images, int32 labels."""

    name: str
    train_x: np.ndarray  # [N, H, W, C] uint8
    train_y: np.ndarray  # [N] int32
    test_x: np.ndarray  # [M, H, W, C] uint8
    test_y: np.ndarray  # [M] int32
    num_classes: int
    augment: bool = False  # train with random crop (4-pixel padding) + horizontal flip
    # What the test slot holds (ac_jax.data.protocol): "test" (the dataset as loaded: the whole
    # training set, the test set), "validation" (a search view: training set minus the
    # validation split, evaluated on that split) or "final" (minus the split, on the test set).
    evaluation: str = "test"

    def __post_init__(self):
        if self.evaluation not in EVALUATIONS:
            raise ValueError(f"evaluation must be one of {EVALUATIONS}, got {self.evaluation!r}")
        for split, x, y in (("train", self.train_x, self.train_y),
                            ("test", self.test_x, self.test_y)):
            if x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(f"{self.name} {split}_x: {x.dtype}{list(x.shape)}, "
                                 "expected uint8 [N, H, W, C]")
            if y.dtype != np.int32 or y.shape != x.shape[:1]:
                raise ValueError(f"{self.name} {split}_y: {y.dtype}{list(y.shape)}, "
                                 f"expected int32 [{len(x)}]")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"{self.name} {split}_y: labels outside 0..{self.num_classes - 1}")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"{self.name}: train and test images differ in shape")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.train_x.shape[1:])

    def subset(self, train: int | None, test: int | None, seed: int = 0) -> Dataset:
        """The first ``train`` / ``test`` examples of a class-stratified shuffle (None: all).

        Deterministic in ``seed``. Each class keeps (up to rounding) its share of the split, and
        the chosen examples keep their original order. A larger subset of the same seed contains
        every smaller one.
        """
        train_idx = stratified_indices(self.train_y, train, seed)
        test_idx = stratified_indices(self.test_y, test, seed + 1)
        return dataclasses.replace(
            self,
            train_x=self.train_x[train_idx], train_y=self.train_y[train_idx],
            test_x=self.test_x[test_idx], test_y=self.test_y[test_idx],
        )

    def __repr__(self) -> str:  # the default would print the arrays
        return (f"Dataset({self.name!r}, train={len(self.train_x)}, test={len(self.test_x)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"augment={self.augment}, evaluation={self.evaluation!r})")


def stratified_indices(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray | slice:
    if n is None:
        return slice(None)  # a view, not a copy of the whole split
    if not 0 <= n <= len(labels):
        raise ValueError(f"subset of {n} examples requested from a split of {len(labels)}")
    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[order]
    # Rank of each example within its class (in shuffled order), as a fraction of the class
    # size: sorting by it interleaves the classes in proportion to their sizes.
    counts = np.bincount(shuffled)
    rank = np.empty(len(labels), np.int64)
    for c in np.flatnonzero(counts):
        members = np.flatnonzero(shuffled == c)
        rank[members] = np.arange(len(members))
    position = (rank + 0.5) / counts[shuffled]
    chosen = order[np.argsort(position, kind="stable")[:n]]
    return np.sort(chosen)
