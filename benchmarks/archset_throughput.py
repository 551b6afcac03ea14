#!/usr/bin/env python3
"""Archset throughput: architectures per hour on a fixed plan, this tree against another commit.

For each code tree (the working tree, and `--against REV` exported with `git archive` into a
temporary folder), two fresh worker processes, each with its own empty persistent compilation
cache, run one after the other on an otherwise idle machine:

  compile   the plan's first --num architectures compiled one by one, nothing else running:
            compile wall seconds and compile CPU-seconds (process user + system time, all
            threads) per architecture
  generate  `archset.generate` on the same plan into a fresh archset file, exactly as
            `bin/make_archset.py` runs it (background compile threads included): wall time,
            architectures per hour, train seconds per architecture, the share of wall time spent
            waiting for compiles, and every record's accuracies

The two trees' accuracies are compared position by position against the seed-to-seed spread
within each record (same plan, same seeds: a faithful change moves them by float rounding only,
which a few steps of training turn into differences of the order of the seed noise at most).

  python benchmarks/archset_throughput.py --against HEAD~1                  # 40 archs, cpu plan
  python benchmarks/archset_throughput.py --against HEAD~1 --num 6          # smoke
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _import_tree(config: dict):
    """Puts the tree under test first on sys.path (before anything imports ac_jax)."""
    sys.path.insert(0, config["tree"])
    import ac_jax

    where = Path(ac_jax.__file__).resolve()
    if not where.is_relative_to(Path(config["tree"]).resolve()):
        raise RuntimeError(f"ac_jax imported from {where}, not from the tree {config['tree']}")
    from ac_jax import cli

    cli.enable_compilation_cache(config["cache"])
    from configs import get_config

    return get_config(config["dataset"], config["variant"])


def _plan(cfg, dataset, num):
    from ac_jax.archset import generate

    return generate.plan(cfg.archset, dataset.input_shape, dataset.num_classes, num)


def compile_worker(config: dict) -> dict:
    cfg = _import_tree(config)
    from ac_jax.archset import generate
    from ac_jax.child.trainer import ChildTrainer, to_device
    from ac_jax.data import load

    dataset = load(cfg.dataset, config["data_dir"])
    a = cfg.archset
    trainer = ChildTrainer(to_device(dataset, a.schedule, seed=a.sample_seed), a.schedule,
                           a.seeds)
    rows = []
    for planned in _plan(cfg, dataset, config["num"]):
        cap = a.max_pooling_reads if a.max_pooling_reads is not None else a.sampler.max_macs
        if generate.over_pooling_cap(planned.arch, cap):
            continue  # "rejected": never compiled by a real run either
        cpu, wall = _cpu_seconds(), time.perf_counter()
        trainer.compile(planned.arch)
        rows.append({"idx": planned.idx, "compile_wall": time.perf_counter() - wall,
                     "compile_cpu": _cpu_seconds() - cpu})
        trainer.forget(planned.arch)
    return {"rows": rows}


def generate_worker(config: dict) -> dict:
    cfg = _import_tree(config)
    from ac_jax.archset import generate
    from ac_jax.archset.store import ArchsetStore
    from ac_jax.data import load

    dataset = load(cfg.dataset, config["data_dir"])
    out = Path(config["out"])
    cpu, wall = _cpu_seconds(), time.perf_counter()
    stats = generate.generate(cfg, config["num"], out, dataset=dataset, progress=False)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    with ArchsetStore(out, readonly=True) as store:
        records = [{"idx": r.idx, "status": r.status, "seed_accuracies": list(r.seed_accuracies),
                    "compile_seconds": r.compile_seconds, "train_seconds": r.train_seconds}
                   for r in store.records()]
    return {"wall_seconds": wall, "cpu_seconds": cpu, "records": records,
            "compile_wait_seconds": stats.compile_wait_seconds,
            "compile_seconds": stats.compile_seconds, "train_seconds": stats.train_seconds}


def export_tree(rev: str, into: Path) -> Path:
    """The files of commit `rev` in a fresh folder (`git archive`), with its full hash."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(common.REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(label: str, tree: Path, args, tmp: Path) -> dict:
    base = {"tree": str(tree), "dataset": args.dataset, "variant": args.variant,
            "num": args.num, "data_dir": args.data_dir}
    common.log(f"[{label}] compile pass ({args.num} architectures)")
    compiled = common.spawn(__file__, "compile", {**base, "cache": str(tmp / f"{label}_c1")})
    common.log(f"[{label}] generate pass")
    generated = common.spawn(__file__, "generate", {**base, "cache": str(tmp / f"{label}_c2"),
                                                    "out": str(tmp / f"{label}.sqlite")})
    return {"label": label, "tree": str(tree), "compile": compiled, "generate": generated}


