#!/usr/bin/env python3
"""Compresses CNN architectures by gradient descent in the surrogate's embedding (Algorithm 1).

  python bin/compress.py                                   # CONV-7 on Fashion-MNIST, shipped surrogate
  python bin/compress.py --model my_net.txt --target-ratio 10
  python bin/compress.py --models a.txt b.json conv7 --out out/batch      # many at once, one call
  python bin/compress.py --models nets/ --max-params 50000                # every .txt/.json in nets/
  python bin/compress.py --verify --verify-epochs 2 --verify-train-subset 10000

A model is a zoo name (conv7, conv10, vgg16, lenet5, conv4, tinycnn), a PyTorch printout file, or a JSON spec.
Outputs in --out (one subfolder per model when several): report.json, compressed.txt (PyTorch
printout), compressed_model.py (runnable nn.Module), original.txt, pareto.png.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ac_jax import cli  # noqa: E402


def parse_args(argv):
    from ac_jax.compress.refine import DEFAULT_POOL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cli.add_config_args(p)
    p.add_argument("--model", help="zoo name, printout/JSON file, or a PyTorch module file "
                                    "path/to/net.py:ClassName (default: the config's, CONV-7)")
    p.add_argument("--model-args", type=json.loads, default=None, metavar="JSON",
                   help='keyword arguments for a module file\'s class, e.g. \'{"width": 32}\'')
    p.add_argument("--models", nargs="+", metavar="M", help="several models or folders at once")
    p.add_argument("--surrogate", help="trained surrogate directory (default surrogates/<dataset>)")
    p.add_argument("--out", help="output folder (default out/compress/<model>)")
    g = p.add_argument_group("what to pick (first one given wins)")
    g.add_argument("--max-params", type=int, help="parameter budget")
    g.add_argument("--target-ratio", type=float, help="at least this many times fewer parameters")
    g.add_argument("--min-acc", type=float, help="smallest network predicted at least this accurate")
    g.add_argument("--lambda", dest="lam", type=float, help="paper mode: one lambda, last step")
    g.add_argument("--max-drop", type=float, default=0.01,
                   help="default pick: smallest within this predicted drop (default 0.01)")
    s = p.add_argument_group("search")
    s.add_argument("--steps", type=int, help="gradient steps in the embedding")
    s.add_argument("--step-size", type=float, help="eta")
    s.add_argument("--lambdas", type=float, nargs="+", help="lambda grid searched in one call")
    s.add_argument("--plain-decoding", action="store_true",
                   help="the paper's decoding of each embedding from scratch (default: anchored, "
                        "as edits of the input, so step 0 is the input network)")
    s.add_argument("--trust-radius", type=float,
                   help="walk radius relative to |y0| (default 0.5); 0 for none")
    s.add_argument("--objective", choices=("embedding", "decoded"),
                   help="what the regressors score: the embedding y (default, paper) or the "
                        "network y decodes to, re-encoded")
    s.add_argument("--batch", type=int, default=64,
                   help="networks compressed together (searched in calls of at most 64)")
    s.add_argument("--rounds", type=int, default=0,
                   help="refinement rounds: train top candidates, fine-tune surrogate, search again")
    s.add_argument("--refine-top", type=int, default=6, help="candidates trained per round")
    s.add_argument("--acquisition", choices=("ucb", "pareto"), default="ucb",
                   help="what a round trains: ucb (default; active learning: highest predicted "
                        "accuracy + kappa x ensemble spread under the size limit, final pick over "
                        "every trained record, archset included) or pareto (spread along the "
                        "Pareto set, pick among refined records)")
    s.add_argument("--kappa", type=float, default=1.0, help="ucb's weight on the spread")
    s.add_argument("--pool", type=int, default=DEFAULT_POOL, metavar="N",
                   help="ucb: networks sampled per round from the input's compression region "
                        "(those within the size limit) that the acquisition ranks besides the "
                        "search's candidates (default %(default)s; 0: the search's only)")
    v = p.add_argument_group("verification (trains the original and the pick)")
    v.add_argument("--verify", action="store_true")
    v.add_argument("--verify-epochs", type=int, help="default: the paper's schedule (config)")
    v.add_argument("--verify-seeds", type=int, default=2)
    v.add_argument("--verify-train-subset", type=int)
    v.add_argument("--verify-test-subset", type=int)
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use the persistent XLA compilation cache (~/.cache/ac_jax/xla, "
                        "or $AC_JAX_COMPILE_CACHE), which lets a rerun skip compiling the search")
    p.add_argument("--quiet", action="store_true")
    cli.add_ray_args(p)  # for --rounds: each round's trainings on a cluster
    return p.parse_args(argv)


def _label(name: str) -> str:
    """The output folder's name: a file's stem, a module file's class, else the name."""
    from ac_jax.arch.module_file import MODULE_SPEC

    match = MODULE_SPEC.match(name.strip())
    if match:
        return match["name"]
    return Path(name).stem if Path(name).exists() else name


