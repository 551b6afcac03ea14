"""Orbax checkpoints of the surrogate, their metadata, and loading a trained surrogate.

Layout of a training run directory (also what we ship, minus older steps):

    surrogate.json     config, task (dataset, input shape, classes, archset), normaliser, metrics
    ckpt/<step>/       Orbax checkpoints of {params, batch_stats, opt_state, step}

A checkpoint that cannot be read (truncated, edited, written by a different model shape) raises
`CheckpointError` naming the directory and what to do, instead of an Orbax/TensorStore trace.
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import cached_property
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ac_jax.atomic import write_atomic
from ac_jax.surrogate.config import SurrogateConfig
from ac_jax.surrogate.model import Surrogate, SurrogateArch
from ac_jax.surrogate.state import Normaliser, abstract_state, make_optimizer, state_from

META_FILE = "surrogate.json"


class CheckpointError(RuntimeError):
    """A surrogate checkpoint is missing, corrupt or unreadable."""


class SurrogateMismatchError(ValueError):
    """A run directory or shipped surrogate belongs to a different config or task."""


def read_meta(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / META_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the surrogate is corrupt") from None


def write_meta(run_dir: str | Path, meta: dict) -> None:
    """Atomic (write then rename), so a kill never leaves half a metadata file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / META_FILE, json.dumps(meta, indent=1))


_RESUME_KEYS = ("arch", "optimizer", "lr", "momentum", "batch_size", "param_target", "seed")


def check_compatible(meta: dict, config: dict, task: dict, run_dir) -> None:
    """Raises `SurrogateMismatchError` if resuming `run_dir` with `config`/`task` is unsafe.

    Both configs are compared with their defaults filled in, so a run written before a field
    existed (e.g. `SurrogateArch.ensemble`) resumes when the new field has its default."""
    stored = json.loads(json.dumps(dataclasses.asdict(config_from_dict(meta["config"]))))
    config = json.loads(json.dumps(dataclasses.asdict(config_from_dict(config))))
    for key in _RESUME_KEYS:
        if stored.get(key) != config.get(key):
            raise SurrogateMismatchError(
                f"{run_dir} was trained with {key}={stored.get(key)!r}, now "
                f"{config.get(key)!r}; use another --out or delete the directory to restart"
            )
    for key in ("dataset", "input_shape", "num_classes"):
        if list_or(meta["task"].get(key)) != list_or(task.get(key)):
            raise SurrogateMismatchError(
                f"{run_dir} is a surrogate for {key}={meta['task'].get(key)!r}, not "
                f"{task.get(key)!r}; use another --out"
            )
    # Another training set means another normaliser and holdout split: the checkpoint's weights
    # would silently be evaluated (and exported) against data they were never trained on.
    stored, asked = meta["task"].get("num_records"), task.get("num_records")
    if stored is not None and asked is not None and stored != asked:
        raise SurrogateMismatchError(
            f"{run_dir} was trained on {stored} archset records, now {asked} (the archset "
            f"changed); delete the directory (or pass --fresh) to retrain from scratch"
        )


