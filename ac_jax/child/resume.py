"""Checkpoints of one training in progress (`ChildTrainer.train_resumable`).

A training of hours (CONV-7 under the paper's 50-epoch recipe is ~2.4 h for two seeds on a
2-core CPU) runs in stretches of epochs; after each, the seeds' state (flat parameters, batch
statistics, optimizer state with its step count), the epoch losses so far and the seconds spent
are written to one ``.npz`` file, atomically (a kill mid-write leaves the previous checkpoint).
A rerun of the same training finds it and continues from the next epoch.

The file names what it continues (`identity`: architecture, schedule, seeds, data shapes and
split, options, and a digest of the data and of any teacher's or warm start's variables); a
file that does not match, or cannot be read, is moved aside to ``<name>.unusable`` with a log
line and the training starts over: a checkpoint never continues another training, and a damaged
one costs its epochs, not the job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ac_jax.arch.json_spec import to_json
from ac_jax.atomic import write_atomic


@dataclasses.dataclass
class Progress:
    """Where a resumable training stands after its last finished stretch."""

    state: object  # the seeds' training state (device arrays)
    epochs_done: int
    epoch_losses: np.ndarray  # [seeds, epochs_done]
    train_seconds: float


def identity(arch, schedule, seeds, data, options, extra=None) -> dict:
    """What a checkpoint must match to be continued: the training's settings, and a digest of
    the arrays it reads (the data, and a teacher's or a warm start's variables in `extra`), so
    that same-shaped other data never continues it."""
    return {
        "digest": _digest([data.train_x, data.train_y, data.test_x, data.test_y,
                           *jax.tree_util.tree_leaves(extra or {})]),
        "arch": json.loads(to_json(arch)),
        "schedule": dataclasses.asdict(schedule),
        "seeds": [int(s) for s in seeds],
        "data": {"signature": json.loads(json.dumps(data.signature)),
                 "num_test": int(data.num_test), "evaluation": data.evaluation},
        "options": {"distill": None if options.distill is None else
                    {"teacher": json.loads(to_json(options.distill.teacher)),
                     "temperature": options.distill.temperature,
                     "alpha": options.distill.alpha},
                    "warm_start": options.warm_start},
    }


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(jax.device_get(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save(path: Path, ident: dict, progress: Progress) -> None:
    leaves = jax.tree_util.tree_leaves(jax.device_get(progress.state))
    meta = {"identity": ident, "epochs_done": progress.epochs_done,
            "train_seconds": progress.train_seconds}
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = io.BytesIO()
    np.savez(blob, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
             epoch_losses=np.asarray(progress.epoch_losses, np.float32),
             **{f"leaf{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    write_atomic(path, blob.getvalue(), durable=True)


# What reading a damaged checkpoint raises, whatever part of it is damaged.
UNREADABLE = (OSError, EOFError, KeyError, ValueError, TypeError, AttributeError,
              zipfile.BadZipFile)


def _meta(f) -> dict:
    """The metadata of an open checkpoint (`np.load`): identity, epochs_done, train_seconds."""
    return json.loads(bytes(f["meta"]).decode())


def load(path: Path, ident: dict, state_shape, log=print) -> Progress | None:
    """The checkpoint at `path` if it continues the training `ident` names and its arrays have
    `state_shape`'s structure, shapes and dtypes; None if there is none. An unusable file is
    moved aside (`<name>.unusable`) and None returned."""
    if not path.exists():
        return None
    leaves_shape, treedef = jax.tree_util.tree_flatten(state_shape)
    try:
        with np.load(path) as f:
            meta = _meta(f)
            leaves = [f[f"leaf{i}"] for i in range(len(leaves_shape))]
            losses = f["epoch_losses"]
            extra_leaves = any(k.startswith("leaf") and int(k[4:]) >= len(leaves_shape)
                               for k in f.files)
        problem = None
        if meta["identity"] != json.loads(json.dumps(ident)):
            problem = "it belongs to another training (architecture, schedule, seeds or data)"
        elif extra_leaves or any(leaf.shape != s.shape or leaf.dtype != s.dtype
                                 for leaf, s in zip(leaves, leaves_shape)):
            problem = "its arrays do not fit this training's state"
        elif losses.shape != (len(ident["seeds"]), meta["epochs_done"]):
            problem = "its epoch losses do not match its epoch count"
    except UNREADABLE as err:
        problem = f"it cannot be read ({type(err).__name__}: {err})"
    if problem is not None:
        aside = path.with_name(path.name + ".unusable")
        os.replace(path, aside)
        log(f"checkpoint {path} not used: {problem}; moved to {aside.name}, training from the "
            "start")
        return None
    state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])
    return Progress(state, int(meta["epochs_done"]), np.asarray(losses, np.float32),
                    float(meta["train_seconds"]))


def peek(path: Path) -> dict | None:
    """How far the checkpoint at `path` got (`epochs_done`, `train_seconds`), for reports; None
    if there is none or it cannot be read. Reads only its metadata, checks nothing against any
    training and never moves the file (`load` decides whether it is continued)."""
    try:
        with np.load(path) as f:
            meta = _meta(f)
        return {"epochs_done": int(meta["epochs_done"]),
                "train_seconds": float(meta["train_seconds"])}
    except UNREADABLE:
        return None


def discard(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)
