"""Shared command-line plumbing for bin/*: config selection, overrides, logging."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ac_jax.config import Config, get_config
from ac_jax.runtime import REPO_ROOT, enable_compilation_cache, repo_path  # noqa: F401 (bin/ uses them)

def add_config_args(parser: argparse.ArgumentParser, default: str = "fashion_mnist") -> None:
    parser.add_argument(
        "--dataset", "--config", dest="config", default=default,
        help="config name in configs/ (fashion_mnist, cifar10, cifar100, svhn, tiny)",
    )
    parser.add_argument("--variant", default=None, help="config variant (see the config file)")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset files")


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster (optional extra: pip install -e '.[ray]')")
    g.add_argument("--ray", metavar="ADDRESS",
                   help="train on Ray: 'local' starts an instance sized to this machine; an "
                        "address ('auto', 'HOST:6379') joins a cluster started with ray start")
    g.add_argument("--cpus-per-task", type=float, default=1.0,
                   help="CPUs each training task declares (default 1)")
    g.add_argument("--gpus-per-task", type=float, default=0.0,
                   help="GPU share each training task declares, e.g. 0.25: four per GPU")
    g.add_argument("--max-in-flight", type=int,
                   help="tasks submitted at once (default: twice the cluster's task slots)")


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
    except ValueError as err:
        sys.exit(f"error: {err}")
    if args.data_dir is not None:
        cfg = cfg.replace(data_dir=args.data_dir)
    return cfg


def replace_schedule(cfg: Config, **changes) -> Config:
    """Returns `cfg` with archset schedule fields changed (None values are ignored)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return cfg
    schedule = dataclasses.replace(cfg.archset.schedule, **changes)
    return cfg.replace(archset=dataclasses.replace(cfg.archset, schedule=schedule))


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
