"""The in-memory ``Dataset`` type, the dataset registry, and ``load`` (find files or TFDS, read)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable


from ac_jax.data import formats, tfds_source
from ac_jax.data.dataset import EVALUATIONS, Dataset, stratified_indices  # noqa: F401 (re-exported)
from ac_jax.data.synthetic import synthetic

DATA_DIR_ENV = "AC_JAX_DATA_DIR"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SOURCES = ("auto", "files", "tfds")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is in none of the places searched; the message says where to put it."""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to find, read and describe one dataset."""

    name: str
    title: str
    num_classes: int
    augment: bool
    tfds_name: str
    subfolders: tuple[str, ...]  # tried under data_dir, after data_dir itself
    required: tuple[str, ...]  # files that must all be in a folder for it to count
    read: Callable[[Path], formats.Splits]
    how_to_get: str
    gz_ok: bool = False  # each required file may also be present as name.gz
    archive: str | None = None  # read directly when present in data_dir
    system_dirs: tuple[Path, ...] = ()

    def folders(self, data_dir: Path | None) -> list[Path]:
        """Every folder that may hold the files, in search order."""
        found = []
        if data_dir is not None:
            found += [data_dir] + [data_dir / s for s in self.subfolders]
        return found + list(self.system_dirs)

    def locate(self, data_dir: Path | None) -> Path | None:
        """The first folder holding all required files, else the archive in data_dir, else None."""
        for folder in self.folders(data_dir):
            if formats.find_files(folder, list(self.required), self.gz_ok) is not None:
                return folder
        if self.archive and data_dir is not None and (data_dir / self.archive).is_file():
            return data_dir / self.archive
        return None

    def looked_for(self, data_dir: Path | None) -> list[str]:
        """Human-readable descriptions of every place searched."""
        files = ", ".join(f + ("[.gz]" if self.gz_ok else "") for f in self.required)
        lines = [f"{folder}/{{{files}}}" for folder in self.folders(data_dir)]
        if self.archive and data_dir is not None:
            lines.append(str(data_dir / self.archive))
        if data_dir is None:
            lines.append(f"(no data dir: pass --data-dir / data_dir= or set ${DATA_DIR_ENV})")
        return lines


_TFDS_HINT = (
    "Or use TensorFlow Datasets: on a machine with internet run `tfds build {tfds} "
    "--file_format=array_record --data_dir DIR` (array_record is readable without TensorFlow), "
    "copy DIR here and pass it as --data-dir."
)

def _cifar_spec(classes: int) -> DatasetSpec:
    """CIFAR-10 or CIFAR-100: the same layout, names differing by the class count."""
    folder, archive = (getattr(formats, f"CIFAR{classes}_{part}") for part in ("FOLDER", "ARCHIVE"))
    return DatasetSpec(
        name=f"cifar{classes}", title=f"CIFAR-{classes}", num_classes=classes, augment=True,
        tfds_name=f"cifar{classes}", subfolders=(folder,),
        required=tuple(getattr(formats, f"CIFAR{classes}_TRAIN")
                       + getattr(formats, f"CIFAR{classes}_TEST")),
        read=getattr(formats, f"read_cifar{classes}"), archive=archive,
        how_to_get=(
            f"Download https://www.cs.toronto.edu/~kriz/{archive} and extract it into "
            f"--data-dir (`tar xzf {archive} -C DATA_DIR`, giving DATA_DIR/{folder}/), or just "
            "put the .tar.gz there."
        ),
    )


_SPECS = [
    DatasetSpec(
        name="fashion_mnist", title="Fashion-MNIST", num_classes=10, augment=False,
        tfds_name="fashion_mnist", subfolders=("fashion-mnist", "fashion_mnist"),
        required=tuple(formats.FASHION_MNIST_FILES.values()), gz_ok=True,
        read=formats.read_fashion_mnist, system_dirs=(FASHION_MNIST_SYSTEM_DIR,),
        how_to_get=(
            "Install the Debian package (`sudo apt-get install dataset-fashion-mnist`, which puts "
            f"the files in {FASHION_MNIST_SYSTEM_DIR}), or download the four idx files from "
            "https://github.com/zalandoresearch/fashion-mnist (data/fashion/) into --data-dir."
        ),
    ),
    _cifar_spec(10),
    _cifar_spec(100),
    DatasetSpec(
        name="svhn", title="SVHN", num_classes=10, augment=False, tfds_name="svhn_cropped",
        subfolders=("svhn",), required=tuple(formats.SVHN_FILES), read=formats.read_svhn,
        how_to_get=(
            "Download http://ufldl.stanford.edu/housenumbers/train_32x32.mat and "
            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat into --data-dir."
        ),
    ),
]
SPECS = {spec.name: spec for spec in _SPECS}
DATASETS = tuple(SPECS) + ("synthetic",)

_ALIASES = {
    "fashion_mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist",
    "cifar10": "cifar10", "cifar100": "cifar100",
    "svhn": "svhn", "svhn_cropped": "svhn",
    "synthetic": "synthetic",
}


def canonical_name(name: str) -> str:
    """The registry name for ``name``: case, ``-``/``_`` and spaces do not matter."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    # cifar_10 / cifar_100 -> cifar10 / cifar100
    key = key.replace("cifar_", "cifar")
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return _ALIASES[key]


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------


