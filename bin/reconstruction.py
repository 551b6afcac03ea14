#!/usr/bin/env python3
"""How often does the compression search start at the input network? (README, Anchored search)

  python bin/reconstruction.py --dataset fashion_mnist

For each zoo network of the task and over the surrogate's held-out archset records: the share
whose step 0 is the network itself, with the paper's plain decoding and with the anchored one,
and the plain start's size relative to the network's. Writes results/reconstruction/<dataset>.json.
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
    parser.add_argument("--surrogate", help="trained surrogate directory (default surrogates/<dataset>)")
    parser.add_argument("--archset", nargs="+",
                        help="archset file(s) whose held-out records to test (default: the ones "
                             "the surrogate was trained on)")
    parser.add_argument("--models", nargs="+", default=["conv7", "lenet5", "conv4"])
    parser.add_argument("--out", help="JSON file (default results/reconstruction/<dataset>.json)")
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)
    from ac_jax.compress.reconstruction import report
    from ac_jax.surrogate.checkpoint import CheckpointError, load_surrogate

    path = Path(args.surrogate) if args.surrogate else cli.surrogate_path(cfg)
    try:
        surrogate = load_surrogate(path)
    except CheckpointError as err:
        sys.exit(f"error: {err}")
    archsets = []  # as recorded at training time, else the same file name under archsets/
    for p in args.archset or surrogate.meta["task"].get("archsets", []):
        found = [c for c in (Path(p), cli.repo_path("archsets") / Path(p).name) if c.is_file()]
        archsets += found[:1]
    out = report(surrogate, args.models, archsets)
    out["surrogate"] = str(path)
    target = Path(args.out) if args.out else cli.repo_path(f"results/reconstruction/{cfg.dataset}.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=1) + "\n")
    print("| networks | count | plain step 0 exact | anchored step 0 exact | plain start / network params (median) |")
    print("|---|---|---|---|---|")
    rows = [(f"{k} ({v['params']:,})", v) for k, v in out["zoo"].items()]
    if out["heldout_archset"]:
        rows.append(("held-out archset records", out["heldout_archset"]))
    for label, r in rows:
        print(f"| {label} | {r['num']} | {r['plain_exact_rate']:.0%} | {r['anchored_exact_rate']:.0%} "
              f"| {r['plain_params_ratio_median']:.2f} |")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
