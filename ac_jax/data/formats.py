"""Readers for the original file formats (idx, CIFAR pickles, SVHN .mat) into NHWC uint8 arrays."""

# Every reader takes the folder (or CIFAR archive) holding the files and returns a Splits; a corrupt
# or truncated file raises ValueError naming it. Finding the folder is datasets.py's job.

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np


class Splits(NamedTuple):
    """Train and test arrays: images [N, H, W, C] uint8, labels [N] int32."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: idx files (http://yann.lecun.com/exdb/mnist/ describes the format).
# --------------------------------------------------------------------------------------------

FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when the name ends in ``.gz``."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped or not) as a uint8 array of the declared shape."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated idx file ({len(data)} bytes, no header)")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: idx magic number is {magic}, expected {expected_magic}")
    if magic >> 8 != 0x08:  # third header byte 0x08 = unsigned byte payload
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic number {magic})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx file (header needs {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(
            f"{path}: truncated or corrupt idx file: {len(data)} bytes, expected {expected} "
            f"for shape {shape}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def find_files(folder: Path, names: list[str], gz_ok: bool = False) -> list[Path] | None:
    """The paths of ``names`` in ``folder`` (each also as ``name.gz`` if ``gz_ok``), else None."""
    found = []
    for name in names:
        options = [folder / (name + ".gz"), folder / name] if gz_ok else [folder / name]
        path = next((p for p in options if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def read_fashion_mnist(folder: str | Path) -> Splits:
    """The four Fashion-MNIST idx files in ``folder`` (gzipped or not) as [N, 28, 28, 1] uint8."""
    paths = find_files(Path(folder), list(FASHION_MNIST_FILES.values()), gz_ok=True)
    if paths is None:
        raise FileNotFoundError(f"{folder}: missing some of {list(FASHION_MNIST_FILES.values())}")
    train_x, train_y, test_x, test_y = paths
    return Splits(*_idx_split(train_x, train_y), *_idx_split(test_x, test_y))


def _idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    _check_labels(labels, 10, labels_path)
    return images[..., None], labels.astype(np.int32)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: pickled dicts with byte-string keys (Python 2 cPickle).
# --------------------------------------------------------------------------------------------

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_TRAIN = ["train"]
CIFAR100_TEST = ["test"]

# numpy's pickling entry points, old (numpy.core) and new (numpy._core) spellings, and the bytes
# decoder of Python 3 protocol-2 pickles; nothing else may be imported while unpickling, so a
# tampered download cannot execute code.
_NUMPY_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core."):  # the originals' spelling; numpy 2 warns on it
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # pickle raises many types (EOFError, UnpicklingError, ValueError...)
        raise ValueError(
            f"{where}: unreadable CIFAR pickle, corrupt or truncated ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    # The originals use byte-string keys; accept str keys too (re-pickled copies).
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _member_reader(source: Path, folder: str) -> Callable[[str], tuple[bytes, str]]:
    """Reads ``name`` from the folder ``source`` or from ``folder/name`` in the archive."""
    if source.is_dir():
        return lambda name: ((source / name).read_bytes(), str(source / name))

    def from_archive(name: str) -> tuple[bytes, str]:
        where = f"{source}:{folder}/{name}"
        try:
            with tarfile.open(source, "r:*") as tar:
                member = tar.extractfile(f"{folder}/{name}")
                if member is None:
                    raise KeyError(name)
                return member.read(), where
        except (tarfile.TarError, KeyError, OSError, EOFError) as e:
            raise ValueError(f"{where}: cannot read from the archive ({e})") from e

    return from_archive


def _read_cifar_batches(read, names: list[str], label_key: str, num_classes: int):
    images, labels = [], []
    for name in names:
        raw, where = read(name)
        batch = _unpickle(raw, where)
        if "data" not in batch or label_key not in batch:
            raise ValueError(f"{where}: missing key b'data' or b'{label_key}'")
        data = np.asarray(batch["data"])
        y = np.asarray(batch[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{where}: b'data' is {data.dtype}{list(data.shape)}, "
                             "expected uint8 [N, 3072]")
        if y.shape != (len(data),):
            raise ValueError(f"{where}: {len(data)} images but {y.size} labels")
        _check_labels(y, num_classes, where)
        # Rows are channel-major (1024 red, 1024 green, 1024 blue, each row-major 32x32).
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y.astype(np.int32))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def read_cifar(source: str | Path, folder: str, train: list[str], test: list[str],
               label_key: str, num_classes: int) -> Splits:
    """CIFAR batches from the extracted folder ``source`` or the ``.tar.gz`` archive ``source``."""
    read = _member_reader(Path(source), folder)
    return Splits(*_read_cifar_batches(read, train, label_key, num_classes),
                  *_read_cifar_batches(read, test, label_key, num_classes))


def read_cifar10(source: str | Path) -> Splits:
    """CIFAR-10 from ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``: [N, 32, 32, 3]."""
    return read_cifar(source, CIFAR10_FOLDER, CIFAR10_TRAIN, CIFAR10_TEST, "labels", 10)


def read_cifar100(source: str | Path) -> Splits:
    """CIFAR-100 (fine labels) from ``cifar-100-python/`` or its ``.tar.gz``: [N, 32, 32, 3]."""
    return read_cifar(source, CIFAR100_FOLDER, CIFAR100_TRAIN, CIFAR100_TEST, "fine_labels", 100)


# --------------------------------------------------------------------------------------------
# SVHN (cropped digits): MATLAB v5 files with X [32, 32, 3, N] and y [N, 1], digit 0 as 10.
# --------------------------------------------------------------------------------------------

SVHN_FILES = ["train_32x32.mat", "test_32x32.mat"]


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN ``*_32x32.mat`` file as ([N, 32, 32, 3] uint8, [N] int32 labels 0..9)."""
    import scipy.io  # only SVHN needs scipy.io; keep importing the package cheap

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises ValueError, TypeError, OSError... on bad files
        raise ValueError(f"{path}: corrupt or truncated .mat file ({type(e).__name__}: {e})")
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: missing variable X or y")
    x, y = mat["X"], mat["y"].reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise ValueError(f"{path}: X is {x.dtype}{list(x.shape)}, expected uint8 [32, 32, 3, N]")
    if len(y) != x.shape[3]:
        raise ValueError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    y = np.where(y == 10, 0, y)  # SVHN stores the digit 0 as label 10
    _check_labels(y, 10, path)
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y.astype(np.int32)


def read_svhn(folder: str | Path) -> Splits:
    """``train_32x32.mat`` and ``test_32x32.mat`` from ``folder`` (the ``extra`` set is unused)."""
    folder = Path(folder)
    return Splits(*read_svhn_mat(folder / SVHN_FILES[0]), *read_svhn_mat(folder / SVHN_FILES[1]))


def _check_labels(labels: np.ndarray, num_classes: int, where) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )
