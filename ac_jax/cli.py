"""Shared command-line plumbing for bin/*: config selection, overrides, logging."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path

from ac_jax.config import Config
from ac_jax.runtime import REPO_ROOT, enable_compilation_cache, repo_path  # noqa: F401 (bin/ uses them)
from configs import get_config


def add_config_args(parser: argparse.ArgumentParser, default: str = "fashion_mnist") -> None:
    parser.add_argument(
        "--dataset", "--config", dest="config", default=default,
        help="config name in configs/ (fashion_mnist, cifar10, cifar100, svhn, tiny)",
    )
    parser.add_argument("--variant", default=None, help="config variant (see the config file)")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field by its dotted path, e.g. --set "
                             "surrogate.steps=2000 --set archset.schedule.epochs=2 (repeatable; "
                             "the value is a Python literal of the field's type)")


# The cluster flags every training script shares: (flag, argparse keywords).
RAY_FLAGS = (
    ("--ray", {"metavar": "ADDRESS", "help": "train on Ray: 'local' starts an instance sized to "
               "this machine; an address ('auto', 'HOST:6379') joins a cluster started with ray "
               "start"}),
    ("--cpus-per-task", {"type": float, "default": 1.0,
                         "help": "CPUs each training task declares (default 1)"}),
    ("--gpus-per-task", {"type": float, "default": 0.0,
                         "help": "GPU share each training task declares, e.g. 0.25: four per GPU"}),
    ("--max-in-flight", {"type": int,
                         "help": "tasks submitted at once (default: twice the cluster's slots)"}),
)


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (optional extra: pip install -e '.[ray]')")
    for flag, keywords in RAY_FLAGS:
        group.add_argument(flag, **keywords)


def ray_runner(args: argparse.Namespace):
    """The `distributed.RayRunner` the flags ask for (connecting to Ray), or None."""
    if not getattr(args, "ray", None):
        return None
    from ac_jax import distributed

    try:
        distributed.connect(args.ray)
    except ImportError as err:
        sys.exit(f"error: {err}")
    return distributed.RayRunner(cpus_per_task=args.cpus_per_task,
                                 gpus_per_task=args.gpus_per_task,
                                 max_in_flight=args.max_in_flight)


def config_from_args(args: argparse.Namespace) -> Config:
    try:
        cfg = get_config(args.config, args.variant)
        if args.data_dir is not None:
            cfg = cfg.replace(data_dir=args.data_dir)
        for assignment in getattr(args, "set", None) or ():
            cfg = override(cfg, assignment)
    except ValueError as err:
        sys.exit(f"error: {err}")
    return cfg


def _literal(text: str, current):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, str):
            return text  # a bare word for a string field
        raise ValueError(f"cannot read {text!r} as a value") from None
    return _checked(value, current)


def _checked(value, current):
    """`value` for a field now holding `current`: lists become tuples, ints widen to floats,
    other types must match (a field holding None takes any value)."""
    if isinstance(value, list):
        value = tuple(value)
    if current is None or value is None:
        return value
    if isinstance(current, bool) or isinstance(value, bool):
        ok = isinstance(current, bool) and isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise ValueError(f"{value!r} is of type {type(value).__name__}; the field holds "
                         f"{type(current).__name__} values (now {current!r})")
    return value


def override(obj, assignment: str):
    """`obj` (a frozen dataclass tree, e.g. a `Config`) with the field at a dotted path
    replaced: ``override(cfg, "surrogate.steps=2000")``. The one override mechanism behind
    ``--set`` and the scripts' named flags; a wrong path or type is a ValueError naming it."""
    path, sep, text = assignment.partition("=")
    if not sep or not path.strip():
        raise ValueError(f"--set wants FIELD=VALUE, got {assignment!r}")
    return _replaced(obj, path.strip().split("."), text.strip(), path.strip())


def _replaced(obj, names: list, text, path: str, parsed: bool = False):
    if not dataclasses.is_dataclass(obj):
        raise ValueError(f"{path}: {type(obj).__name__} has no fields")
    fields = [f.name for f in dataclasses.fields(obj)]
    if names[0] not in fields:
        raise ValueError(f"{path}: no field {names[0]!r} in {type(obj).__name__} "
                         f"(fields: {', '.join(fields)})")
    current = getattr(obj, names[0])
    if len(names) > 1:
        value = _replaced(current, names[1:], text, path, parsed)
    else:
        value = _checked(text, current) if parsed else _literal(text, current)
    return dataclasses.replace(obj, **{names[0]: value})


def with_flags(cfg: Config, values: dict) -> Config:
    """`cfg` with each dotted field of `values` set to that (already typed) value, skipping None:
    a script's named flags (``--epochs`` -> ``archset.schedule.epochs``) go through the path
    walk and the type check of ``--set`` (`override`); a bad one exits with its message."""
    for path, value in values.items():
        if value is not None:
            try:
                cfg = _replaced(cfg, path.split("."), value, path, parsed=True)
            except ValueError as err:
                sys.exit(f"error: {err}")
    return cfg


def replace_schedule(cfg: Config, **changes) -> Config:
    """Returns `cfg` with archset schedule fields changed (None values are ignored)."""
    return with_flags(cfg, {f"archset.schedule.{k}": v for k, v in changes.items()})


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard must look like K/N (e.g. 0/4), got {text!r}")
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def surrogate_path(cfg: Config) -> Path:
    """Where bin/compress.py looks for the trained surrogate of the config's dataset."""
    return repo_path(f"surrogates/{cfg.dataset}")


def search_config(args: argparse.Namespace):
    """The embedding-search settings (`SearchConfig`'s defaults) with command-line overrides."""
    from ac_jax.compress.search import SearchConfig

    base = SearchConfig()
    changes = {"steps": args.steps, "step_size": args.step_size,
               "lambdas": tuple(args.lambdas) if args.lambdas else None,
               "objective": getattr(args, "objective", None)}
    if getattr(args, "plain_decoding", False):
        changes["anchored"] = False
    radius = getattr(args, "trust_radius", None)
    base = dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})
    if radius is not None:  # 0 switches the trust region off
        base = dataclasses.replace(base, trust_radius=radius if radius > 0 else None)
    return base


def verify_schedule(cfg: Config, args: argparse.Namespace):
    changes = {"epochs": args.verify_epochs, "train_subset": args.verify_train_subset,
               "test_subset": args.verify_test_subset}
    return dataclasses.replace(cfg.final_schedule, **{k: v for k, v in changes.items() if v is not None})


def load_dataset(cfg: Config):
    from ac_jax.data import DatasetNotFoundError, load

    try:
        return load(cfg.dataset, cfg.data_dir)
    except DatasetNotFoundError as err:
        sys.exit(f"error: {err}")


def asdict(obj) -> dict:
    return dataclasses.asdict(obj)


def progress(total: int, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
