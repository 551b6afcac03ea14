"""Reading datasets prepared by TensorFlow Datasets (TFDS), without TensorFlow where possible."""

# tensorflow_datasets is imported lazily, only when this path is taken (it is slow to import). A
# dataset stored as array_record (or parquet) is read through TFDS's random-access data source,
# which works without TensorFlow; one stored as tfrecord (the `tfds build` default) needs TF.

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ac_jax.data.formats import Splits

_RANDOM_ACCESS_FORMATS = {"array_record", "parquet"}
_CHUNK = 4096  # examples fetched per data-source call


class TFDSUnavailableError(ImportError):
    """The dataset is prepared, but reading its file format needs TensorFlow, which is missing."""


def module_available(name: str) -> bool:
    """Whether ``import name`` would find a module, without importing it."""
    if name in sys.modules:  # also true for modules injected by tests
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _tfds():
    return importlib.import_module("tensorflow_datasets")


def default_data_dir() -> str:
    """Where TFDS looks when no data dir is given (for messages; does not import TFDS)."""
    return "$TFDS_DATA_DIR or ~/tensorflow_datasets"


def builder(tfds_name: str, data_dir: str | Path | None):
    """The TFDS builder for ``tfds_name`` in ``data_dir`` (TFDS's default dir when None)."""
    return _tfds().builder(tfds_name, data_dir=None if data_dir is None else str(data_dir))


def is_prepared(tfds_name: str, data_dir: str | Path | None) -> bool:
    """Whether TFDS is installed and has ``tfds_name`` prepared in ``data_dir``; never raises."""
    if not module_available("tensorflow_datasets"):
        return False
    if data_dir is not None and not (Path(data_dir) / tfds_name).is_dir():
        return False  # fast path: no need to import TFDS (and have it log) to know that
    try:
        return bool(builder(tfds_name, data_dir).is_prepared())
    except Exception:  # unknown name, unreadable dataset_info.json...: treat as not there
        return False


def _file_formats(b) -> set[str]:
    info = b.info
    if hasattr(info, "available_file_formats"):
        formats = list(info.available_file_formats() or [info.file_format])
    else:
        formats = [getattr(info, "file_format", None)]
    return {str(getattr(f, "value", f)) for f in formats if f is not None}


def load_splits(tfds_name: str, data_dir: str | Path | None) -> tuple[Splits, int]:
    """The prepared TFDS dataset's train/test splits as uint8 NHWC arrays, and its class count."""
    b = builder(tfds_name, data_dir)
    if not b.is_prepared():
        raise FileNotFoundError(f"TFDS dataset {tfds_name!r} is not prepared in {b.data_dir}")
    num_classes = int(b.info.features["label"].num_classes)
    if _file_formats(b) & _RANDOM_ACCESS_FORMATS:
        read = lambda split: _read_data_source(b.as_data_source(split=split))  # noqa: E731
    else:
        read = lambda split: _read_with_tensorflow(tfds_name, data_dir, split, b)  # noqa: E731
    return Splits(*read("train"), *read("test")), num_classes


def _read_data_source(source) -> tuple[np.ndarray, np.ndarray]:
    """Every example of a random-access source, fetched in chunks (one by one is slow)."""
    n = len(source)
    examples: list[Any] = []
    for start in range(0, n, _CHUNK):
        indices = list(range(start, min(start + _CHUNK, n)))
        if hasattr(source, "__getitems__"):
            examples.extend(source.__getitems__(indices))
        else:
            examples.extend(source[i] for i in indices)
    if not examples:
        raise ValueError(f"TFDS data source {source!r} is empty")
    images = np.stack([np.asarray(e["image"]) for e in examples])
    return _to_arrays(images, np.asarray([int(e["label"]) for e in examples]))


def _read_with_tensorflow(tfds_name: str, data_dir, split: str, b) -> tuple[np.ndarray, ...]:
    if not module_available("tensorflow"):
        formats = ", ".join(sorted(_file_formats(b))) or "unknown"
        raise TFDSUnavailableError(
            f"TFDS dataset {tfds_name!r} in {b.data_dir} is stored as {formats}, which only "
            "TensorFlow can read, and TensorFlow is not installed. Either `pip install "
            "tensorflow`, or rebuild it readable without TensorFlow: "
            f"`tfds build {tfds_name} --file_format=array_record --data_dir DIR`."
        )
    tfds = _tfds()
    data = tfds.load(tfds_name, split=split, data_dir=None if data_dir is None else str(data_dir),
                     batch_size=-1, as_supervised=True, download=False)
    images, labels = tfds.as_numpy(data)
    return _to_arrays(np.asarray(images), np.asarray(labels))


def _to_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim == 3:  # grayscale stored without a channel axis
        images = images[..., None]
    if images.dtype != np.uint8:
        raise ValueError(f"TFDS images are {images.dtype}, expected uint8")
    return np.ascontiguousarray(images), labels.astype(np.int32).reshape(-1)
