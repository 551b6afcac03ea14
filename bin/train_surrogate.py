#!/usr/bin/env python3
"""Trains the surrogate (encoder/decoder + accuracy and parameter regressors) on an archset.

  python bin/train_surrogate.py --dataset fashion_mnist --variant cpu --force  # the shipped one
  python bin/train_surrogate.py --dataset fashion_mnist --steps 80000 --optimizer sgd_nesterov

Resumable: rerun the same command after a kill and it continues from the last checkpoint in --out.
After the archset grew, resuming is refused (the checkpoint saw other data): pass --fresh to
delete the run directory and train from scratch.
At the end it prints held-out metrics and exports the weights to --export-to (default
surrogates/<dataset>/, where bin/compress.py looks for them). An export never replaces what is
already there (the shipped surrogate, say) unless --force is given:

  python bin/train_surrogate.py --dataset fashion_mnist --variant cpu --export-to surrogates/mine
  python bin/train_surrogate.py --dataset fashion_mnist --variant cpu --force   # replace shipped
"""

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ac_jax import cli  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cli.add_config_args(parser)
    parser.add_argument("--archset", nargs="+", help="archset file(s) (default: the config's)")
    parser.add_argument("--out", help="run directory with checkpoints (default runs/surrogate/<name>)")
    parser.add_argument("--export-to", "--export", dest="export",
                        help="where to put the trained weights (default surrogates/<dataset>)")
    parser.add_argument("--force", action="store_true",
                        help="let the export replace a surrogate already at its target")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the run directory first (no resume)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--optimizer", choices=["sgd_nesterov", "adam", "adamw"])
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from ac_jax.archset.store import load_arrays
    from ac_jax.surrogate import checkpoint, train

    cfg = cli.with_flags(cli.config_from_args(args), {
        f"surrogate.{k}": getattr(args, k) for k in ("steps", "optimizer", "lr", "batch_size",
                                                     "seed")})
    scfg = cfg.surrogate
    paths = args.archset or [str(cli.repo_path(cfg.archset.path))]
    try:
        arrays = load_arrays(paths, max_len=scfg.arch.max_len)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}\nbuild an archset first: python bin/make_archset.py --dataset {args.config}")
    run_dir = Path(args.out) if args.out else cli.repo_path(f"runs/surrogate/{cfg.name}")
    task = {
        "dataset": cfg.dataset,
        "config": cfg.name,
        "input_shape": list(arrays.input_shape),
        "num_classes": arrays.num_classes,
        "archsets": [str(p) for p in paths],
        "num_records": int(len(arrays.accuracy)),
    }
    export = Path(args.export) if args.export else cli.repo_path(f"surrogates/{cfg.dataset}")
    if not args.no_export and export.resolve() == run_dir.resolve():
        sys.exit(f"error: --export-to {export} is the run directory itself; export elsewhere")
    if not args.no_export and not args.force and checkpoint.export_target_occupied(export):
        # Refused before training, not after it: the shipped surrogate is data too.
        sys.exit(f"error: {export} already holds a surrogate; an export would replace it.\n"
                 "Export elsewhere with --export-to DIR, replace it with --force, or train "
                 "without exporting with --no-export.")
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
        print(f"removed {run_dir} (--fresh)")
    print(f"{len(arrays.accuracy)} architectures from {', '.join(map(str, paths))}")
    try:
        outcome = train.train(scfg, arrays, run_dir, task, progress=not args.quiet)
    except (checkpoint.CheckpointError, checkpoint.SurrogateMismatchError, FloatingPointError) as err:
        sys.exit(f"error: {err}")
    print(f"trained to step {outcome.step} in {outcome.seconds:.0f} s; run directory {run_dir}")
    print(format_metrics(outcome.metrics, outcome.train_metrics))
    if not args.no_export:
        try:
            checkpoint.export(run_dir, export, overwrite=args.force)
        except checkpoint.ExportExistsError:
            sys.exit(f"error: {export} already holds a surrogate and was left as it is; the "
                     f"trained run is in {run_dir}.\nExport it elsewhere with --export-to DIR, "
                     "or replace it with --force (rerunning the same command resumes, then "
                     "exports).")
        print(f"exported to {export}")
    return 0


def format_metrics(holdout: dict, training: dict) -> str:
    rows = ["| metric | held-out | train |", "|---|---|---|"]
    for key in holdout:
        h, t = holdout[key], training.get(key)
        fmt = (lambda v: f"{v}") if key == "num" else (lambda v: f"{v:.4f}")
        rows.append(f"| {key} | {fmt(h)} | {fmt(t) if t is not None else ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