def summary(run: dict) -> dict:
    g, rows = run["generate"], run["compile"]["rows"]
    n = len(g["records"])
    trained = [r for r in g["records"] if r["status"] != "rejected"]
    return {
        "archs": n,
        "archs_per_hour": 3600 * n / g["wall_seconds"],
        "wall_s_per_arch": g["wall_seconds"] / n,
        "compile_cpu_s_per_arch": statistics.fmean(r["compile_cpu"] for r in rows),
        "compile_wall_s_per_arch": statistics.fmean(r["compile_wall"] for r in rows),
        "train_s_per_arch": statistics.fmean(r["train_seconds"] for r in trained),
        "wait_share": g["compile_wait_seconds"] / g["wall_seconds"],
        "cpu_s_per_arch": g["cpu_seconds"] / n,
        "statuses": {s: sum(r["status"] == s for r in g["records"])
                     for s in sorted({r["status"] for r in g["records"]})},
    }


def accuracy_agreement(new: dict, old: dict) -> dict:
    """|mean accuracy difference| per plan position vs. the seed spread within records."""
    def by_idx(run):
        return {r["idx"]: r for r in run["generate"]["records"] if r["status"] == "ok"}

    a, b = by_idx(new), by_idx(old)
    both = sorted(set(a) & set(b))
    diff = [abs(statistics.fmean(a[i]["seed_accuracies"]) - statistics.fmean(b[i]["seed_accuracies"]))
            for i in both]
    spread = [max(r["seed_accuracies"]) - min(r["seed_accuracies"])
              for i in both for r in (a[i], b[i]) if len(r["seed_accuracies"]) > 1]
    return {"positions": len(both), "mean_abs_diff": statistics.fmean(diff) if diff else None,
            "max_abs_diff": max(diff) if diff else None,
            "mean_seed_spread": statistics.fmean(spread) if spread else None,
            "status_mismatches": sorted(i for i in set(a) ^ set(b))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="HEAD", help="the commit to compare with")
    parser.add_argument("--num", type=int, default=40, help="first N architectures of the plan")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--variant", default="cpu")
    parser.add_argument("--data-dir", default=None)
    common.add_common_args(parser, repeats=1)
    args = parser.parse_args(argv)
    if common.run_worker_if_asked(args, {"compile": compile_worker, "generate": generate_worker}):
        return 0
    with tempfile.TemporaryDirectory(prefix="ac_jax_throughput_") as tmp:
        tmp = Path(tmp)
        old_tree = export_tree(args.against, tmp / "against")
        runs = {"before": measure("before", old_tree, args, tmp),
                "after": measure("after", common.REPO, args, tmp)}
    s = {k: summary(v) for k, v in runs.items()}
    agree = accuracy_agreement(runs["after"], runs["before"])
    before, after = s["before"], s["after"]
    metrics = [
        common.metric("archs per hour (generate pass)", "arch/h", after["archs_per_hour"],
                      before["archs_per_hour"], f"{args.against}"),
        common.metric("wall s per arch", "s", after["wall_s_per_arch"], before["wall_s_per_arch"],
                      f"{args.against}", higher_is_better=False),
        common.metric("compile CPU-s per arch (compile pass)", "s",
                      after["compile_cpu_s_per_arch"], before["compile_cpu_s_per_arch"],
                      f"{args.against}", higher_is_better=False),
        common.metric("compile wall s per arch (compile pass)", "s",
                      after["compile_wall_s_per_arch"], before["compile_wall_s_per_arch"],
                      f"{args.against}", higher_is_better=False),
        common.metric("train s per arch (generate pass)", "s", after["train_s_per_arch"],
                      before["train_s_per_arch"], f"{args.against}", higher_is_better=False),
        common.metric("share of wall time waiting for compiles", "", after["wait_share"],
                      before["wait_share"], f"{args.against}", higher_is_better=False),
        common.metric("process CPU-s per arch (generate pass)", "s", after["cpu_s_per_arch"],
                      before["cpu_s_per_arch"], f"{args.against}", higher_is_better=False),
    ]
    title = (f"Archset throughput: first {args.num} architectures of the {args.dataset} "
             f"`{args.variant}` plan, fresh compile caches; this tree vs {args.against}")
    common.finish(title, args, metrics, {"runs": runs, "summary": s, "accuracy": agree})
    print(f"\nstatuses: this tree {after['statuses']}, {args.against} {before['statuses']}")
    print(f"accuracy per plan position, this tree vs {args.against}: mean |diff| "
          f"{agree['mean_abs_diff']:.4f}, max {agree['max_abs_diff']:.4f} over "
          f"{agree['positions']} positions; seed-to-seed spread within a record: mean "
          f"{agree['mean_seed_spread']:.4f}; positions trained in one tree only: "
          f"{agree['status_mismatches']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
