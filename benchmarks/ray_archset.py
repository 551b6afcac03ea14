#!/usr/bin/env python3
"""Archset generation on a local Ray instance against one process, same plan, side by side.

Each run is a fresh `bin/make_archset.py` subprocess into a fresh archset file, one after the
other on an otherwise idle machine, each with its own empty compilation cache:

  process   the in-process loop (background compile thread, trainings one after another)
  ray       --ray local: one task per architecture, `--workers` CPUs' worth of tasks at once

and prints wall seconds, records per hour and the ratio (ray / process; > 1: Ray is faster).
On a 2-core CPU both are CPU-bound (a training already uses both cores through XLA's threads),
so the ratio measures Ray's overhead and any overlap of compiling with training, not a gain
from more hardware.

  python benchmarks/ray_archset.py --num 20          # the cpu plan's first 20 architectures
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(label: str, extra: list[str], num: int, dataset: str, variant: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "archset.sqlite"
        env = {**os.environ, "AC_JAX_COMPILE_CACHE": str(Path(tmp) / "xla")}
        cmd = [sys.executable, str(REPO / "bin/make_archset.py"), "--dataset", dataset,
               "--variant", variant, "--num", str(num), "--out", str(out), "--no-plots",
               "--quiet", *extra]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        summary = json.loads(subprocess.run(
            [sys.executable, str(REPO / "bin/make_archset.py"), "--summary", str(out)],
            check=True, capture_output=True, text=True).stdout)
    return {"label": label, "wall_seconds": wall, "records": summary["records"],
            "records_per_hour": 3600 * summary["records"] / wall, "statuses": summary["statuses"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num", type=int, default=20)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--variant", default="cpu")
    p.add_argument("--json", help="save the rows here")
    args = p.parse_args(argv)
    rows = [run("one process", [], args.num, args.dataset, args.variant),
            run("local Ray", ["--ray", "local"], args.num, args.dataset, args.variant)]
    print("| run | wall s | records | records/h |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['wall_seconds']:.0f} | {r['records']} | "
              f"{r['records_per_hour']:.0f} |")
    print(f"ratio (Ray / one process, records per hour): "
          f"{rows[1]['records_per_hour'] / rows[0]['records_per_hour']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
