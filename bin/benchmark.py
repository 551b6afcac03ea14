#!/usr/bin/env python3
"""Runs the speed benchmarks side by side on this machine and prints one Markdown table.

Sections (each runs as its own subprocess, one after another; each of them again runs every
measurement in a fresh process of its own, see benchmarks/common.py):

  child      child-network training, ac_jax (seeds vmapped, one XLA program) vs PyTorch eager
             (benchmarks/child_training.py; CONV-7 and sampled architectures)
  compile    XLA compile time per sampled architecture: cold, persistent-cache hit, and hidden
             behind training in a background thread (benchmarks/compile_time.py)
  sampler    accepted architectures/s of the Appendix 9 sampler on one core, acceptance rate
             (benchmarks/sampler.py)
  surrogate  surrogate training steps/s, ac_jax vs a PyTorch re-implementation
             (benchmarks/surrogate_step.py)
  compress   networks/s of batched compression (256 networks, calls of <= 64) vs one network per
             call, search alone and whole pipeline (benchmarks/batch_compress.py)

The table has one row per metric: the ac_jax value, the reference it is compared with (PyTorch,
or the slower ac_jax mode), and the ratio, oriented so that > 1 means ac_jax (the first value)
is better. Values are medians over --repeats timed runs; machine details (platform, CPU,
`jax.devices()`, library versions) head the table.

  python bin/benchmark.py --markdown results/benchmarks.md --json results/benchmarks.json
  python bin/benchmark.py --only sampler,surrogate --repeats 5
  python bin/benchmark.py --quick                       # tiny sizes: a smoke test, not numbers

Run it on an otherwise idle machine: everything here measures wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import child_training  # noqa: E402
import common  # noqa: E402

SECTIONS = ("child", "compile", "sampler", "surrogate", "compress")
SCRIPTS = {
    "child": "child_training.py",
    "compile": "compile_time.py",
    "sampler": "sampler.py",
    "surrogate": "surrogate_step.py",
    "compress": "batch_compress.py",
}
# --quick: sizes that finish in a minute or two each on a laptop; numbers are meaningless.
QUICK = {
    "child": ["--models", "sampled", "--num-sampled", "1", "--test-subset", "200"],
    "compile": ["--num-archs", "2", "--train-subset", "256", "--test-subset", "100",
                "--seeds", "1"],
    "sampler": ["--num", "200"],
    "surrogate": ["--steps-per-call", "5", "--num-train", "128"],
    "compress": ["--num-networks", "4", "--search-steps", "5", "--tiny-fallback",
                 "--tiny-steps", "50"],
}
QUICK_CHILD = {"train_subset": 256, "seeds": 2}


def section_command(name: str, args, json_out: Path) -> list[str]:
    cmd = [sys.executable, str(REPO / "benchmarks" / SCRIPTS[name])]
    if args.quick:
        cmd += QUICK[name]
    cmd += ["--repeats", str(args.repeats), "--json", str(json_out)]
    if name == "child":
        for key in ("train_subset", "seeds"):
            value = getattr(args, key)
            if value is None and args.quick:
                value = QUICK_CHILD[key]
            if value is not None:
                cmd += [f"--{key.replace('_', '-')}", str(value)]
    if name == "child":
        cmd += ["--variant", args.variant]
        if args.peak_tflops:
            cmd += ["--peak-tflops", str(args.peak_tflops)]
    if name in ("child", "compile") and args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if name == "compress" and args.surrogate:
        cmd += ["--surrogate", args.surrogate]
    return cmd


def child_metrics(result: dict) -> list[dict]:
    """Rows of benchmarks/child_training.py's JSON, as medians (the script prints the best)."""
    seeds = result["settings"]["seeds"]
    images = result["images_per_seed"]
    rows, compile_s, archset = [], [], []
    for row in result["rows"]:
        rate = {}
        for framework in ("jax", "torch"):
            res = row.get(f"{framework}_result")
            if res:
                rate[framework] = seeds * images / common.median(res["train_seconds"])
        rows.append(common.metric(
            f"child training img/s: {row['arch']} ({row['params']:,} params, "
            f"{row['macs'] / 1e6:.1f}M MACs), {seeds} seeds", "img/s",
            rate.get("jax"), rate.get("torch"), "PyTorch (eager)" if "torch" in rate else None,
            accuracy={f: row[f"{f}_result"]["mean_accuracy"] for f in rate}))
        if "jax" in rate:
            flops = child_training.model_flops(row["macs"], seeds, images,
                                               result["settings"]["test_subset"])
            peak = result["settings"].get("peak_tflops")
            tflops = {f: flops * rate[f] / (seeds * images) / 1e12 for f in rate}
            rows.append(common.metric(
                f"child training model TFLOP/s: {row['arch']}"
                + (f" (MFU {tflops['jax'] / peak:.1%} of {peak:g})" if peak else ""),
                "TFLOP/s", tflops["jax"], tflops.get("torch"),
                "PyTorch (eager)" if "torch" in tflops else None))
        if row.get("jax_result"):
            compile_s.append(row["jax_result"]["compile_seconds"])
        if row.get("jax_archset"):
            archset.append(row["jax_archset"])
    if compile_s:
        rows.append(common.metric("child training program compile s (median over archs)", "s",
                                  common.median(compile_s), higher_is_better=False,
                                  per_arch=compile_s))
    if archset:
        e = archset[0]
        proxy = (f"`{e['variant']}` archset proxy, {e['epochs']} epochs x {e['train_images']:,} "
                 f"images x {e['seeds']} seeds, extrapolated from the sampled archs")
        for key, label in (("per_hour_compile_exposed", "compile exposed"),
                           ("per_hour_compile_hidden", "compile in background")):
            rows.append(common.metric(f"archset archs/hour ({proxy}; {label}; median)", "arch/h",
                                      common.median([a[key] for a in archset])))
    return rows