def collect_models(args, default):
    names = args.models or [args.model or default]
    out = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix in (".txt", ".json"))
            if not files:
                sys.exit(f"error: no .txt or .json model files in {path}")
            out += [str(f) for f in files]
        else:
            out.append(name)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    cfg = cli.config_from_args(args)
    from ac_jax import api
    from ac_jax.arch.load import load_arch
    from ac_jax.compress import pipeline
    from ac_jax.compress.candidates import Constraint
    from ac_jax.surrogate.checkpoint import CheckpointError, load_surrogate, read_meta

    if not args.no_compile_cache:
        cli.enable_compilation_cache()
    surrogate_dir = Path(args.surrogate) if args.surrogate else cli.surrogate_path(cfg)
    how_to_build = (
        f"\n\nNo usable surrogate for {args.config} at {surrogate_dir}. Build one:\n"
        f"  python bin/make_archset.py --dataset {args.config}"
        + (f" --data-dir {args.data_dir}" if args.data_dir else " [--data-dir DIR]")
        + f"\n  python bin/train_surrogate.py --dataset {args.config}\n"
        "then rerun this command (or pass --surrogate DIR)."
    )
    try:  # the metadata alone (cheap) tells the task, so bad models fail before any compile
        meta = read_meta(surrogate_dir)
    except CheckpointError as err:
        sys.exit(f"error: {err}{how_to_build}")
    if meta is None:
        sys.exit(f"error: no surrogate at {surrogate_dir}{how_to_build}")
    if meta["task"]["dataset"] != cfg.dataset:
        sys.exit(f"error: {surrogate_dir} is a surrogate for {meta['task']['dataset']}, "
                 f"not {cfg.dataset}")
    input_shape, num_classes = tuple(meta["task"]["input_shape"]), meta["task"]["num_classes"]
    names = collect_models(args, cfg.default_model)
    archs = []
    for name in names:
        try:
            archs.append(load_arch(name, input_shape, num_classes, model_args=args.model_args))
        except (ValueError, FileNotFoundError, ImportError) as err:
            sys.exit(f"error: cannot read model {name!r}: {err}")
    try:
        surrogate = load_surrogate(surrogate_dir)
    except CheckpointError as err:
        sys.exit(f"error: {err}{how_to_build}")
    search_cfg = cli.search_config(args)
    constraint = Constraint(args.max_params, args.target_ratio, args.min_acc, args.lam, args.max_drop)
    labels = [_label(n) for n in names]
    bar = None if args.quiet else cli.progress(len(archs), "compress", "net")
    try:
        results = api.compress(
            archs, surrogate, constraint, search_cfg, labels, rounds=args.rounds,
            refine_top=args.refine_top, work_dir=Path(args.out or "out/compress") / "refine",
            config=cfg, acquisition=args.acquisition, kappa=args.kappa, pool=args.pool,
            runner=cli.ray_runner(args) if args.rounds else None, batch=args.batch,
            on_batch=bar.update if bar is not None else None)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if bar is not None:
        bar.close()
    dataset = None
    default_out = Path("out/compress") / (labels[0] if len(labels) == 1 else "batch")
    out_root = Path(args.out) if args.out else default_out
    summary = []
    for result, arch in zip(results, archs):
        if args.verify:
            dataset = dataset or cli.load_dataset(cfg)
            schedule = cli.verify_schedule(cfg, args)
            result.verify = pipeline.verify(arch, result.chosen.arch, dataset, schedule,
                                            list(range(args.verify_seeds)))
        out_dir = out_root if len(results) == 1 else out_root / result.name
        paths = pipeline.write_outputs(result, surrogate, out_dir, {
            "command": " ".join(["python bin/compress.py", *(argv if argv is not None else sys.argv[1:])]),
            "search": cli.asdict(search_cfg),
        })
        summary.append((result, paths))
    for result, paths in summary:
        print_result(result, paths, len(results) == 1)
    if len(results) > 1:
        (out_root / "summary.json").write_text(json.dumps([
            {"name": r.name, "original_params": r.original.num_params,
             "chosen_params": r.chosen.num_params, "ratio": r.ratio,
             "predicted_original": r.original.predicted_accuracy,
             "predicted_chosen": r.chosen.predicted_accuracy} for r, _ in summary], indent=1))
        print(f"{len(results)} networks in {time.perf_counter() - began:.1f} s; summary: "
              f"{out_root / 'summary.json'}")
    else:
        print(f"done in {time.perf_counter() - began:.1f} s")
    return 0


def print_result(result, paths, full: bool) -> None:
    from ac_jax.arch.export import to_printout
    from ac_jax.compress.pipeline import table1_row

    o, c = result.original, result.chosen
    print(f"\n== {result.name}: {o.num_params:,} -> {c.num_params:,} parameters "
          f"({result.ratio:.2f}x), predicted accuracy {o.predicted_accuracy:.4f} -> "
          f"{c.predicted_accuracy:.4f}; {len(result.candidates)} candidates, "
          f"{len(result.front)} on the Pareto set; pick: {result.constraint.describe()}")
    if full:
        print(to_printout(c.arch))
    if result.verify:
        print(table1_row(result.name, result.verify))
    print(f"outputs: {paths['report'].parent}/ (report.json, compressed.txt, compressed_model.py, pareto.png)")


if __name__ == "__main__":
    sys.exit(main())
