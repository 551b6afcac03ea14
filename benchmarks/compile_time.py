#!/usr/bin/env python3
"""XLA compile time of child-network training programs: cold, cached, and hidden behind training.

The archset generator compiles one program per architecture (`ChildTrainer.compile`: trace, lower
and XLA-compile one epoch of training of all seeds plus the evaluation). This script measures, on
--num-archs architectures from the Appendix 9 sampler with the Fashion-MNIST `cpu` caps
(`SamplerConfig(max_macs=20_000_000)`), a 1-epoch schedule (batch 64, Adam lr 0.01) on a small
stratified Fashion-MNIST subset:

  cold        seconds per architecture in a fresh process with no persistent compilation cache
              (`jax_compilation_cache_dir` unset); one run = one process
  cached      the same architectures in a second fresh process whose persistent cache
              (`ac_jax.cli.enable_compilation_cache(tmpdir)`, as bin/make_archset.py
              uses it) was filled by an earlier process that compiled them; tracing and lowering
              still happen, only the XLA compilation is read back
  overlapped  per architecture i: wall time of compiling architecture i + 1 in a background
              thread while architecture i trains, against the sequential compile(i + 1) then
              train(i) measured in another fresh process (what bin/make_archset.py's
              `compile_workers` hide)

Before timing, each process compiles one warm-up architecture that is not among the timed ones
(JAX/XLA initialisation is thus excluded from every number). Medians over architectures and over
--repeats (each repeat: new processes).

  python benchmarks/compile_time.py                                  # 8 architectures
  python benchmarks/compile_time.py --num-archs 2 --train-subset 256 --test-subset 100 \\
      --repeats 1                                                    # smoke

Note: `enable_compilation_cache` only stores programs whose compilation took >= 0.5 s; the
JSON records how many entries the cache holds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10
BATCH_SIZE, LR = 64, 0.01
NO_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": None}


# ------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------


def _archs(config: dict):
    """(warm-up arch, timed archs): consecutive draws of one sampler stream."""
    from ac_jax.arch.sampler import SamplerConfig, sample

    archs, _ = sample(config["num_archs"] + 1, INPUT_SHAPE, NUM_CLASSES, config["sample_seed"],
                      SamplerConfig(max_macs=config["max_macs"]))
    return archs[0], archs[1:]


def _trainer(config: dict, cache_dir: str | None):
    import jax

    if cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", None)
    else:
        from ac_jax.runtime import enable_compilation_cache

        enable_compilation_cache(cache_dir)
    from ac_jax.child.trainer import ChildTrainer, TrainSchedule, to_device
    from ac_jax.data import load

    schedule = TrainSchedule(epochs=1, batch_size=BATCH_SIZE, lr=LR,
                             train_subset=config["train_subset"],
                             test_subset=config["test_subset"])
    dataset = load("fashion_mnist", config["data_dir"])
    return ChildTrainer(to_device(dataset, schedule), schedule, config["seeds"])


def run_compile(config: dict) -> dict:
    """Compiles the warm-up arch, then each timed arch once (cold or through the cache)."""
    warmup, archs = _archs(config)
    trainer = _trainer(config, config.get("cache_dir"))
    warmup_seconds = trainer.compile(warmup)[1]
    seconds = []
    for arch in archs:
        seconds.append(trainer.compile(arch)[1])
        trainer.forget(arch)
    entries = None
    if config.get("cache_dir"):
        entries = sum(1 for p in Path(config["cache_dir"]).rglob("*") if p.is_file())
    return {"seconds": seconds, "warmup_seconds": warmup_seconds, "cache_entries": entries,
            "params": [a.num_params for a in archs], "macs": [a.macs for a in archs]}


def _train(trainer, executable, seeds):
    import jax

    start = time.perf_counter()
    jax.device_get(executable(*trainer._args(seeds)))
    return time.perf_counter() - start


def run_sequential(config: dict) -> dict:
    """Per arch i < n - 1: compile(i + 1), then train(i); both timed on the main thread."""
    warmup, archs = _archs(config)
    trainer = _trainer(config, None)
    seeds = list(range(config["seeds"]))
    _train(trainer, trainer.compile(warmup)[0], seeds)  # warm-up: compile + run once
    begin = time.perf_counter()
    executable, _ = trainer.compile(archs[0])
    compile_s, train_s = [], []
    for i in range(len(archs) - 1):
        start = time.perf_counter()
        next_executable, _ = trainer.compile(archs[i + 1])
        compile_s.append(time.perf_counter() - start)
        train_s.append(_train(trainer, executable, seeds))
        trainer.forget(archs[i])
        executable = next_executable
    _train(trainer, executable, seeds)
    return {"compile_seconds": compile_s, "train_seconds": train_s,
            "pair_seconds": [c + t for c, t in zip(compile_s, train_s)],
            "total_seconds": time.perf_counter() - begin}


def run_overlapped(config: dict) -> dict:
    """Per arch i < n - 1: wall of {thread: compile(i + 1)} while {main: train(i)}."""
    warmup, archs = _archs(config)
    trainer = _trainer(config, None)
    seeds = list(range(config["seeds"]))
    _train(trainer, trainer.compile(warmup)[0], seeds)
    begin = time.perf_counter()
    executable, _ = trainer.compile(archs[0])
    pair_s, train_s, compile_s = [], [], []
    for i in range(len(archs) - 1):
        box = {}

        def compile_next(arch=archs[i + 1]):
            box["entry"] = trainer.compile(arch)

        start = time.perf_counter()
        thread = threading.Thread(target=compile_next, daemon=True)
        thread.start()
        train_s.append(_train(trainer, executable, seeds))
        thread.join()
        pair_s.append(time.perf_counter() - start)
        compile_s.append(box["entry"][1])
        trainer.forget(archs[i])
        executable = box["entry"][0]
    _train(trainer, executable, seeds)
    return {"pair_seconds": pair_s, "train_seconds": train_s,
            "compile_seconds_in_thread": compile_s,
            "total_seconds": time.perf_counter() - begin}


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-archs", type=int, default=8, help="timed architectures")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--max-macs", type=int, default=20_000_000, help="sampler MAC cap")
    parser.add_argument("--seeds", type=int, default=2, help="seeds vmapped in each program")
    parser.add_argument("--train-subset", type=int, default=4000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--modes", nargs="+", choices=("cold", "cached", "overlapped"),
                        default=["cold", "cached", "overlapped"])
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    workers = {"compile": run_compile, "sequential": run_sequential,
               "overlapped": run_overlapped}
    if common.run_worker_if_asked(args, workers):
        return 0
    if args.num_archs < 1 or args.repeats < 1 or args.seeds < 1:
        parser.error("need --num-archs, --repeats and --seeds >= 1")
    if "overlapped" in args.modes and args.num_archs < 2:
        parser.error("the overlapped mode needs --num-archs >= 2")
    if args.train_subset < BATCH_SIZE:
        parser.error(f"need --train-subset >= {BATCH_SIZE}")

    config = {k: getattr(args, k) for k in (
        "num_archs", "sample_seed", "max_macs", "seeds", "train_subset", "test_subset",
        "data_dir")}
    runs: dict[str, list] = {m: [] for m in ("cold", "fill", "cached", "sequential",
                                             "overlapped")}
    with tempfile.TemporaryDirectory(prefix="ac_jax_xla_cache_") as cache_dir:
        if "cached" in args.modes:
            common.log("[compile] filling the persistent cache ...")
            runs["fill"].append(common.spawn(__file__, "compile",
                                             {**config, "cache_dir": cache_dir}))
        for r in range(args.repeats):
            if "cold" in args.modes:
                common.log(f"[compile] cold, repeat {r + 1}/{args.repeats} ...")
                runs["cold"].append(common.spawn(__file__, "compile", config, env=NO_CACHE_ENV))
            if "cached" in args.modes:
                common.log(f"[compile] cached, repeat {r + 1}/{args.repeats} ...")
                runs["cached"].append(common.spawn(__file__, "compile",
                                                   {**config, "cache_dir": cache_dir}))
            if "overlapped" in args.modes:
                common.log(f"[compile] sequential and overlapped, repeat {r + 1} ...")
                runs["sequential"].append(common.spawn(__file__, "sequential", config,
                                                       env=NO_CACHE_ENV))
                runs["overlapped"].append(common.spawn(__file__, "overlapped", config,
                                                       env=NO_CACHE_ENV))

    def per_item_median(results, key):
        """Median over repeats per architecture (or pair), then over architectures."""
        per_item = [common.median(vals) for vals in zip(*(res[key] for res in results))]
        return common.median(per_item), per_item

    metrics = []
    cold = per_item_median(runs["cold"], "seconds") if runs["cold"] else (None, [])
    cached = per_item_median(runs["cached"], "seconds") if runs["cached"] else (None, [])
    if runs["cold"]:
        metrics.append(common.metric("compile s/arch, cold (no cache)", "s", cold[0],
                                     higher_is_better=False, per_arch=cold[1]))
    if runs["cached"]:
        metrics.append(common.metric(
            "compile s/arch, persistent cache hit", "s", cached[0], cold[0],
            "cold compile" if cold[0] is not None else None, higher_is_better=False,
            per_arch=cached[1], cache_entries=runs["cached"][-1]["cache_entries"]))
    if runs["overlapped"]:
        seq = per_item_median(runs["sequential"], "pair_seconds")
        ovl = per_item_median(runs["overlapped"], "pair_seconds")
        train = per_item_median(runs["sequential"], "train_seconds")
        comp = per_item_median(runs["sequential"], "compile_seconds")
        metrics.append(common.metric(
            "train(i) + compile(i+1) wall s/arch, compile in background thread", "s", ovl[0],
            seq[0], "sequential compile then train", higher_is_better=False,
            per_pair=ovl[1], sequential_per_pair=seq[1],
            sequential_train=train[0], sequential_compile=comp[0]))
        metrics.append(common.metric(
            f"whole loop over {args.num_archs} archs, s", "s",
            common.median([r["total_seconds"] for r in runs["overlapped"]]),
            common.median([r["total_seconds"] for r in runs["sequential"]]),
            "sequential", higher_is_better=False))
    title = (f"Child-program compile time: {args.num_archs} sampled {INPUT_SHAPE} architectures "
             f"(max {args.max_macs / 1e6:.0f}M MACs), {args.seeds} seeds, 1 epoch, batch "
             f"{BATCH_SIZE}, {args.train_subset} training / {args.test_subset} test images.")
    return common.finish(title, args, metrics, {"runs": runs})


if __name__ == "__main__":
    sys.exit(main())
