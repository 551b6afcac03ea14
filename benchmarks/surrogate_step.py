#!/usr/bin/env python3
"""Surrogate training step: ac_jax (jitted `lax.scan` chunk) vs a PyTorch re-implementation.

ac_jax: `ac_jax.surrogate.train.make_train_chunk` (steps_per_call steps inside one compiled
`lax.scan`, batches drawn on the device), `init_state`, `make_optimizer`, the model of
`ac_jax/surrogate/model.py` with its default shape (T = 64, widths 32/64/128, embedding 64,
regressors 128 wide) and the joint loss ``L_d + L_a + L_p`` of `joint_loss`.

PyTorch: the same network in NCW layout, built from the same `SurrogateArch`:
  * `Conv1D` (SAME padding, written as an im2col matmul in ac_jax) -> `nn.Conv1d(padding=k // 2)`;
    stride 2 gives the same ceil(T / 2) output positions;
  * the transposed convolution (ac_jax: insert zeros, then convolve) ->
    `nn.ConvTranspose1d(k, stride=2, padding=k // 2, output_padding=1)`: same output length 2T,
    same parameter count (it skips the multiplications by the inserted zeros);
  * residual blocks ``x + relu(bn(conv(x)))`` with a separate projection conv on the shortcut
    where the stride or width changes, `BatchNorm1d` (momentum 0.1 = flax 0.9, eps 1e-5);
  * encoder Dense to the embedding, decoder Dense + reshape, two 3 x (fc-relu) + fc regressors
    (sigmoid on the accuracy one); the parameter counts are checked to be equal;
  * the same loss: rounding-unit weighted squared reconstruction error (summed over the 6
    channels, averaged over positions), L1 accuracy error, Huber (delta 1) on the normalised
    parameter count; Adam, lr 3e-3; batches of --batch-size indices drawn with replacement.
Both train on the same data: --num-train architectures from the Appendix 9 sampler (Fashion-MNIST
shape), encoded with `encode_matrices`, with made-up accuracies.

What is timed: ac_jax: one steady-state call of the AOT-compiled chunk (--steps-per-call steps,
until the new state is ready), after one untimed warm-up call; compilation is reported
separately. PyTorch: --steps-per-call eager steps (zero_grad, forward, loss, backward, Adam step)
after as many untimed warm-up steps. steps/s = steps / median over --repeats. Each framework runs
in its own fresh process with its default thread count.

  python benchmarks/surrogate_step.py                                       # 200 steps x 3
  python benchmarks/surrogate_step.py --steps-per-call 5 --repeats 1        # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10
LR = 3e-3


def _config(config: dict):
    from ac_jax.surrogate.config import SurrogateConfig
    from ac_jax.surrogate.model import SurrogateArch

    return SurrogateConfig(
        arch=SurrogateArch(max_len=config["max_len"]), batch_size=config["batch_size"],
        optimizer="adam", lr=LR, decay_every_epochs=0, steps_per_call=config["steps_per_call"],
    )


def _data(config: dict):
    """(feats [N, T, 6], accuracy [N], params target [N]) as float32 NumPy arrays."""
    import numpy as np

    from ac_jax.arch.sampler import SamplerConfig, sample
    from ac_jax.surrogate.encoding import encode_matrices
    from ac_jax.surrogate.train import Normaliser

    max_len = config["max_len"]
    archs, _ = sample(config["num_train"], INPUT_SHAPE, NUM_CLASSES, 0,
                      SamplerConfig(max_len=min(50, max_len), max_macs=20_000_000))
    feats = encode_matrices(np.stack([a.to_matrix(max_len) for a in archs]))
    num_params = np.array([a.num_params for a in archs])
    accuracy = np.random.default_rng(0).uniform(0.1, 0.9, len(archs)).astype(np.float32)
    target = Normaliser.fit(num_params, "log").to_target(num_params).astype(np.float32)
    return feats, accuracy, target


# ------------------------------------------------------------------------------------------
# ac_jax
# ------------------------------------------------------------------------------------------


def run_jax(config: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from ac_jax.surrogate.model import Surrogate, count_params
    from ac_jax.surrogate.train import init_state, make_optimizer, make_train_chunk

    cfg = _config(config)
    feats, accuracy, target = _data(config)
    model = Surrogate(cfg.arch)
    tx = make_optimizer(cfg, max(1, len(feats) // cfg.batch_size))
    state = init_state(model, cfg, tx)
    num_params = count_params(state["params"])
    chunk = make_train_chunk(model, tx, cfg, len(feats))
    data = (jnp.asarray(feats), jnp.asarray(accuracy), jnp.asarray(target))
    key = jax.random.PRNGKey(1)
    start = time.perf_counter()
    compiled = chunk.lower(state, data, key).compile()
    compile_seconds = time.perf_counter() - start
    state, parts = compiled(state, data, jax.random.fold_in(key, 0))  # warm-up
    jax.block_until_ready((state, parts))
    times, losses = [], []
    for r in range(config["repeats"]):
        start = time.perf_counter()
        state, parts = compiled(state, data, jax.random.fold_in(key, r + 1))
        jax.block_until_ready((state, parts))
        times.append(time.perf_counter() - start)
        losses.append(float(parts["loss"]))
    return {"seconds": times, "compile_seconds": compile_seconds, "loss": losses,
            "num_params": num_params,
            "backend": f"jax {jax.__version__} {jax.default_backend()} {jax.devices()}"}


# ------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------


def torch_surrogate(arch):
    """The ac_jax `Surrogate` as a PyTorch module (NCW layout): returns (recon, acc, p, y)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from ac_jax.surrogate.encoding import NUM_INPUT_FEATURES

    k = arch.kernel_size
    if k % 2 == 0:
        raise ValueError("the PyTorch re-implementation needs an odd kernel size (SAME padding)")

    def conv(cin, cout, stride=1, transpose=False):
        if transpose and stride > 1:
            return nn.ConvTranspose1d(cin, cout, k, stride=stride, padding=k // 2,
                                      output_padding=stride - 1)
        return nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2)

    class ResBlock(nn.Module):
        def __init__(self, cin, features, stride=1, transpose=False):
            super().__init__()
            self.conv = conv(cin, features, stride, transpose)
            self.bn = nn.BatchNorm1d(features, eps=1e-5, momentum=0.1)
            project = stride != 1 or cin != features
            self.shortcut = conv(cin, features, stride, transpose) if project else None

        def forward(self, x):
            h = F.relu(self.bn(self.conv(x)))
            return h + (self.shortcut(x) if self.shortcut is not None else x)

    def regressor():
        h = arch.regressor_hidden
        return nn.Sequential(nn.Linear(arch.embed_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                             nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    reduced = arch.max_len // 2 ** len(arch.widths)

    class Surrogate(nn.Module):
        def __init__(self):
            super().__init__()
            widths = arch.widths
            enc, cin = [conv(NUM_INPUT_FEATURES, widths[0])], widths[0]
            for w in widths:
                enc += [ResBlock(cin, w), ResBlock(w, w, stride=2)]
                cin = w
            self.encoder = nn.Sequential(*enc)
            self.embed = nn.Linear(reduced * widths[-1], arch.embed_dim)
            self.expand = nn.Linear(arch.embed_dim, reduced * widths[-1])
            dec, cin = [], widths[-1]
            for w in reversed(widths):
                dec += [ResBlock(cin, w, stride=2, transpose=True), ResBlock(w, w, transpose=True)]
                cin = w
            dec.append(conv(cin, NUM_INPUT_FEATURES))
            self.decoder = nn.Sequential(*dec)
            self.accuracy = regressor()
            self.params_regressor = regressor()

        def forward(self, x):  # [B, 6, T]
            y = self.embed(self.encoder(x).flatten(1))
            h = self.expand(y).view(y.shape[0], arch.widths[-1], reduced)
            recon = self.decoder(h)
            acc = torch.sigmoid(self.accuracy(y)[:, 0])
            return recon, acc, self.params_regressor(y)[:, 0], y

    return Surrogate()


def run_torch(config: dict) -> dict:
    import torch
    from torch.nn import functional as F

    from ac_jax.surrogate.encoding import ROUNDING_UNIT_WEIGHTS

    cfg = _config(config)
    feats, accuracy, target = _data(config)
    device = common.torch_device()
    torch.manual_seed(0)
    model = torch_surrogate(cfg.arch).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    x_all = torch.from_numpy(feats.transpose(0, 2, 1).copy()).to(device)  # [N, 6, T]
    acc_all = torch.from_numpy(accuracy).to(device)
    p_all = torch.from_numpy(target).to(device)
    weights = torch.from_numpy(ROUNDING_UNIT_WEIGHTS)[None, :, None].to(device)
    generator = torch.Generator(device=device).manual_seed(1)
    n, batch = len(feats), cfg.batch_size

    def step():
        idx = torch.randint(0, n, (batch,), generator=generator, device=device)
        x, acc_true, p_true = x_all[idx], acc_all[idx], p_all[idx]
        recon, acc, p, _ = model(x)
        loss_d = (weights * (recon - x) ** 2).sum(1).mean()
        loss_a = (acc - acc_true).abs().mean()
        loss_p = F.huber_loss(p, p_true, delta=1.0)
        loss = loss_d + cfg.accuracy_weight * loss_a + cfg.params_weight * loss_p
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    steps = cfg.steps_per_call
    for _ in range(steps):  # warm-up, as many steps as one timed run
        step()
    times, losses = [], []
    for _ in range(config["repeats"]):
        start = time.perf_counter()
        total = 0.0
        for _ in range(steps):
            total += float(step().detach())  # the loss must be read anyway for a progress bar
        times.append(time.perf_counter() - start)
        losses.append(total / steps)
    return {"seconds": times, "compile_seconds": 0.0, "loss": losses,
            "num_params": int(sum(p.numel() for p in model.parameters())),
            "backend": common.torch_backend(device)}


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=64, help="T, the sequence length")
    parser.add_argument("--steps-per-call", type=int, default=200,
                        help="steps per timed run (ac_jax: per compiled chunk)")
    parser.add_argument("--num-train", type=int, default=1024, help="training architectures")
    parser.add_argument("--frameworks", nargs="+", choices=("jax", "torch"),
                        default=["jax", "torch"])
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if common.run_worker_if_asked(args, {"jax": run_jax, "torch": run_torch}):
        return 0
    if min(args.batch_size, args.steps_per_call, args.num_train, args.repeats) < 1:
        parser.error("sizes and --repeats must be >= 1")

    config = {k: getattr(args, k) for k in (
        "batch_size", "max_len", "steps_per_call", "num_train", "repeats")}
    results = {}
    for framework in args.frameworks:
        common.log(f"[surrogate] {framework} ...")
        results[framework] = common.spawn(__file__, framework, config)
        r = results[framework]
        common.log(f"[surrogate] {framework}: {r['seconds']} s per {args.steps_per_call} steps, "
                   f"compile {r['compile_seconds']:.1f} s, loss {r['loss']}, "
                   f"{r['num_params']:,} parameters")
    if len({r["num_params"] for r in results.values()}) > 1:
        raise SystemExit(f"parameter counts differ: "
                         f"{ {f: r['num_params'] for f, r in results.items()} }")

    def rate(framework):
        if framework not in results:
            return None
        return args.steps_per_call / common.median(results[framework]["seconds"])

    metrics = [common.metric(
        f"surrogate train steps/s (batch {args.batch_size}, T={args.max_len})", "step/s",
        rate("jax"), rate("torch"), "PyTorch (eager)" if "torch" in results else None)]
    if "jax" in results:
        metrics.append(common.metric("surrogate train chunk compile s", "s",
                                     results["jax"]["compile_seconds"], higher_is_better=False))
    title = (f"Surrogate training step: batch {args.batch_size}, T={args.max_len}, Adam, "
             f"{args.steps_per_call} steps per timed run, "
             f"{next(iter(results.values()))['num_params']:,} parameters; "
             + "; ".join(r["backend"] for r in results.values()) + ".")
    return common.finish(title, args, metrics, {"results": results}, with_torch=True)


if __name__ == "__main__":
    sys.exit(main())