def display_command(cmd: list[str]) -> str:
    """``python benchmarks/x.py FLAGS`` without the temporary --json file."""
    shown = ["python", str(Path(cmd[1]).relative_to(REPO))]
    rest = cmd[2:]
    i = 0
    while i < len(rest):
        if rest[i] == "--json":
            i += 2
            continue
        shown.append(rest[i])
        i += 1
    return " ".join(shown)


def run_section(name: str, args, tmp: Path) -> dict:
    json_out = tmp / f"{name}.json"
    cmd = section_command(name, args, json_out)
    common.log(f"\n=== {name}: {' '.join(cmd)}")
    start = time.perf_counter()
    # The section's own output (progress, its table) goes to stderr; stdout is the combined table.
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, cwd=REPO)
    entry = {"command": cmd, "display_command": display_command(cmd),
             "seconds": time.perf_counter() - start, "returncode": proc.returncode}
    if proc.returncode != 0 or not json_out.exists():
        entry["error"] = f"exit status {proc.returncode}"
        entry["metrics"] = []
        return entry
    entry["result"] = json.loads(json_out.read_text())
    metrics = (child_metrics(entry["result"]) if name == "child"
               else entry["result"]["metrics"])
    entry["metrics"] = [{"section": name, **m} for m in metrics]
    return entry


def markdown(sections: dict, machine: dict, args) -> str:
    rows = [m for entry in sections.values() for m in entry["metrics"]]
    lines = [
        "# ac_jax benchmarks" + (" (--quick: smoke-test sizes, not for comparison)"
                                 if args.quick else ""),
        "",
        f"- platform: {machine['platform']}",
        f"- CPU: {machine['cpu']} ({machine['cpu_count']} logical CPUs, "
        f"{machine['usable_cpus']} usable)",
        f"- Python {machine['python']}; jax {machine.get('jax')} "
        f"(backend {machine.get('jax_backend')}, devices {machine.get('jax_devices')}); "
        f"torch {machine.get('torch')} ({machine.get('torch_threads')} threads)",
        f"- medians of {args.repeats} timed repeat(s); ratio > 1: the ac_jax value is better "
        "(faster)",
        "",
        common.metrics_table(rows, with_section=True),
    ]
    failed = [name for name, entry in sections.items() if "error" in entry]
    if failed:
        lines += ["", "Failed sections: " + ", ".join(
            f"{name} ({sections[name]['error']})" for name in failed)]
    lines += ["", "Commands:", ""]
    lines += [f"- {name}: `{e['display_command']}`" for name, e in sections.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default 3, 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="child: training images per seed (passed through)")
    parser.add_argument("--seeds", type=int, default=None, help="child: seeds (passed through)")
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files")
    parser.add_argument("--variant", default="cpu", choices=("cpu", "default", "paper"),
                        help="child: config variant for the sampled architectures' caps and the "
                             "archset archs/hour estimate (default cpu; paper scale: default)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="child: the device's peak TFLOP/s, for model FLOP utilisation")
    parser.add_argument("--surrogate", default=None, metavar="DIR",
                        help="compress: trained surrogate (default surrogates/fashion_mnist)")
    parser.add_argument("--markdown", metavar="OUT", help="also write the Markdown table here")
    parser.add_argument("--json", metavar="OUT", help="also save everything as JSON")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown or not only:
        parser.error(f"--only: unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    sections = {}
    with tempfile.TemporaryDirectory(prefix="ac_jax_benchmark_") as tmp:
        for name in SECTIONS:
            if name in only:
                sections[name] = run_section(name, args, Path(tmp))
    machine = common.machine_info()  # after the runs: the driver stays idle while they run
    text = markdown(sections, machine, args)
    print(text)
    if args.markdown:
        out = Path(args.markdown)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        common.log(f"wrote {out}")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "markdown")}
        common.save_json(args.json, {
            "settings": settings, "machine": machine, "sections": sections,
            "metrics": [m for e in sections.values() for m in e["metrics"]],
        })
    return 1 if any("error" in e for e in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
