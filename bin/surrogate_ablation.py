#!/usr/bin/env python3
"""Trains surrogate variants on one archset and tabulates which ranks best (README, "A surrogate
that ranks").

  python bin/surrogate_ablation.py --dataset fashion_mnist --variant cpu \
      --archset archsets/fashion_mnist_cpu_val.sqlite archsets/fashion_mnist_cpu_region.sqlite \
      --holdout 0.2

Variants: base (the config's), rank (pairwise ranking loss), ensemble5 (five accuracy heads),
noop2 (two no-op-augmented copies per record), all; then, on the same split, two regressors on
hand-made features (k-NN, ridge) as a yardstick, and what the held-out labels allow (seed
agreement and the estimated tau of a perfect predictor). Resumable: rerun the same command. Writes
results/surrogate_ablation/<dataset>.json and .md; nothing is exported.
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
    parser.add_argument("--archset", nargs="+", help="archset file(s) (default: the config's)")
    parser.add_argument("--holdout", type=float, help="held-out fraction (default: the config's)")
    parser.add_argument("--variants", nargs="+", help="which variants (default: all of them)")
    parser.add_argument("--steps", type=int, help="training steps of every variant")
    parser.add_argument("--runs", help="run directories' parent (default runs/ablation/<config>)")
    parser.add_argument("--out", help="results prefix (default results/surrogate_ablation/<dataset>)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from ac_jax.archset.store import load_arrays
    from ac_jax.surrogate import ablation, feature_baseline

    cfg = cli.with_flags(cli.config_from_args(args), {"surrogate.steps": args.steps or None})
    scfg = cfg.surrogate
    paths = args.archset or [str(cli.repo_path(cfg.archset.path))]
    try:
        arrays = load_arrays(paths, max_len=scfg.arch.max_len)
        task = {"dataset": cfg.dataset, "config": cfg.name, "input_shape": list(arrays.input_shape),
                "num_classes": arrays.num_classes, "archsets": [str(p) for p in paths],
                "num_records": int(len(arrays.accuracy))}
        runs = Path(args.runs) if args.runs else cli.repo_path(f"runs/ablation/{cfg.name}")
        rows = ablation.run(scfg, arrays, task, runs, args.variants, args.holdout,
                            progress=not args.quiet)
        fraction = args.holdout or scfg.holdout_fraction
        labels = ablation.holdout_label_agreement(paths, fraction)
        baselines = feature_baseline.holdout_scores(arrays, fraction)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")

    def fmt(tau):
        return "n/a" if tau is None else f"{tau:.3f}"

    table = ablation.markdown(rows) + "\n\nRegressors on hand-made features (" + ", ".join(
        feature_baseline.FEATURE_NAMES) + "), same split: " + "; ".join(
        f"{name} tau {fmt(row['accuracy_kendall_tau'])}, MAE {row['accuracy_mae']:.3f}"
        for name, row in baselines.items()) + (
        f"\n\nThe labels of the {labels['num']} held-out records: Kendall tau between their two "
        f"training seeds {fmt(labels['seed_agreement_tau'])}; estimated tau of a perfect predictor "
        f"of their expected accuracy against their two-seed means (the ceiling for the table's "
        f"tau) {fmt(labels['oracle_tau'])}")
    prefix = Path(args.out) if args.out else cli.repo_path(f"results/surrogate_ablation/{cfg.dataset}")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps({"task": task, "variants": rows, "held_out_labels": labels, "feature_baselines": baselines}, indent=1) + "\n")
    prefix.with_suffix(".md").write_text(f"{len(arrays.accuracy)} records from {', '.join(paths)}\n\n"
                                         + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
