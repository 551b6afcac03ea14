#!/usr/bin/env python3
"""Where a child network's training step spends its time: XLA op times from a profiler trace.

Compiles the same program `ChildTrainer` runs (all seeds vmapped, epochs and minibatches in
`lax.scan`), runs it once to warm up, runs it again under `jax.profiler`, and attributes every
executed XLA op (a thunk on CPU, a kernel on GPU) to the layer and pass it came from, using the
op metadata that JAX writes into the HLO (``jvp(ChildNet)/Conv_1/dot_general`` is layer Conv_1's
forward; ``transpose(jvp(ChildNet))/...`` its backward). Prints milliseconds per training step by
layer and pass, and the most expensive ops.

  python benchmarks/profile_child_step.py                       # CONV-7, 5 seeds, 8 steps
  python benchmarks/profile_child_step.py --model conv7 --steps 4 --top 25 --json prof.json
  python benchmarks/profile_child_step.py --model plan:9 --seeds 2     # an archset architecture

Times are per training step (the single evaluation pass over --test-subset images is reported as
its own "eval" row). On CPU, ops of the two Eigen threads are summed, so per-op figures are
CPU-milliseconds of the thunk that ran them; a thunk using both cores through its own thread pool
(a YNNPACK matmul) counts once. Caveat on XLA:CPU: plain `dot` thunks (the matmuls YNNPACK does
not take, such as the batched weight-gradient products ``patches^T @ grad_out``) run asynchronously
on Eigen's thread pool and their trace event covers only the dispatch, so their time is missing
from the per-op figures. Thunks that ran concurrently on the two threads both count, so the per-op
figures are shares of the work, not a decomposition of the wall time (which is printed too).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repository on sys.path too)

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"

# `%name = f32[...] opcode(...), ... metadata={op_name="..."`
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LAYER = re.compile(r"ChildNet\)*/((?:Conv|BatchNorm|Dense|Dropout)_\d+)")
# Control-flow ops contain other ops' events; counting them would count their bodies twice.
_CONTAINERS = {"while", "call", "conditional", "async-start", "async-done"}


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (opcode, op_name metadata)} of a compiled module's text."""
    ops = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        op_name = _OP_NAME.search(line)
        ops[name] = (opcode, op_name.group(1) if op_name else "")
    return ops


def attribute(op_name: str) -> tuple[str, str]:
    """(pass, layer) of an op from its JAX metadata path."""
    if "transpose(jvp(ChildNet" in op_name:
        phase = "backward"
    elif "jvp(ChildNet" in op_name:
        phase = "forward"
    elif "ChildNet" in op_name:
        # Outside the training scan's jvp: initialisation (before any loop) or evaluation.
        phase = "eval" if "/while" in op_name.split("ChildNet")[0] else "init"
    else:
        phase = "other"
    layer = _LAYER.search(op_name)
    if layer:
        return phase, layer.group(1)
    if "relu" in op_name:
        return phase, "relu"
    if "ChildNet" in op_name:
        return phase, "pool/flatten/other"
    if "preprocess" in op_name:
        return phase, "preprocess"
    if "softmax" in op_name or "logsumexp" in op_name:
        return phase, "loss"
    return phase, "-"


def trace_events(trace_dir: str, names: set[str]) -> collections.Counter:
    """Total nanoseconds per HLO instruction name over all profiler events."""
    from jax.profiler import ProfileData

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not files:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    totals: collections.Counter = collections.Counter()
    planes = list(ProfileData.from_file(files[-1]).planes)
    # On a GPU the kernels' own timeline is on the device planes; host-side launch events may
    # carry the same op names and must not count as well.
    device = [p for p in planes if p.name.startswith("/device:GPU")]
    for plane in device or planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in names:
                    totals[event.name] += event.duration_ns
    return totals


def _arch(model: str, dataset_name: str, dataset):
    """A zoo network, or ``plan:N[:VARIANT]``: position N of the dataset's archset plan."""
    from ac_jax.arch import zoo

    if not model.startswith("plan:"):
        return zoo.get(model, dataset.input_shape, dataset.num_classes)
    from ac_jax.archset import generate
    from configs import get_config

    _, index, *variant = model.split(":")
    cfg = get_config(dataset_name, variant[0] if variant else "cpu")
    planned = generate.plan(cfg.archset, dataset.input_shape, dataset.num_classes, int(index) + 1)
    return planned[-1].arch


