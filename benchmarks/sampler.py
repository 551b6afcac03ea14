#!/usr/bin/env python3
"""Random architecture sampler speed: accepted architectures per second on one CPU core.

Times `ac_jax.arch.sampler.sample(num, (28, 28, 1), 10, seed, caps)` (the paper's Appendix 9
sampler with rejection, vectorised over batches of candidates) in a fresh process pinned to one
core (``sched_setaffinity``, and 1 thread for OpenMP/BLAS). Reported: accepted architectures/s and
the acceptance rate (accepted / drawn candidates) for each cap set:

  default  SamplerConfig(): 1M parameters, 100M MACs (the default/paper archsets)
  cpu      SamplerConfig(max_macs=20_000_000) (the Fashion-MNIST `cpu` archset)

  python benchmarks/sampler.py                       # 2,000 architectures, both cap sets
  python benchmarks/sampler.py --num 200 --repeats 1  # smoke

Each repeat uses a different seed (seed, seed + 1, ...) so that nothing is memoised; the median
over repeats is reported. The first call in the process (imports, NumPy warm-up) is not timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10
CAPS = {
    "default": {},
    "cpu": {"max_macs": 20_000_000},
}
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def run_sampler(config: dict) -> dict:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
    from ac_jax.arch.sampler import SamplerConfig, sample

    caps = SamplerConfig(**CAPS[config["caps"]])
    sample(8, INPUT_SHAPE, NUM_CLASSES, 10_000, caps)  # warm-up, untimed
    seconds, rates, layers = [], [], []
    for r in range(config["repeats"]):
        start = time.perf_counter()
        archs, rate = sample(config["num"], INPUT_SHAPE, NUM_CLASSES, config["seed"] + r, caps)
        seconds.append(time.perf_counter() - start)
        rates.append(rate)
        layers.append(sum(len(a) for a in archs) / len(archs))
    return {
        "seconds": seconds,
        "acceptance_rate": rates,
        "mean_layers": layers,
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=2000, help="accepted architectures per call")
    parser.add_argument("--caps", nargs="+", choices=tuple(CAPS), default=list(CAPS))
    parser.add_argument("--seed", type=int, default=0)
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if common.run_worker_if_asked(args, {"sampler": run_sampler}):
        return 0
    if args.num < 1 or args.repeats < 1:
        parser.error("need --num >= 1 and --repeats >= 1")

    metrics, results = [], {}
    for caps in args.caps:
        common.log(f"[sampler] caps={caps} ...")
        result = common.spawn(__file__, "sampler", {
            "caps": caps, "num": args.num, "seed": args.seed, "repeats": args.repeats,
        }, env=ONE_THREAD)
        results[caps] = result
        rate = args.num / common.median(result["seconds"])
        accept = common.median(result["acceptance_rate"])
        metrics.append(common.metric(f"sampler ({caps} caps): accepted archs/s, 1 core",
                                     "arch/s", rate, samples=result["seconds"]))
        metrics.append(common.metric(f"sampler ({caps} caps): acceptance rate", "",
                                     accept, samples=result["acceptance_rate"]))
        common.log(f"[sampler] caps={caps}: {rate:,.0f} arch/s, acceptance {accept:.4f}")
    title = (f"Sampler: {args.num} accepted {INPUT_SHAPE} architectures per call, one core "
             f"(no reference implementation).")
    return common.finish(title, args, metrics, {"results": results}, with_jax=False)


if __name__ == "__main__":
    sys.exit(main())