def list_or(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def manager(run_dir: str | Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        Path(run_dir).resolve() / "ckpt",
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )


def save(mgr: ocp.CheckpointManager, step: int, state: dict) -> None:
    mgr.save(step, args=ocp.args.StandardSave(state), force=True)


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_latest(mgr: ocp.CheckpointManager, template: dict, run_dir) -> dict:
    """The latest checkpoint restored into `template`'s structure, or `template` if none."""
    step = mgr.latest_step()
    if step is None:
        return template
    try:
        return mgr.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
    except Exception as err:  # Orbax raises many types (ValueError, KeyError, TensorStore errors)
        raise CheckpointError(
            f"checkpoint step {step} in {Path(run_dir) / 'ckpt'} cannot be restored "
            f"({type(err).__name__}: {str(err)[:300]}). It is corrupt or from a different "
            "surrogate shape: delete that step's folder to fall back to an earlier one, or "
            "train into a new --out"
        ) from None


@dataclasses.dataclass
class TrainedSurrogate:
    """A loaded surrogate with jitted encode / decode / predict functions."""

    config: SurrogateConfig
    variables: dict
    normaliser: "Normaliser"  # noqa: F821
    meta: dict
    path: Path | None = None

    @cached_property
    def model(self) -> Surrogate:
        return Surrogate(self.config.arch)

    @property
    def max_len(self) -> int:
        return self.config.arch.max_len

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["task"]["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["task"]["num_classes"])

    def encode(self, feats) -> jax.Array:
        return self._encode(self.variables, jnp.asarray(feats))

    def decode(self, y) -> jax.Array:
        return self._decode(self.variables, jnp.asarray(y))

    def predict(self, y) -> tuple[jax.Array, jax.Array]:
        return self._predict(self.variables, jnp.asarray(y))

    @cached_property
    def _encode(self):
        return jax.jit(lambda v, x: self.model.apply(v, x, method=Surrogate.encode))

    @cached_property
    def _decode(self):
        return jax.jit(lambda v, y: self.model.apply(v, y, method=Surrogate.decode))

    @cached_property
    def _predict(self):
        return jax.jit(lambda v, y: self.model.apply(v, y, method=Surrogate.predict))


def config_from_dict(d: dict) -> SurrogateConfig:
    arch = d.get("arch", {})
    arch = SurrogateArch(**{**arch, "widths": tuple(arch.get("widths", SurrogateArch.widths))})
    fields = {f.name for f in dataclasses.fields(SurrogateConfig)}
    return SurrogateConfig(**{k: v for k, v in d.items() if k in fields and k != "arch"}, arch=arch)


def load_surrogate(path: str | Path) -> TrainedSurrogate:
    """Loads a run directory (latest checkpoint) or a shipped surrogate directory."""

    path = Path(path)
    meta = read_meta(path)
    if meta is None:
        set_aside = _replaced_copies(path.resolve()) if not path.exists() else []
        hint = (f"; an interrupted export set the previous one aside at {set_aside[-1]} (move it "
                "back)" if set_aside else "")
        raise CheckpointError(
            f"no surrogate at {path} ({META_FILE} missing){hint}; train one with "
            "`python bin/train_surrogate.py --dataset <name>`"
        )
    try:
        cfg = config_from_dict(meta["config"])
        normaliser = Normaliser(**meta["normaliser"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path / META_FILE} lacks or mangles {err}; it is corrupt") from None
    model = Surrogate(cfg.arch)
    template = abstract_state(model, cfg, make_optimizer(cfg, 1))
    mgr = manager(path) if (path / "ckpt").exists() else None
    try:
        if mgr is None or mgr.latest_step() is None:
            raise CheckpointError(f"{path} has {META_FILE} but no checkpoint under {path / 'ckpt'}")
        state = restore_latest(mgr, template, path)
    finally:
        if mgr is not None:  # an open manager's threads would outlive the call
            mgr.close()
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    bad = [k for k, v in jax.tree_util.tree_leaves_with_path(variables) if not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {jax.tree_util.keystr(bad[0])}")
    return TrainedSurrogate(cfg, variables, normaliser, meta, path)


class ExportExistsError(FileExistsError):
    """The export target already holds something (a shipped surrogate, say) and replacing it
    was not asked for."""


def export_target_occupied(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds anything an export would replace."""
    out_dir = Path(out_dir)
    return out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir()))


def _replaced_copies(out_dir: Path) -> list[Path]:
    """Previous surrogates an interrupted `export` set aside (killed between its two renames)."""
    return sorted(out_dir.parent.glob(f".{out_dir.name}.replaced-*"))


def export(run_dir: str | Path, out_dir: str | Path, keep_optimizer: bool = False,
           overwrite: bool = False) -> Path:
    """Copies the latest checkpoint of `run_dir` (weights only by default) to `out_dir`.

    A non-empty `out_dir` is replaced only with `overwrite` (`ExportExistsError` otherwise),
    and then only once the new copy is complete: the export is written next to it and swapped
    in by two renames, undone if the second fails. A process killed between the two leaves the
    old surrogate beside `out_dir` (`.<name>.replaced-<pid>`); the next export puts it back
    first, and `load_surrogate` names it.
    """
    import shutil

    run_dir, out_dir = Path(run_dir).resolve(), Path(out_dir).resolve()
    if out_dir == run_dir:
        raise ValueError(f"cannot export {run_dir} onto itself (it would lose its checkpoints)")
    if not out_dir.exists() and _replaced_copies(out_dir):
        os.replace(_replaced_copies(out_dir)[-1], out_dir)
    if export_target_occupied(out_dir) and not overwrite:
        raise ExportExistsError(
            f"{out_dir} already holds a surrogate; refusing to replace it (export elsewhere, or "
            "ask for the replacement explicitly)")
    surrogate = load_surrogate(run_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        mgr = manager(staging)
        try:
            save(mgr, int(surrogate.meta.get("step", 0)), init_state_like(surrogate))
        finally:
            mgr.close()  # waits for the save to finish
        write_meta(staging, surrogate.meta)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return out_dir
    old = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
    os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()
    return out_dir


def init_state_like(surrogate: TrainedSurrogate) -> dict:
    """The state pytree `load_surrogate` expects, with a fresh (small) optimizer state."""

    tx = make_optimizer(surrogate.config, 1)
    return state_from(surrogate.variables, tx, int(surrogate.meta.get("step", 0)))
