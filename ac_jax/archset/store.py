"""The archset store: one SQLite file of trained architectures, safe to kill at any moment.

Each finished architecture is one row, written in its own transaction with
``synchronous=FULL`` (durable once the call returns) and keyed by its position `idx` in the
deterministic sample plan, so a restarted or parallel worker never loses or duplicates a record
(``INSERT OR IGNORE``). The `meta` table pins what the records mean (dataset, schedule, seeds,
sampler); opening a file with different settings is an error rather than a silent mix.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ac_jax.arch.spec import Arch, Layer

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    idx INTEGER PRIMARY KEY,
    arch_key TEXT NOT NULL UNIQUE,
    layers TEXT NOT NULL,
    source TEXT NOT NULL,
    num_params INTEGER NOT NULL,
    macs INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    seed_accuracies TEXT NOT NULL,
    mean_accuracy REAL,
    epoch_losses TEXT NOT NULL,
    compile_seconds REAL NOT NULL,
    train_seconds REAL NOT NULL,
    worker TEXT NOT NULL,
    finished_at REAL NOT NULL
);
"""


class ArchsetMismatchError(ValueError):
    """An existing archset was made with other settings than the ones asked for now."""


@dataclasses.dataclass(frozen=True)
class Record:
    idx: int
    arch: Arch
    source: str
    num_params: int
    macs: int
    status: str
    reason: str
    seed_accuracies: tuple[float, ...]
    mean_accuracy: float | None
    epoch_losses: tuple[tuple[float, ...], ...]
    compile_seconds: float
    train_seconds: float
    worker: str = ""
    finished_at: float = 0.0


def arch_key(arch: Arch) -> str:
    """A string naming `arch`'s layers (an exact Dropout rate is appended as ``@rate``)."""
    return ";".join(",".join(str(int(v)) for v in layer)
                    + ("" if layer.rate is None else f"@{layer.rate!r}") for layer in arch.layers)


def layer_rows(arch: Arch) -> list[list]:
    """`arch`'s layers as JSON rows: five integers, and a Dropout's exact rate as a sixth
    value where p / 10 is not it (older files hold five values only; both load)."""
    return [list(layer) + ([layer.rate] if layer.rate is not None else [])
            for layer in arch.layers]


class ArchsetStore:
    """Opens (creating if needed) an archset file; `meta` must match what is stored."""

    def __init__(self, path: str | Path, meta: dict | None = None, readonly: bool = False):
        self.path = Path(path)
        if readonly and not self.path.exists():
            raise FileNotFoundError(f"no archset at {self.path}")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            self._db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(SCHEMA)
            stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{self.path} is not a readable archset ({err})") from None
        self.meta = {k: json.loads(v) for k, v in stored.items()}
        if meta is not None:
            self._check_or_write_meta(meta)

    def _check_or_write_meta(self, meta: dict) -> None:
        meta = json.loads(json.dumps(meta))  # normalise tuples to lists
        if not self.meta:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for key, value in meta.items():
                    self._db.execute(
                        "INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, json.dumps(value))
                    )
            self.meta = {
                k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")
            }
        stored = dict(self.meta)
        # Files written before the validation protocol hold test-set accuracies and have no
        # "evaluation" key: they count as labelled on "test", never resumed as validation.
        if "evaluation" in meta:
            stored.setdefault("evaluation", "test")
        differing = [k for k in meta if k in stored and stored[k] != meta[k]]
        if differing:
            details = "; ".join(f"{k}: stored {stored[k]!r}, asked {meta[k]!r}" for k in differing)
            raise ArchsetMismatchError(
                f"archset {self.path} was made with other settings ({details}). Use another "
                "output path, or the same settings to resume it."
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def done_indices(self) -> set[int]:
        return {row[0] for row in self._db.execute("SELECT idx FROM records")}

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def add(self, record: Record) -> bool:
        """Durably stores one record; False if its idx (or architecture) is already there."""
        row = (
            record.idx,
            arch_key(record.arch),
            json.dumps(layer_rows(record.arch)),
            record.source,
            record.num_params,
            record.macs,
            record.status,
            record.reason,
            json.dumps(list(record.seed_accuracies)),
            record.mean_accuracy,
            json.dumps([list(r) for r in record.epoch_losses]),
            record.compile_seconds,
            record.train_seconds,
            record.worker,
            record.finished_at or time.time(),
        )
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO records VALUES (" + ",".join("?" * len(row)) + ")", row
        )
        return cursor.rowcount == 1

    def records(self, statuses: Sequence[str] | None = None) -> list[Record]:
        query = "SELECT * FROM records"
        if statuses is not None:
            query += " WHERE status IN (" + ",".join("?" * len(statuses)) + ")"
        rows = self._db.execute(query + " ORDER BY idx", tuple(statuses or ())).fetchall()
        shape, classes = tuple(self.meta["input_shape"]), int(self.meta["num_classes"])
        return [_record_from_row(row, shape, classes) for row in rows]

    def merge_from(self, other: "ArchsetStore") -> int:
        """Copies the other store's records that are not here yet; returns how many."""
        self._check_or_write_meta(other.meta)
        added = 0
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for record in other.records():
                added += self.add(record)
        return added


