"""Shared command-line plumbing for bin/*: config selection, overrides, logging."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from ac_jax.config import Config, get_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def add_config_args(parser: argparse.ArgumentParser, default: str = "fashion_mnist") -> None:
    parser.add_argument(
        "--dataset", "--config", dest="config", default=default,
        help="config name in configs/ (fashion_mnist, cifar10, cifar100, svhn, tiny)",
    )
    parser.add_argument("--variant", default=None, help="config variant (see the config file)")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset files")


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


def repo_path(path: str | os.PathLike) -> Path:
    """Relative paths in configs are relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path
