#!/usr/bin/env python3
"""Runs the compression baselines in one harness and writes a Table-2-like comparison.

  python bin/baselines.py --dataset tiny --target 3x --budget tiny --out /tmp/baselines
  python bin/baselines.py --dataset fashion_mnist --model conv7 --target compressed.json \\
      --ac-report report.json --budget cpu --out results/baselines/fashion_mnist_cpu

--target is the compressed architecture (printout or JSON file, as load_arch reads them) or a
parameter count: 70000, 70k, 1.2M, or 10x (the teacher's count divided by 10). Without it, the
--ac-report's chosen architecture is the target.

Every method gets the same data and the budget's schedules (ac_jax/baselines/budget.py): the
teacher is trained with the final schedule; random search and N2N search with the proxy schedule
and their winner is retrained with the final schedule; pruning prunes the trained teacher;
distillation trains a thin teacher (or, with --distill-student target, the target architecture)
with KD and from scratch. With a target architecture, it is retrained here too, so the table
compares all architectures under one protocol. Writes baselines.md and baselines.json to --out.

--random-archs archset sizes random search like the paper's question asks: as many trained
architectures as the ac_jax result spent. Random search records each trained candidate in
--out/random_search.sqlite as it finishes, so a killed run resumes without retraining any.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ac_jax import cli  # noqa: E402

from ac_jax.baselines.harness import METHODS  # noqa: E402


def parse_random_archs(text: str) -> int | str:
    if text == "archset":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--random-archs takes a positive count or 'archset', "
                                         f"got {text!r}")
    return value


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown or text!r}; choose from {', '.join(METHODS)}"
        )
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(parser)
    parser.add_argument("--model",
                        help="teacher: zoo name or printout/JSON file (default: the config's)")
    parser.add_argument("--target", help="compressed architecture file, or a parameter count")
    parser.add_argument("--ac-report", help="the compressor's report.json (adds the ac_jax row)")
    parser.add_argument("--budget", choices=("tiny", "cpu", "gpu"),
                        help="effort preset (default: tiny for --dataset tiny, else cpu on a CPU "
                             "backend, gpu otherwise)")
    parser.add_argument("--methods", type=parse_methods, default=list(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--distill-student", choices=("thin", "target"), default="thin",
                        help="distillation student: the teacher thinned to the target (FitNets "
                             "style, default) or the target architecture")
    parser.add_argument("--random-archs", type=parse_random_archs,
                        help="architectures random search trains: a count, or 'archset' for "
                             "as many as the ac_jax result spent (its surrogate's archset records "
                             "+ refinement runs; needs --ac-report). Default: the budget's")
    parser.add_argument("--seed", type=int, default=0, help="seed of the searches and pruning")
    parser.add_argument("--out", help="output folder (default: results/baselines/<task>_<budget>)")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use the persistent XLA compilation cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_ray_args(parser)
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)

    from ac_jax.baselines import harness
    from ac_jax.data import DatasetNotFoundError, load

    try:
        dataset = load(cfg.dataset, cfg.data_dir)
        task = harness.resolve(cfg, dataset, args.model, args.target, args.ac_report, args.budget,
                               args.random_archs, args.methods, args.seed, args.distill_student)
    except (DatasetNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    out_dir = Path(args.out) if args.out else cli.repo_path(
        f"results/baselines/{cfg.name.replace('/', '_')}_{task.budget.name}")
    if not args.no_compile_cache:
        cli.enable_compilation_cache()
    try:
        # The cluster serves random search and N2N only: no connection for the other methods.
        searches = {"random", "n2n"} & set(task.methods)
        summary = harness.run(task, out_dir, progress=not args.quiet,
                              runner=cli.ray_runner(args) if searches else None)
    except ValueError as err:  # e.g. a subset larger than the dataset
        sys.exit(f"error: {err}")
    print(summary["table"])
    print(f"wrote {out_dir / 'baselines.md'} and {out_dir / 'baselines.json'}", file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