def record_of(idx: int, arch: Arch, source: str, result, **fields) -> Record:
    """The record of `arch` after a training whose outcome is `result` (a
    `ac_jax.child.trainer.TrainResult`), finished now; `fields` override the rest (worker...)."""
    values = dict(
        idx=idx, arch=arch, source=source, num_params=arch.num_params, macs=arch.macs,
        status=result.status, reason=result.reason, seed_accuracies=result.seed_accuracies,
        mean_accuracy=result.mean_accuracy if result.seed_accuracies else None,
        epoch_losses=result.epoch_losses, compile_seconds=result.compile_seconds,
        train_seconds=result.train_seconds, finished_at=time.time(),
    )
    return Record(**{**values, **fields})


def _record_from_row(row, input_shape, num_classes) -> Record:
    layers = tuple(Layer(*v) for v in json.loads(row[2]))
    return Record(
        idx=row[0],
        arch=Arch(input_shape, num_classes, layers),
        source=row[3],
        num_params=row[4],
        macs=row[5],
        status=row[6],
        reason=row[7],
        seed_accuracies=tuple(json.loads(row[8])),
        mean_accuracy=row[9],
        epoch_losses=tuple(tuple(r) for r in json.loads(row[10])),
        compile_seconds=row[11],
        train_seconds=row[12],
        worker=row[13],
        finished_at=row[14],
    )


@dataclasses.dataclass(frozen=True)
class ArchsetArrays:
    """An archset as arrays for surrogate training (successful records only by default)."""

    matrices: np.ndarray  # [N, T, 5] int64, zero-padded
    lengths: np.ndarray  # [N]
    accuracy: np.ndarray  # [N] mean accuracy over seeds
    num_params: np.ndarray  # [N]
    macs: np.ndarray  # [N]
    idx: np.ndarray  # [N] position in the sample plan
    input_shape: tuple[int, int, int]
    num_classes: int


def load_arrays(
    paths: str | Path | Iterable[str | Path],
    max_len: int = 64,
    statuses: Sequence[str] = ("ok",),
) -> ArchsetArrays:
    """Reads one or several archset files (same task) into arrays."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records, shape, classes = [], None, None
    for path in paths:
        with ArchsetStore(path, readonly=True) as store:
            these = store.records(statuses)
            task = (tuple(store.meta["input_shape"]), int(store.meta["num_classes"]))
        if shape is not None and task != (shape, classes):
            raise ValueError(f"{path} is for input {task}, others for {(shape, classes)}")
        shape, classes = task
        records += these
    if not records:
        raise ValueError(f"no records with status {list(statuses)} in {list(map(str, paths))}")
    too_long = [r.idx for r in records if len(r.arch) > max_len]
    if too_long:
        raise ValueError(f"records {too_long[:5]} have more than max_len={max_len} layers")
    return ArchsetArrays(
        matrices=np.stack([r.arch.to_matrix(max_len) for r in records]),
        lengths=np.array([len(r.arch) for r in records]),
        accuracy=np.array([r.mean_accuracy for r in records], np.float64),
        num_params=np.array([r.num_params for r in records], np.int64),
        macs=np.array([r.macs for r in records], np.int64),
        idx=np.array([r.idx for r in records], np.int64),
        input_shape=shape,
        num_classes=classes,
    )
