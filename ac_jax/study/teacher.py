"""The teacher of a distilling stage (`long_final`, `--long-final-distill`): the original trained
once, plainly, with the stage's schedule and seed 0, its weights kept in
``<out>/teacher_e<E>.msgpack``.

Every student of the stage distils from that one file, so a stage resumed in another session
(or on another machine) distils from the very same network instead of a retrained one whose
weights differ. The file records what it was trained with; one made with other settings, or
unreadable, is refused with a message, never silently retrained over or used.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from ac_jax.arch.spec import Arch
from ac_jax.archset.store import arch_key
from ac_jax.atomic import write_atomic
from ac_jax.child import resume
from ac_jax.child.model import init_variables
from ac_jax.child.trainer import ChildTrainer, DeviceData, TrainOptions, TrainSchedule

SEED = 0


def path_for(out: Path, schedule: TrainSchedule) -> Path:
    return Path(out) / f"teacher_e{schedule.epochs}.msgpack"


def identity(arch: Arch, data: DeviceData, schedule: TrainSchedule) -> dict:
    """What the file must have been trained with to be this stage's teacher (as its JSON reads
    back: tuples as lists)."""
    return json.loads(json.dumps({
        "arch_key": arch_key(arch), "schedule": dataclasses.asdict(schedule), "seed": SEED,
        "train_images": int(data.train_x.shape[0]), "evaluation": data.evaluation}))


def load_or_train(arch: Arch, data: DeviceData, schedule: TrainSchedule, out: Path,
                  chunk_epochs: int, log=print) -> tuple[dict, dict]:
    """(variables, info): the stored teacher, or a new one trained now (checkpointed every
    `chunk_epochs` epochs, so a kill costs one stretch). `info` holds the identity plus the
    teacher's ``test_accuracy`` (on `data`'s evaluation split) and ``train_seconds``."""
    path = path_for(out, schedule)
    ident = identity(arch, data, schedule)
    if path.is_file():
        return read(path, arch, ident)
    log(f"teacher: the original ({arch.num_params:,} parameters, {schedule.epochs} epochs, "
        f"seed {SEED}), weights kept in {path.name}")
    checkpoint = path.with_name(path.stem + ".partial") / "original.npz"
    trainer = ChildTrainer(data, schedule, 1, TrainOptions(keep_weights=True))
    result = trainer.train_resumable(arch, [SEED], checkpoint, chunk_epochs,
                                     log=lambda line: log(f"teacher: {line}"),
                                     remove_checkpoint=False)
    if result.status != "ok":  # nothing sensible to distil from: stop, keep the checkpoint
        raise RuntimeError(f"the teacher did not train ({result.status}: {result.reason})")
    info = {**ident, "test_accuracy": result.seed_accuracies[0],
            "train_seconds": result.train_seconds}
    write(path, result.variables[0], info)
    resume.discard(checkpoint)  # only once the file is in place
    return read(path, arch, ident)  # the file's arrays, as every resumed run will see them


def write(path: Path, variables: dict, info: dict) -> None:
    """Atomic: a kill mid-write leaves no file (the next run retrains), never half of one."""
    blob = serialization.msgpack_serialize(
        {"info": json.dumps(info), "variables": jax.device_get(variables)})
    write_atomic(path, blob)


def read(path: Path, arch: Arch, ident: dict) -> tuple[dict, dict]:
    try:
        blob = serialization.msgpack_restore(path.read_bytes())
        info, variables = json.loads(blob["info"]), blob["variables"]
    except Exception as err:  # any decoding failure means the same thing: a damaged file
        raise ValueError(f"{path} is not a readable teacher file ({type(err).__name__}: {err}); "
                         "delete it to train the teacher again") from err
    differ = sorted(k for k in ident if info.get(k) != ident[k])
    if differ:
        raise ValueError(f"{path} holds a teacher trained with other settings (differs in "
                         f"{', '.join(differ)}); move it away to train this stage's teacher")
    _check_shapes(path, arch, variables)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}, info


def _check_shapes(path: Path, arch: Arch, variables: dict) -> None:
    """The stored arrays must be the network's: a mismatch would surface as an XLA error."""
    expected = jax.eval_shape(lambda k: init_variables(arch, k), jax.random.key(0))
    expected = {"params": expected["params"], "batch_stats": expected.get("batch_stats", {})}
    got = {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}
    shape = lambda tree: jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), tree)  # noqa: E731
    if shape(expected) != shape(got):
        raise ValueError(f"{path}: its arrays are not the original's; delete it to train the "
                         "teacher again")
