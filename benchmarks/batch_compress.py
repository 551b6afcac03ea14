#!/usr/bin/env python3
"""Compression throughput: many networks in one batched call vs one network per call.

`ac_jax.compress.pipeline.compress_batch` searches every network over the whole lambda grid in one
compiled program (networks and lambdas are `jax.vmap` axes; calls of at most --networks-per-call
networks; the decoded sequences are rounded, legalized and canonicalized in the same program)
and then post-processes the candidates of all networks together on the host (dedupe, exact
counts, re-score, Pareto set, pick). This script compresses --num-networks networks
(CONV-7 plus architectures from the Appendix 9 sampler for the surrogate's task, Fashion-MNIST
`cpu` caps) with a trained surrogate, in two fresh processes:

  batched     one `compress_batch` with all networks (search calls of --networks-per-call)
  one by one  a loop of calls with one network each

Each mode first makes one untimed-for-throughput pass over the same networks (the warm-up: it
compiles the search for that batch shape and the candidate scorer for every candidate count that
occurs); its time is reported as the "first pass", and the timed passes after it are steady state.

and reports networks/s for
  search      the compiled search calls alone (`pipeline.search_chunks`, candidate matrices
              copied to the host), inputs encoded beforehand
  pipeline    the whole `compress_batch`, candidate post-processing included
and, from one more pass with `compress_batch(timings=...)`, milliseconds per network of each stage
(search calls, dedupe, exact counts, re-scoring, candidate lists, Pareto/pick).

  python benchmarks/batch_compress.py                              # 256 networks, shipped surrogate
  python benchmarks/batch_compress.py --num-networks 4 --search-steps 5 --repeats 1 \\
      --tiny-fallback                                              # smoke (trains a tiny surrogate)

--surrogate DIR is a trained surrogate (default surrogates/fashion_mnist). With --tiny-fallback and
no surrogate there, a tiny one is trained first in a temporary folder on the 12x12 synthetic task
of the tests (`tests/conftest.py`), and the networks are TinyCNN plus sampled 12x12 networks:
only useful as a smoke test, never for numbers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT_SURROGATE = common.REPO / "surrogates" / "fashion_mnist"
TINY_SHAPE, TINY_CLASSES = (12, 12, 1), 4


# ------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------


def _networks(surrogate, config: dict):
    """(archs, names): the zoo model for the task, then sampled architectures."""
    from ac_jax.arch import zoo
    from ac_jax.arch.sampler import SamplerConfig, sample

    shape, classes = surrogate.input_shape, surrogate.num_classes
    zoo_name = "conv7" if (shape, classes) == ((28, 28, 1), 10) else "tinycnn"
    caps = SamplerConfig(max_len=min(50, surrogate.max_len), max_macs=20_000_000)
    sampled, _ = sample(config["num_networks"] - 1, shape, classes, config["sample_seed"], caps)
    archs = [zoo.get(zoo_name, shape, classes)] + sampled
    return archs, [zoo_name] + [f"sampled-{i}" for i in range(len(sampled))]


def _search_inputs(surrogate, archs, cfg):
    import numpy as np

    from ac_jax.compress.candidates import Constraint
    from ac_jax.compress.pipeline import targets
    from ac_jax.surrogate.encoding import encode_matrices

    feats = encode_matrices(np.stack([a.to_matrix(surrogate.max_len) for a in archs]))
    a0, p0 = targets(surrogate, archs, cfg, Constraint())
    return feats, np.array(cfg.lambdas), a0, p0


def run_compress(config: dict) -> dict:
    import numpy as np

    from ac_jax.compress.pipeline import compress_batch, search_chunks
    from ac_jax.compress.search import SearchConfig
    from ac_jax.surrogate.checkpoint import load_surrogate

    surrogate = load_surrogate(config["surrogate"])
    archs, names = _networks(surrogate, config)
    cfg = SearchConfig(steps=config["search_steps"], decode_every=config["decode_every"])
    groups = ([(archs, names)] if config["mode"] == "batched"
              else [([a], [n]) for a, n in zip(archs, names)])
    inputs = [_search_inputs(surrogate, g, cfg) for g, _ in groups]

    per_call = config["networks_per_call"]

    def run_search(i):
        return list(search_chunks(surrogate, cfg, *inputs[i], per_call))

    # First pass = warm-up: compiles the search for this batch shape and the candidate scorer
    # for every candidate count met (`score_matrices` compiles one program per power of two),
    # so the timed passes below are steady state in both modes.
    start = time.perf_counter()
    for group in groups:
        compress_batch(surrogate, *group, cfg, networks_per_call=per_call)
    first_pass_seconds = time.perf_counter() - start
    for i in range(len(groups)):
        run_search(i)

    search_s, pipeline_s, candidates = [], [], 0
    for _ in range(config["repeats"]):
        start = time.perf_counter()
        for i in range(len(groups)):
            run_search(i)
        search_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        results = [r for g in groups
                   for r in compress_batch(surrogate, *g, cfg, networks_per_call=per_call)]
        pipeline_s.append(time.perf_counter() - start)
        candidates = sum(len(r.candidates) for r in results)
    # One more pass, with every stage timed (kept out of the passes above, whose totals it
    # would otherwise include the bookkeeping of).
    stages: dict[str, float] = {}
    for group in groups:
        compress_batch(surrogate, *group, cfg, networks_per_call=per_call, timings=stages)
    return {"search_seconds": search_s, "pipeline_seconds": pipeline_s, "stage_seconds": stages,
            "first_pass_seconds": first_pass_seconds, "num_networks": len(archs),
            "calls": len(groups), "candidates": candidates,
            "mean_ratio": float(np.mean([r.ratio for r in results])),
            "task": [list(surrogate.input_shape), surrogate.num_classes]}


# ------------------------------------------------------------------------------------------
# Tiny surrogate (smoke tests only)
# ------------------------------------------------------------------------------------------


def train_tiny_surrogate(run_dir: Path, steps: int) -> Path:
    """The tests' tiny surrogate: 12x12x1, 4 classes, made-up accuracies, `steps` Adam steps."""
    import numpy as np

    from ac_jax.arch.sampler import SamplerConfig, sample
    from ac_jax.archset.store import ArchsetArrays
    from ac_jax.surrogate.config import SurrogateConfig
    from ac_jax.surrogate.model import SurrogateArch
    from ac_jax.surrogate.train import train

    max_len = 16
    archs, _ = sample(60, TINY_SHAPE, TINY_CLASSES, seed=1,
                      cfg=SamplerConfig(max_len=12, max_params=40_000, max_macs=400_000))
    num_params = np.array([a.num_params for a in archs])
    arrays = ArchsetArrays(
        matrices=np.stack([a.to_matrix(max_len) for a in archs]),
        lengths=np.array([len(a) for a in archs]),
        accuracy=0.3 + 0.6 * (1.0 - np.exp(-num_params / 20_000.0)),
        num_params=num_params, macs=np.array([a.macs for a in archs]),
        idx=np.arange(len(archs)), input_shape=TINY_SHAPE, num_classes=TINY_CLASSES,
    )
    per_call = max(1, min(50, steps))
    cfg = SurrogateConfig(
        arch=SurrogateArch(max_len=max_len, widths=(16, 32), embed_dim=16, regressor_hidden=32),
        steps=steps, batch_size=16, optimizer="adam", lr=3e-3, steps_per_call=per_call,
        eval_every=steps, checkpoint_every=steps, decay_every_epochs=0,
    )
    task = {"dataset": "synthetic", "input_shape": list(TINY_SHAPE), "num_classes": TINY_CLASSES}
    train(cfg, arrays, run_dir, task, progress=False, log=common.log)
    return run_dir


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--surrogate", default=str(DEFAULT_SURROGATE), metavar="DIR")
    parser.add_argument("--num-networks", type=int, default=256)
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--search-steps", type=int, default=None,
                        help="K gradient steps (default: SearchConfig's)")
    parser.add_argument("--decode-every", type=int, default=None,
                        help="decode every n-th step (default: SearchConfig's)")
    parser.add_argument("--networks-per-call", type=int, default=None,
                        help="batched mode: networks per compiled search call (default: "
                             "compress.pipeline.NETWORKS_PER_CALL)")
    parser.add_argument("--modes", nargs="+", choices=("batched", "single"),
                        default=["batched", "single"])
    parser.add_argument("--tiny-fallback", action="store_true",
                        help="no surrogate at --surrogate: train a tiny 12x12 one (smoke only)")
    parser.add_argument("--tiny-steps", type=int, default=200)
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if common.run_worker_if_asked(args, {"batched": run_compress, "single": run_compress}):
        return 0
    if args.num_networks < 1 or args.repeats < 1:
        parser.error("need --num-networks >= 1 and --repeats >= 1")

    from ac_jax.compress.pipeline import NETWORKS_PER_CALL
    from ac_jax.compress.search import SearchConfig

    defaults = SearchConfig()
    args.networks_per_call = args.networks_per_call or NETWORKS_PER_CALL
    args.search_steps = args.search_steps or defaults.steps
    args.decode_every = args.decode_every or defaults.decode_every
    with tempfile.TemporaryDirectory(prefix="ac_jax_tiny_surrogate_") as tmp:
        surrogate_dir = Path(args.surrogate)
        tiny = False
        if not (surrogate_dir / "surrogate.json").exists():
            if not args.tiny_fallback:
                raise SystemExit(f"no trained surrogate at {surrogate_dir} (surrogate.json "
                                 "missing): train one with bin/train_surrogate.py, pass "
                                 "--surrogate DIR, or --tiny-fallback for a smoke test")
            common.log(f"[compress] no surrogate at {surrogate_dir}: training a tiny 12x12 one "
                       f"({args.tiny_steps} steps; smoke test only, not for numbers) ...")
            surrogate_dir, tiny = train_tiny_surrogate(Path(tmp) / "run", args.tiny_steps), True
        config = {"surrogate": str(surrogate_dir), "num_networks": args.num_networks,
                  "sample_seed": args.sample_seed, "search_steps": args.search_steps,
                  "decode_every": args.decode_every, "repeats": args.repeats,
                  "networks_per_call": args.networks_per_call}
        results = {}
        for mode in args.modes:
            common.log(f"[compress] {mode} ...")
            results[mode] = r = common.spawn(__file__, mode, config)
            common.log(f"[compress] {mode}: search {r['search_seconds']} s, pipeline "
                       f"{r['pipeline_seconds']} s, first pass {r['first_pass_seconds']:.1f} s, "
                       f"{r['candidates']:,} candidates")

    def rate(mode, key):
        if mode not in results:
            return None
        seconds = results[mode][key]
        seconds = common.median(seconds) if isinstance(seconds, list) else seconds
        return results[mode]["num_networks"] / seconds

    ref = "one network per call" if "single" in results else None
    n = args.num_networks
    batch = f"{n} in one batch, calls of <= {args.networks_per_call}"
    metrics = [
        common.metric(f"compress search networks/s ({batch})", "net/s",
                      rate("batched", "search_seconds"), rate("single", "search_seconds"), ref),
        common.metric(f"compress pipeline networks/s ({batch}, incl. candidates)",
                      "net/s", rate("batched", "pipeline_seconds"),
                      rate("single", "pipeline_seconds"), ref),
    ]
    metrics.append(common.metric(
        f"compress first pass networks/s ({batch}, incl. compiles)", "net/s",
        rate("batched", "first_pass_seconds"), rate("single", "first_pass_seconds"), ref))
    task = next(iter(results.values()))["task"] if results else None
    title = (f"Batched compression: {n} networks (task {task}), SearchConfig(steps="
             f"{args.search_steps}, decode_every={args.decode_every}), "
             f"{len(defaults.lambdas)} lambdas, surrogate "
             f"{'TINY 12x12 (smoke test)' if tiny else args.surrogate}.")
    status = common.finish(title, args, metrics, {"results": results, "tiny_surrogate": tiny})
    print(f"\nWhere the time goes (one more pass, every stage timed):\n\n{stage_table(results)}")
    return status


def stage_table(results: dict) -> str:
    """Markdown: milliseconds per network of each `compress_batch` stage, one column per mode."""
    modes = list(results)
    stages = list(dict.fromkeys(s for r in results.values() for s in r["stage_seconds"]))
    lines = ["| stage | " + " | ".join(f"{m} ms/network" for m in modes) + " |",
             "|---|" + "---:|" * len(modes)]
    for stage in [*stages, "total"]:
        cells = []
        for mode in modes:
            seconds = results[mode]["stage_seconds"]
            value = sum(seconds.values()) if stage == "total" else seconds.get(stage)
            cells.append("-" if value is None else
                         f"{1000 * value / results[mode]['num_networks']:.2f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
