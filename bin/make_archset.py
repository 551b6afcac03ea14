#!/usr/bin/env python3
"""Trains random architectures into an archset (resumable; kill and rerun at any time).

  python bin/make_archset.py --dataset fashion_mnist --num 1500            # paper budget
  python bin/make_archset.py --dataset fashion_mnist --variant cpu         # CPU proxy
  python bin/make_archset.py --dataset fashion_mnist --shard 0/4 --out a.sqlite
  python bin/make_archset.py --merge a.sqlite b.sqlite --out all.sqlite
  python bin/make_archset.py --summary archsets/fashion_mnist.sqlite
  python bin/make_archset.py --compare a.sqlite b.sqlite          # one plan, two proxies
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ac_jax import cli  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cli.add_config_args(parser)
    parser.add_argument("--num", type=int, help="architectures in the archset (default: config)")
    parser.add_argument("--epochs", type=int, help="epochs per architecture (default: config)")
    parser.add_argument("--seeds", type=int, help="seeds per architecture (default: config)")
    parser.add_argument("--train-subset", type=int, help="train on this many images")
    parser.add_argument("--test-subset", type=int, help="test on this many images")
    parser.add_argument("--shard", type=cli.parse_shard, default=(0, 1), help="K/N: this worker's share")
    parser.add_argument("--out", help="archset file (default: the config's path)")
    parser.add_argument("--workers", type=int, help="background compile threads")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--merge", nargs="+", metavar="SRC", help="merge these archsets into --out")
    parser.add_argument("--summary", metavar="ARCHSET", help="print a summary of an archset and exit")
    parser.add_argument("--compare", nargs="+", metavar="ARCHSET",
                        help="the same plan under different proxies: label statistics on the "
                             "records all files trained, and each file's rank agreement with the "
                             "first; print and exit")
    cli.add_ray_args(parser)
    args = parser.parse_args(argv)

    from ac_jax.archset import generate, report
    from ac_jax.archset.store import ArchsetStore

    for wanted, read in ((args.summary, report.summarize), (args.compare, report.compare_proxies)):
        if wanted:  # a report of existing files, printed as JSON; nothing is trained
            try:
                print(json.dumps(read(wanted), indent=2))
            except (ValueError, FileNotFoundError) as err:
                sys.exit(f"error: {err}")
            return 0
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out")
        try:
            with ArchsetStore(args.merge[0], readonly=True) as first:
                meta = first.meta
            with ArchsetStore(args.out, meta) as dest:
                for src in args.merge:
                    with ArchsetStore(src, readonly=True) as store:
                        print(f"{src}: {dest.merge_from(store)} new records")
                print(f"{args.out}: {len(dest)} records")
        except (ValueError, FileNotFoundError) as err:  # mismatched settings, missing files
            sys.exit(f"error: {err}")
        return 0

    cfg = cli.config_from_args(args)
    cfg = cli.replace_schedule(
        cfg, epochs=args.epochs, train_subset=args.train_subset, test_subset=args.test_subset
    )
    cfg = cli.with_flags(cfg, {"archset.seeds": args.seeds,
                               "archset.compile_workers": args.workers})
    archset = cfg.archset
    out = Path(args.out) if args.out else cli.repo_path(archset.path)
    num = args.num or archset.num
    cli.enable_compilation_cache()
    try:
        stats = generate.generate(cfg, num, out, shard=args.shard, progress=not args.quiet,
                                  runner=cli.ray_runner(args))
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(
        f"trained {stats.trained} (failed {stats.failed}, already there {stats.skipped}) in "
        f"{stats.wall_seconds:.0f} s; compile {stats.compile_seconds:.0f} s in total, "
        f"{stats.exposed_compile_fraction:.0%} of wall time not hidden behind training"
    )
    summary = report.summarize(out)
    print(json.dumps(summary, indent=2))
    if not args.no_plots and summary["statuses"].get("ok"):
        for png in report.plot(out, out.parent / "plots"):
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
