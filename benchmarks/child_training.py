#!/usr/bin/env python3
"""Child-network training speed: ac_jax (seeds vmapped in one XLA program) vs a plain PyTorch loop.

Same architectures (CONV-7 and a few networks from the Appendix 9 sampler with the Fashion-MNIST
`cpu` variant's caps), same batch size (64), same optimiser (Adam, lr 0.01, cross-entropy), same
preprocessing (x / 255 - 0.5), one epoch on a stratified Fashion-MNIST training subset, several
seeds. ac_jax trains all seeds at once (`ChildTrainer`, `jax.vmap` over seeds); PyTorch trains them
one after another in an ordinary eager loop built from `export.to_torch_module_source(arch)`.

Every (architecture, framework) measurement runs in its own subprocess (`common.spawn`), one at a
time, so the frameworks never share a process or fight over threads (each uses its default thread
count).

  python benchmarks/child_training.py                                   # CONV-7 + 3 sampled
  python benchmarks/child_training.py --train-subset 640 --num-sampled 1 --seeds 2   # smoke
  python benchmarks/child_training.py --models conv7 --repeats 3 --json results/child.json
  python benchmarks/child_training.py --models conv7 --conv-impl onednn_direct   # PyTorch's kernels

On CPU, ac_jax's default convolution ("auto") is oneDNN through XLA's FFI with oneDNN's choice of
algorithm (Winograd for 3x3 stride-1 layers); `--conv-impl onednn_direct` runs oneDNN's direct
convolution, the kernels PyTorch's CPU convolution runs, so the ratio then compares everything
but the convolution algorithm.

What is timed. ac_jax: the compiled program (all seeds: one epoch of training plus one evaluation
pass over --test-subset images), after AOT compilation, which is reported separately. PyTorch:
for each seed, model construction, the training epoch and the same evaluation pass. img/s =
seeds x trained images (full batches only, as both drop the last incomplete one) / seconds; the
best of --repeats runs is reported. The mean test accuracy of both is kept in the JSON as a
sanity check that the two loops do comparable work.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repository on sys.path too)

BATCH_SIZE = 64
LR = 0.01
INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10


# ------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------


def benchmark_archs(models: list[str], num_sampled: int, sample_seed: int, variant: str = "cpu"):
    """[(name, Arch)]: zoo CONV-7 and/or the first `num_sampled` sampled architectures (with the
    sampler caps of the Fashion-MNIST config `variant`)."""
    from ac_jax.arch import sampler, zoo
    from configs import get_config

    archs = []
    if "conv7" in models:
        archs.append(("conv7", zoo.get("conv7", INPUT_SHAPE, NUM_CLASSES)))
    if "sampled" in models and num_sampled > 0:
        caps = get_config("fashion_mnist", variant).archset.sampler
        sampled, _ = sampler.sample(num_sampled, INPUT_SHAPE, NUM_CLASSES, sample_seed, caps)
        archs += [(f"sampled-{i}", arch) for i, arch in enumerate(sampled)]
    return archs


def load_data(train_subset: int, test_subset: int, data_dir: str | None):
    from ac_jax.data import load

    dataset = load("fashion_mnist", data_dir)
    return dataset.subset(train_subset, test_subset, seed=0)


# ------------------------------------------------------------------------------------------
# Workers (one per subprocess)
# ------------------------------------------------------------------------------------------


def run_jax(arch, args) -> dict:
    import jax
    import numpy as np

    from ac_jax.child.trainer import ChildTrainer, TrainSchedule, to_device

    dataset = load_data(args.train_subset, args.test_subset, args.data_dir)
    schedule = TrainSchedule(epochs=1, batch_size=BATCH_SIZE, lr=LR,
                             eval_batch_size=min(500, args.test_subset), conv_impl=args.conv_impl)
    data = to_device(dataset, schedule)
    seeds = list(range(args.seeds))
    trainer = ChildTrainer(data, schedule, len(seeds))
    # ChildTrainer.train compiles and forgets the program after each run; keep the executable so
    # that --repeats time the training alone. The call is what `ChildTrainer.train` makes.
    executable, compile_seconds = trainer.compile(arch)
    times, accuracy, finite = [], None, True
    for _ in range(args.repeats):
        start = time.perf_counter()
        acc, losses = jax.device_get(executable(*trainer._args(seeds)))
        times.append(time.perf_counter() - start)
        accuracy, finite = float(np.mean(acc)), bool(np.isfinite(losses).all())
    device = jax.devices()[0]
    conv = args.conv_impl
    if conv == "auto" and jax.default_backend() == "cpu":
        from ac_jax.child import onednn

        conv += " (oneDNN built)" if onednn.available() else f" (no oneDNN: {onednn.reason()})"
    return {
        "compile_seconds": compile_seconds,
        "train_seconds": times,
        "mean_accuracy": accuracy,
        "finite_loss": finite,
        "backend": f"jax {jax.__version__} {jax.default_backend()} "
                   f"({getattr(device, 'device_kind', device)}), conv impl {conv}",
    }


def run_torch(arch, args) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ac_jax.arch.export import to_torch_module_source

    namespace: dict = {"__name__": "child_module"}
    exec(to_torch_module_source(arch), namespace)
    model_class = namespace["Model"]

    device = common.torch_device()
    dataset = load_data(args.train_subset, args.test_subset, args.data_dir)
    # uint8 NHWC -> uint8 NCHW once, on the device (as ac_jax keeps its data on the device); the
    # float conversion happens per batch as in ac_jax.
    def on_device(array):
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    train_x = on_device(dataset.train_x.transpose(0, 3, 1, 2))
    train_y = on_device(dataset.train_y.astype(np.int64))
    test_x = on_device(dataset.test_x.transpose(0, 3, 1, 2))
    test_y = on_device(dataset.test_y.astype(np.int64))
    steps = len(train_y) // BATCH_SIZE

    def preprocess(x):
        return x.float().div_(255.0).sub_(0.5)

    def one_seed(seed: int) -> float:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = model_class().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        model.train()
        order = torch.randperm(len(train_y), generator=generator).to(device)
        for step in range(steps):
            idx = order[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]
            loss = F.cross_entropy(model(preprocess(train_x[idx])), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(test_y), 500):
                logits = model(preprocess(test_x[start:start + 500]))
                correct += int((logits.argmax(1) == test_y[start:start + 500]).sum())
        return correct / len(test_y)

    if device.type == "cuda":  # untimed warm-up: CUDA context, cuDNN autotuning per shape
        one_seed(0)
    times, accuracy = [], None
    for _ in range(args.repeats):
        common.torch_sync(device)
        start = time.perf_counter()
        accs = [one_seed(seed) for seed in range(args.seeds)]
        common.torch_sync(device)
        times.append(time.perf_counter() - start)
        accuracy = float(np.mean(accs))
    return {
        "compile_seconds": 0.0,
        "train_seconds": times,
        "mean_accuracy": accuracy,
        "finite_loss": True,
        "backend": common.torch_backend(device),
    }


def worker(config: dict) -> dict:
    """One (architecture, framework) measurement, in a subprocess started by `measure`."""
    from ac_jax.arch.json_spec import parse_json

    run = run_jax if config["mode"] == "jax" else run_torch
    return run(parse_json(config["arch"]), SimpleNamespace(**config))


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------


def measure(arch, framework: str, args) -> dict:
    """Runs one (architecture, framework) measurement in a fresh subprocess."""
    from ac_jax.arch.json_spec import to_json

    config = {"arch": to_json(arch), "seeds": args.seeds, "train_subset": args.train_subset,
              "test_subset": args.test_subset, "repeats": args.repeats,
              "data_dir": args.data_dir, "conv_impl": args.conv_impl}
    return common.spawn(__file__, framework, config)


def model_flops(macs: int, seeds: int, train_images: int, test_images: int) -> float:
    """Model FLOPs of one timed run: 6 FLOPs per MAC per trained image (forward 2, backward 4),
    2 per MAC per evaluated image, for every seed (the usual MFU convention: no rematerialisation,
    no optimiser or normalisation arithmetic)."""
    return seeds * macs * (6.0 * train_images + 2.0 * test_images)


def archset_archs_per_hour(train_seconds: float, compile_seconds: float, measured_images: int,
                           measured_seeds: int, variant: str) -> dict:
    """Architectures per hour for the archset of Fashion-MNIST config `variant`, extrapolated
    from one measured epoch: time scales with epochs x training images x seeds (the seeds axis
    is vmapped, so this is conservative where a bigger vmap fills the device better). Reported
    twice: compilation exposed, and hidden behind training (archset generation compiles the next
    architecture in a background thread)."""
    from configs import get_config

    a = get_config("fashion_mnist", variant).archset
    images = a.schedule.train_subset or 60_000
    train = train_seconds * a.schedule.epochs * (images / measured_images) * (a.seeds / measured_seeds)
    return {"variant": variant, "epochs": a.schedule.epochs, "train_images": images,
            "seeds": a.seeds, "seconds_per_arch": train + compile_seconds,
            "per_hour_compile_exposed": 3600.0 / (train + compile_seconds),
            "per_hour_compile_hidden": 3600.0 / max(train, compile_seconds)}


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| arch | params | MACs | ac_jax img/s | torch img/s | ratio | ac_jax compile s "
        "| ac_jax model TFLOP/s | MFU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"
        lines.append(
            f"| {r['arch']} | {r['params']:,} | {r['macs'] / 1e6:.1f}M | "
            f"{fmt(r.get('jax_img_per_s'), ',.0f')} | {fmt(r.get('torch_img_per_s'), ',.0f')} | "
            f"{fmt(r.get('ratio'), '.2f')}x | {fmt(r.get('jax_compile_seconds'), '.1f')} | "
            f"{fmt(r.get('jax_model_tflops'), '.3g')} | "
            f"{'-' if r.get('jax_mfu') is None else format(r['jax_mfu'], '.1%')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("conv7", "sampled"),
                        default=["conv7", "sampled"])
    parser.add_argument("--num-sampled", type=int, default=3,
                        help="architectures from the sampler (fashion_mnist cpu caps)")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--train-subset", type=int, default=6000)
    parser.add_argument("--test-subset", type=int, default=1000,
                        help="images evaluated once per seed at the end (in both frameworks)")
    parser.add_argument("--frameworks", nargs="+", choices=("jax", "torch"),
                        default=["jax", "torch"])
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files")
    parser.add_argument("--conv-impl", default="auto",
                        choices=("auto", "onednn", "onednn_direct", "im2col", "im2col_grad", "xla"),
                        help="ac_jax's convolution (ac_jax.child.conv.conv2d); 'onednn_direct' "
                             "runs the same kernels as PyTorch's CPU convolutions")
    parser.add_argument("--variant", default="cpu", choices=("cpu", "default", "paper"),
                        help="Fashion-MNIST config variant whose sampler caps draw the sampled "
                             "architectures and whose archset the archs/hour estimate is for")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for the dtype used, for model FLOP "
                             "utilisation (e.g. 494.7 for TF32 dense on an H100 SXM)")
    common.add_common_args(parser, repeats=1)  # --repeats (the best is reported), --json
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.repeats < 1 or args.train_subset < BATCH_SIZE:
        parser.error(f"need --seeds >= 1, --repeats >= 1, --train-subset >= {BATCH_SIZE}")

    if common.run_worker_if_asked(args, {"jax": worker, "torch": worker}):
        return 0

    from ac_jax.arch import shapes

    load_data(args.train_subset, args.test_subset, args.data_dir)  # fail early if missing
    images = (args.train_subset // BATCH_SIZE) * BATCH_SIZE  # per seed, full batches only
    rows = []
    for name, arch in benchmark_archs(args.models, args.num_sampled, args.sample_seed,
                                      args.variant):
        info = shapes.analyze(arch)
        row = {"arch": name, "layers": [list(layer) for layer in arch.layers],
               "params": info.num_params, "macs": info.macs}
        for framework in args.frameworks:
            print(f"[{name}] {framework} ...", file=sys.stderr, flush=True)
            result = measure(arch, framework, args)
            best = min(result["train_seconds"])
            row[f"{framework}_img_per_s"] = args.seeds * images / best
            row[f"{framework}_compile_seconds"] = result["compile_seconds"]
            row[f"{framework}_result"] = result
            flops = model_flops(info.macs, args.seeds, images, args.test_subset)
            row[f"{framework}_model_tflops"] = flops / best / 1e12
            if args.peak_tflops:
                row[f"{framework}_mfu"] = row[f"{framework}_model_tflops"] / args.peak_tflops
            if framework == "jax" and name.startswith("sampled"):
                row["jax_archset"] = archset_archs_per_hour(
                    best, result["compile_seconds"], images, args.seeds, args.variant)
            print(f"[{name}] {framework}: {row[f'{framework}_img_per_s']:,.0f} img/s "
                  f"(best of {result['train_seconds']}), compile "
                  f"{result['compile_seconds']:.1f} s, accuracy "
                  f"{result['mean_accuracy']:.3f}", file=sys.stderr, flush=True)
        if "jax_img_per_s" in row and "torch_img_per_s" in row:
            row["ratio"] = row["jax_img_per_s"] / row["torch_img_per_s"]
        rows.append(row)

    backends = sorted({r[f"{f}_result"]["backend"] for r in rows for f in args.frameworks})
    print(f"\nOne epoch, batch {BATCH_SIZE}, {args.seeds} seeds, {images} training images per "
          f"seed, {args.test_subset} test images; {platform.machine()} with {os.cpu_count()} "
          f"CPUs; " + "; ".join(backends) + ". ratio = ac_jax / torch.\n")
    print(markdown_table(rows))
    for r in rows:
        if "jax_archset" in r:
            e = r["jax_archset"]
            print(f"\n{r['arch']}: archset `{e['variant']}` proxy ({e['epochs']} epochs x "
                  f"{e['train_images']:,} images x {e['seeds']} seeds) extrapolated: "
                  f"{e['seconds_per_arch']:.1f} s/arch, {e['per_hour_compile_exposed']:,.0f} "
                  f"archs/hour (compile exposed), {e['per_hour_compile_hidden']:,.0f} (hidden)")
    if args.json:
        settings = {k: getattr(args, k) for k in (
            "models", "num_sampled", "sample_seed", "seeds", "train_subset", "test_subset",
            "repeats", "frameworks", "variant", "peak_tflops", "conv_impl")}
        common.save_json(args.json, {"settings": settings, "batch_size": BATCH_SIZE,
                                     "images_per_seed": images, "cpus": os.cpu_count(),
                                     "backends": backends, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
