#!/usr/bin/env python3
"""One convolution layer at a time: forward + input gradient + weight gradient, all seeds.

For every convolution of a zoo network (CONV-7 by default) this times what one training step does
with that layer: the forward convolution and both gradients, for `--seeds` seeds of
`--batch` images each. ac_jax runs the seeds vmapped inside one jitted `lax.scan` (as the trainer
does) with each convolution implementation asked for; PyTorch (the reference) runs the seeds one
after another with `F.conv2d` and autograd. Each (implementation, layer list) runs in its own
subprocess, one after the other.

  python benchmarks/conv_layers.py                                  # CONV-7, auto + PyTorch
  python benchmarks/conv_layers.py --impls im2col winograd2 torch --json results/conv_layers.json

Implementations: the library's `conv2d` impls ("auto", the CPU default: "onednn" for layers with
16 or more input channels, "im2col" below; "onednn", oneDNN with its choice of algorithm;
"onednn_direct", oneDNN's direct convolution as PyTorch runs it; "im2col"; "xla"; "im2col_grad")
and two Winograd variants written in jax.numpy, kept here as measured alternatives, F(2x2, 3x3) and F(4x4, 3x3)
(`winograd_conv`, stride-1 3x3 layers only; others fall back to im2col and are marked). Winograd
cuts the multiplications 2.25x / 4x but trades them for input and output transforms, which are
memory-bound elementwise passes over 4x / 2.25x the activations.

The loss is sum(y^2) (scaled), so that the output gradient is a real dense tensor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repository on sys.path too)

JAX_IMPLS = ("im2col", "onednn", "onednn_direct", "auto", "xla", "im2col_grad", "winograd2", "winograd4")
STEPS = 4  # scan steps per timed call


# ------------------------------------------------------------------------------------------
# Winograd F(m x m, 3 x 3), stride 1 (Lavin & Gray 2016)
# ------------------------------------------------------------------------------------------

# (B^T, G, A^T) with the interpolation points of Lavin & Gray.
_WINOGRAD = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def _combine(terms, coefficients):
    """sum_i c_i * terms[i], skipping zeros and multiplying only where |c| != 1."""
    total = None
    for c, term in zip(coefficients, terms):
        if c == 0:
            continue
        term = term if c == 1 else (-term if c == -1 else c * term)
        total = term if total is None else total + term
    return total


def winograd_conv(x, kernel, padding: int, m: int = 2):
    """NHWC x HWIO 3x3 stride-1 convolution by Winograd F(m x m, 3 x 3); same result as
    `lax.conv_general_dilated` up to float rounding. The transforms are separable row/column
    combinations of strided slices, so XLA fuses them; the 9 -> (m+2)^2/m^2 products per output
    pixel are one batched matmul over the (m+2)^2 transform positions."""
    import jax.numpy as jnp

    bt, g, at = (np.asarray(mat, np.float32) for mat in _WINOGRAD[m])
    a = m + 2
    b, h, w, c = x.shape
    o = kernel.shape[-1]
    out_h, out_w = h + 2 * padding - 2, w + 2 * padding - 2
    tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
    # Pad so that every tile (stride m, size m + 2) lies inside the input.
    x = jnp.pad(x, ((0, 0), (padding, tiles_h * m + 2 - h - padding),
                    (padding, tiles_w * m + 2 - w - padding), (0, 0)))
    rows = [x[:, i : i + m * (tiles_h - 1) + 1 : m] for i in range(a)]
    transformed = []
    for u in range(a):
        row_mix = _combine(rows, bt[u])
        cols = [row_mix[:, :, j : j + m * (tiles_w - 1) + 1 : m] for j in range(a)]
        transformed += [_combine(cols, bt[v]) for v in range(a)]
    v_input = jnp.stack(transformed).reshape(a * a, b * tiles_h * tiles_w, c)
    u_kernel = jnp.einsum("ui,ijco,vj->uvco", g, kernel, g).reshape(a * a, c, o)
    products = jnp.matmul(v_input, u_kernel).reshape(a, a, b, tiles_h, tiles_w, o)
    outputs = []
    for r in range(m):
        row_out = _combine([products[u] for u in range(a)], at[r])
        outputs += [_combine([row_out[v] for v in range(a)], at[s]) for s in range(m)]
    y = jnp.stack(outputs).reshape(m, m, b, tiles_h, tiles_w, o)
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(b, tiles_h * m, tiles_w * m, o)
    return y[:, :out_h, :out_w]


def conv_fn(impl: str, kernel_size: int, stride: int):
    """(x, kernel, padding) -> y for `impl`; Winograd only where it applies (3x3, stride 1)."""
    from ac_jax.child.conv import conv2d

    if impl.startswith("winograd") and kernel_size == 3 and stride == 1:
        m = int(impl[-1])
        return lambda x, k, p: winograd_conv(x, k, p, m), impl
    base = "im2col" if impl.startswith("winograd") else impl
    return lambda x, k, p: conv2d(x, k, stride, p, base), base


# ------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------


def conv_layers(model: str) -> list[dict]:
    """The convolutions of a zoo model on Fashion-MNIST-shaped input, with their input shapes."""
    from ac_jax.arch import shapes, zoo
    from ac_jax.arch.spec import LayerType

    arch = zoo.get(model, (28, 28, 1), 10)
    layers, index = [], 0
    for layer, info in zip(arch.layers, shapes.analyze(arch).layers):
        if layer.t == LayerType.CONV:
            h, w, c = info.in_shape
            _, k, o, s, p = layer
            layers.append({"name": f"Conv_{index}", "h": h, "w": w, "c": c, "o": o,
                           "k": k, "s": s, "p": p})
            index += 1
    return layers


# ------------------------------------------------------------------------------------------
# Workers
# ------------------------------------------------------------------------------------------


def _time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def run_jax(config: dict) -> dict:
    import jax
    import jax.numpy as jnp

    seeds, batch, impl = config["seeds"], config["batch"], config["impl"]
    results = []
    for layer in config["layers"]:
        conv, used = conv_fn(impl, layer["k"], layer["s"])

        def loss(x, kernel, conv=conv, p=layer["p"]):
            y = conv(x, kernel, p)
            return 1e-6 * jnp.sum(y * y)

        grads = jax.vmap(jax.grad(loss, argnums=(0, 1)))

        @jax.jit
        def program(x, kernel, grads=grads):
            # The carry feeds every step's gradients into the next input, so steps cannot be
            # hoisted or skipped.
            def step(carry, _):
                gx, gk = grads(x + carry, kernel)
                return carry + 1e-3 * (jnp.mean(gx) + jnp.mean(gk)), None

            return jax.lax.scan(step, jnp.float32(0), None, length=STEPS)[0]

        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(
            (seeds, batch, layer["h"], layer["w"], layer["c"]), np.float32))
        kernel = jnp.asarray(0.05 * rng.standard_normal(
            (seeds, layer["k"], layer["k"], layer["c"], layer["o"]), np.float32))
        program(x, kernel).block_until_ready()
        seconds = _time(lambda: program(x, kernel).block_until_ready(), config["repeats"])
        results.append({**layer, "impl": used, "ms": 1000 * seconds / STEPS})
    return {"layers": results}


def run_torch(config: dict) -> dict:
    import torch
    import torch.nn.functional as F

    device = common.torch_device()
    seeds, batch = config["seeds"], config["batch"]
    results = []
    for layer in config["layers"]:
        gen = torch.Generator().manual_seed(0)
        xs = [torch.randn(batch, layer["c"], layer["h"], layer["w"], generator=gen).to(device)
              for _ in range(seeds)]
        ws = [(0.05 * torch.randn(layer["o"], layer["c"], layer["k"], layer["k"],
                                  generator=gen)).to(device).requires_grad_() for _ in range(seeds)]

        def one_step():
            for x, w in zip(xs, ws):
                x = x.detach().requires_grad_()
                y = F.conv2d(x, w, stride=layer["s"], padding=layer["p"])
                (1e-6 * (y * y).sum()).backward()
                w.grad = None
            common.torch_sync(device)

        one_step()
        seconds = _time(lambda: [one_step() for _ in range(STEPS)], config["repeats"])
        results.append({**layer, "impl": "torch", "ms": 1000 * seconds / STEPS})
    return {"layers": results, "backend": common.torch_backend(device)}


def worker(config: dict) -> dict:
    return run_torch(config) if config["impl"] == "torch" else run_jax(config)


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------


def markdown_table(layers: list[dict], by_impl: dict[str, list[dict]]) -> str:
    impls = list(by_impl)
    head = "| layer | in (HxWxC) | out | " + " | ".join(f"{i} ms" for i in impls) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * len(impls)]
    totals = dict.fromkeys(impls, 0.0)
    for i, layer in enumerate(layers):
        cells = []
        for impl in impls:
            row = by_impl[impl][i]
            totals[impl] += row["ms"]
            note = f" ({row['impl']})" if row["impl"] not in (impl, "torch") else ""
            cells.append(f"{row['ms']:.0f}{note}")
        lines.append(f"| {layer['name']} {layer['k']}x{layer['k']}/{layer['s']} | "
                     f"{layer['h']}x{layer['w']}x{layer['c']} | {layer['o']} | "
                     + " | ".join(cells) + " |")
    lines.append("| **sum** | | | " + " | ".join(f"**{totals[i]:.0f}**" for i in impls) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="conv7", help="zoo model whose convolutions are timed")
    parser.add_argument("--impls", nargs="+", default=["auto", "torch"],
                        choices=[*JAX_IMPLS, "torch"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="only these layers (e.g. Conv_1); default: all convolutions")
    common.add_common_args(parser, repeats=3)
    args = parser.parse_args(argv)
    if common.run_worker_if_asked(args, {"jax": worker, "torch": worker}):
        return 0

    layers = conv_layers(args.model)
    if args.layers:
        layers = [layer for layer in layers if layer["name"] in args.layers]
        if not layers:
            parser.error(f"no convolution named {args.layers} in {args.model}")
    by_impl = {}
    for impl in args.impls:
        common.log(f"timing {impl} on {len(layers)} layer(s) ...")
        config = {"impl": impl, "layers": layers, "seeds": args.seeds, "batch": args.batch,
                  "repeats": args.repeats}
        by_impl[impl] = common.spawn(__file__, "torch" if impl == "torch" else "jax",
                                     config)["layers"]
    table = markdown_table(layers, by_impl)
    machine = common.machine_info(with_jax=True, with_torch="torch" in args.impls)
    print(f"\n{args.model}: forward + both gradients per layer, {args.seeds} seeds x "
          f"{args.batch} images, best of {args.repeats} (ms per step)\n\n"
          f"Machine: {common.machine_line(machine)}\n\n{table}")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "worker")}
        common.save_json(args.json, {"settings": settings, "machine": machine,
                                     "layers": by_impl, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