def load(name: str, data_dir: str | Path | None = None, source: str = "auto",
         train_subset: int | None = None, test_subset: int | None = None,
         seed: int = 0) -> Dataset:
    """Load dataset ``name`` (any spelling :func:`canonical_name` accepts).

    Where it looks, in order, with ``source="auto"``:

    1. the original files under ``data_dir`` (default: ``$AC_JAX_DATA_DIR``), directly or in the
       dataset's usual sub-folder (``cifar-10-batches-py/``, ``fashion-mnist/``, ``svhn/``...) or,
       for CIFAR, the downloaded ``.tar.gz``; Fashion-MNIST also in
       ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
    2. a TFDS-prepared copy in ``data_dir`` (default: TFDS's own data dir), if TFDS is installed.

    ``source="files"`` and ``source="tfds"`` search only one of the two; ``synthetic`` ignores
    ``source`` and ``data_dir`` and takes its default sizes, seeded with ``seed``.
    ``train_subset`` / ``test_subset`` keep that many examples (:meth:`Dataset.subset` with
    ``seed``). Raises :class:`DatasetNotFoundError` when the dataset is nowhere, ``ValueError``
    naming the file when a file is corrupt or truncated.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    name = canonical_name(name)
    if name == "synthetic":
        dataset = synthetic(seed=seed)
    else:
        dataset = _load_real(SPECS[name], _resolve_data_dir(data_dir), source)
    if train_subset is None and test_subset is None:
        return dataset
    return dataset.subset(train_subset, test_subset, seed)


def _resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    return None if data_dir is None else Path(data_dir).expanduser()


def _load_real(spec: DatasetSpec, data_dir: Path | None, source: str) -> Dataset:
    if source in ("auto", "files"):
        location = spec.locate(data_dir)
        if location is not None:
            return _make(spec, spec.read(location), spec.num_classes)
    # With data_dir None, TFDS uses its own default data dir.
    if source in ("auto", "tfds") and tfds_source.is_prepared(spec.tfds_name, data_dir):
        splits, num_classes = tfds_source.load_splits(spec.tfds_name, data_dir)
        return _make(spec, splits, num_classes)
    raise DatasetNotFoundError(not_found_message(spec, data_dir, source))


def _make(spec: DatasetSpec, splits: formats.Splits, num_classes: int) -> Dataset:
    return Dataset(spec.name, *splits, num_classes=num_classes, augment=spec.augment)


def not_found_message(spec: DatasetSpec, data_dir: Path | None, source: str) -> str:
    """Where ``spec`` was looked for, where to put it, and how to get it."""
    lines = [f"{spec.title} not found (source={source!r})."]
    if source in ("auto", "files"):
        lines.append("Looked for the original files in:")
        lines += [f"  {place}" for place in spec.looked_for(data_dir)]
    if source in ("auto", "tfds"):
        where = data_dir if data_dir is not None else tfds_source.default_data_dir()
        if tfds_source.module_available("tensorflow_datasets"):
            lines.append(f"Looked for a prepared TFDS {spec.tfds_name!r} in {where}: not there.")
        else:
            lines.append(f"TFDS {spec.tfds_name!r}: tensorflow_datasets is not installed.")
    lines.append(f"To get it: {spec.how_to_get}")
    lines.append(_TFDS_HINT.format(tfds=spec.tfds_name))
    return "\n".join(lines)
