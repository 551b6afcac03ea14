"""Datasets (Fashion-MNIST, CIFAR-10/100, SVHN, synthetic) in host memory; device preprocessing."""

from ac_jax.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    Dataset,
    DatasetNotFoundError,
    canonical_name,
    load,
)
from ac_jax.data.device import normalize, preprocess, random_crop_flip
from ac_jax.data.formats import Splits, read_idx
from ac_jax.data.synthetic import synthetic
from ac_jax.data.tfds_source import TFDSUnavailableError

__all__ = [
    "DATA_DIR_ENV",
    "DATASETS",
    "Dataset",
    "DatasetNotFoundError",
    "Splits",
    "TFDSUnavailableError",
    "canonical_name",
    "load",
    "normalize",
    "preprocess",
    "random_crop_flip",
    "read_idx",
    "synthetic",
]
