"""The evaluation protocol: a fixed validation split carved from the training set.

Every *selection* (archset labels, random search, N2N's reward, refinement picks, the pruning
repeats, a study's final pick) reads accuracy on the validation split; the test set is read only
for reported numbers, after the choice is made. The split is the same for every method:

* size ``validation_size(n)`` = min(5,000, n // 10) training examples (Fashion-MNIST 5,000 of
  60,000; CIFAR-10/100 5,000 of 50,000; SVHN 5,000 of 73,257; the synthetic test set 10%);
* class-stratified (`Dataset.subset`'s stratified shuffle, seed `VALIDATION_SEED` = 0), so each
  class keeps its share;
* carved from whatever the loader returned (original files or TFDS give the same arrays).

Two views of one dataset, both `Dataset`s, so every trainer takes them unchanged:

* `search_view`: train = training set minus the validation split, "test" slot = the validation
  split (``evaluation == "validation"``);
* `final_view`: train = the same training set minus the validation split, test slot = the test
  set (``evaluation == "final"``), for the final schedule's reported numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ac_jax.data.dataset import Dataset, stratified_indices

VALIDATION_SEED = 0
MAX_VALIDATION = 5_000


def validation_size(num_train: int) -> int:
    """Examples the validation split takes from a training set of `num_train`."""
    return min(MAX_VALIDATION, num_train // 10)


def validation_indices(train_y: np.ndarray, size: int | None = None,
                       seed: int = VALIDATION_SEED) -> np.ndarray:
    """Sorted indices of the validation split within the training set."""
    size = validation_size(len(train_y)) if size is None else size
    return np.asarray(stratified_indices(train_y, size, seed))


def _carve(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    if dataset.evaluation != "test":
        raise ValueError(f"{dataset.name} is already a {dataset.evaluation!r} view; carve the "
                         "validation split from the dataset as loaded")
    val = validation_indices(dataset.train_y)
    keep = np.ones(len(dataset.train_y), bool)
    keep[val] = False
    return val, np.flatnonzero(keep)


def search_view(dataset: Dataset) -> Dataset:
    """Train minus validation, evaluated on the validation split (a search view is returned as
    it is)."""
    if dataset.evaluation == "validation":
        return dataset
    val, rest = _carve(dataset)
    return dataclasses.replace(
        dataset, train_x=dataset.train_x[rest], train_y=dataset.train_y[rest],
        test_x=dataset.train_x[val], test_y=dataset.train_y[val], evaluation="validation",
    )


def final_view(dataset: Dataset) -> Dataset:
    """Train minus validation, evaluated on the test set: for reported numbers only."""
    if dataset.evaluation == "final":
        return dataset
    _, rest = _carve(dataset)
    return dataclasses.replace(dataset, train_x=dataset.train_x[rest],
                               train_y=dataset.train_y[rest], evaluation="final")


# What archset and search stores record, so that records labelled on the test set (archsets
# made before 2026-12-01 evening) are never resumed into or mixed with validation-labelled ones.
SEARCH_META = {
    "evaluation": "validation",
    "validation_split": f"min({MAX_VALIDATION}, train // 10), class-stratified, "
                        f"seed {VALIDATION_SEED}",
}