def profile(model: str, seeds: int, steps: int, test_subset: int, data_dir: str | None,
            dataset_name: str = "fashion_mnist") -> dict:
    """Profiles one run of `model`'s training program; rows of per-op milliseconds per step.

    Needs ``TRACE_FLAG`` in ``XLA_FLAGS`` before JAX starts (`main` sets it) for per-op events on
    CPU; without it the CPU trace has no op events and the result has no rows.
    """
    import jax

    from ac_jax.child.trainer import ChildTrainer, TrainSchedule, to_device
    from ac_jax.data import load

    batch = 64
    dataset = load(dataset_name, data_dir).subset(batch * steps, test_subset, seed=0)
    if len(dataset.train_y) < batch * steps:
        raise ValueError(f"{dataset_name} has {len(dataset.train_y)} training images, fewer "
                         f"than {steps} steps of {batch}")
    arch = _arch(model, dataset_name, dataset)
    schedule = TrainSchedule(epochs=1, batch_size=batch, lr=0.01,
                             eval_batch_size=min(500, test_subset))
    data = to_device(dataset, schedule)
    trainer = ChildTrainer(data, schedule, seeds)
    executable, compile_seconds = trainer.compile(arch)
    args = trainer._args(range(seeds))
    jax.block_until_ready(executable(*args))  # warm-up run, not profiled
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        jax.block_until_ready(executable(*args))
        wall_seconds = time.perf_counter() - start
        jax.profiler.stop_trace()
        ops = {name: op for name, op in hlo_ops(executable.as_text()).items()
               if op[0] not in _CONTAINERS}
        totals = trace_events(trace_dir, set(ops))
    rows = []
    for name, ns in totals.items():
        opcode, op_name = ops[name]
        phase, layer = attribute(op_name)
        per = 1 if phase == "eval" else steps
        rows.append({"op": name, "opcode": opcode, "pass": phase, "layer": layer,
                     "ms": ns / 1e6 / per, "op_name": op_name})
    rows.sort(key=lambda r: -r["ms"])
    return {"model": model, "seeds": seeds, "steps": steps, "batch_size": batch,
            "compile_seconds": compile_seconds, "wall_seconds": wall_seconds, "ops": rows,
            "machine": common.machine_info(with_torch=False)}


def summary_tables(result: dict, top: int) -> str:
    by_layer: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in result["ops"]:
        by_layer[row["layer"]][row["pass"]] += row["ms"]
    passes = ["forward", "backward", "other", "eval"]
    train_total = sum(c[p] for c in by_layer.values() for p in passes[:3])
    eval_total = sum(c["eval"] for c in by_layer.values())
    wall_ms = 1000 * result["wall_seconds"]
    lines = [f"{result['model']}, {result['seeds']} seeds x batch {result['batch_size']}: "
             f"{train_total:.0f} ms of XLA ops per training step (summed over threads); the "
             f"profiled run took {wall_ms:.0f} ms wall for {result['steps']} steps and one "
             f"evaluation pass ({eval_total:.0f} ms of ops)",
             "", "| layer | forward ms | backward ms | other ms (loss, Adam, data) | share of step |",
             "|---|---:|---:|---:|---:|"]
    order = sorted(by_layer, key=lambda k: -sum(by_layer[k][p] for p in passes[:3]))
    for layer in order:
        c = by_layer[layer]
        step_ms = sum(c[p] for p in passes[:3])
        if step_ms < 0.05:
            continue
        lines.append(f"| {layer} | {c['forward']:.1f} | {c['backward']:.1f} | "
                     f"{c['optimizer/other']:.1f} | {100 * step_ms / train_total:.1f}% |")
    lines += ["", f"Top {top} ops (ms per step; eval ops per evaluation pass):", "",
              "| op | opcode | pass | layer | ms | JAX op |", "|---|---|---|---|---:|---|"]
    for row in result["ops"][:top]:
        short = row["op_name"].split("/")[-1] if row["op_name"] else ""
        opcode = row["opcode"] + (" (dispatch only)" if row["opcode"] == "dot" else "")
        lines.append(f"| {row['op']} | {opcode} | {row['pass']} | {row['layer']} | "
                     f"{row['ms']:.1f} | {short} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="conv7", help="zoo name (conv7, conv10, vgg16, tinycnn), or plan:N[:VARIANT] for position N "
                        "of the dataset's archset plan (variant cpu by default)")
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist or synthetic")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="training steps of batch 64")
    parser.add_argument("--test-subset", type=int, default=100)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", default=None, help="also save every op's row here")
    args = parser.parse_args(argv)
    # Per-thunk trace events on XLA:CPU; read when JAX initialises its backend, i.e. later.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRACE_FLAG}".strip()
    result = profile(args.model, args.seeds, args.steps, args.test_subset, args.data_dir,
                     args.dataset)
    print(common.machine_line(result["machine"]))
    print(f"compile {result['compile_seconds']:.1f} s")
    print(summary_tables(result, args.top))
    if args.json:
        common.save_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
