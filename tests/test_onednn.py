"""The oneDNN convolution (XLA FFI): same values and gradients as the im2col and XLA
convolutions, under vmap, jit and lax.scan; training with it matches the im2col path; builds
fail with a clear error.

Skipped where the library cannot be built (no g++ or no `libdnnl-dev`), unless
AC_JAX_REQUIRE_ONEDNN=1 (set by .ci/run) turns that into a failure.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ac_jax.arch.spec import Arch, batchnorm, conv, linear, maxpool, relu
from ac_jax.child import conv as conv_lib
from ac_jax.child import onednn
from ac_jax.child.trainer import ChildTrainer, TrainSchedule, to_device
from ac_jax.data import load


@pytest.fixture(scope="module", autouse=True)
def require_onednn():
    if not onednn.available():
        if os.environ.get("AC_JAX_REQUIRE_ONEDNN") == "1":
            pytest.fail(f"oneDNN convolution not available: {onednn.reason()}")
        pytest.skip(f"oneDNN convolution not available: {onednn.reason()}")


def _relative_error(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    return float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-12))


# (batch, size, in, out, kernel, stride, padding): 3x3 stride 1 (Winograd under "auto"), strided,
# 1x1, 5x5 without padding, channel counts that are not multiples of 16, a 1-channel input.
SHAPES = [
    (4, 12, 64, 32, 3, 1, 1),
    (3, 9, 16, 24, 3, 2, 1),
    (2, 7, 40, 17, 1, 1, 0),
    (2, 11, 17, 5, 5, 2, 0),
    (2, 8, 1, 16, 3, 1, 1),
]


@pytest.mark.parametrize("algorithm", ["direct", "auto"])
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients_match_im2col_under_vmap(shape, algorithm):
    b, h, c, o, k, s, p = shape
    keys = jax.random.split(jax.random.key(sum(shape)), 3)
    x = jax.random.normal(keys[0], (3, b, h, h, c))  # 3 vmapped seeds
    w = jax.random.normal(keys[1], (3, k, k, c, o)) / np.sqrt(k * k * c)
    bias = jax.random.normal(keys[2], (3, o))

    def loss(conv_fn):
        return lambda x_, w_, b_: jnp.sum(jnp.sin(conv_fn(x_, w_, b_)))

    # Reference: im2col (tested equal to XLA's convolution in test_conv_layers_bench.py); XLA's
    # own convolution under vmap is a grouped convolution XLA:CPU runs as a slow naive loop.
    ours = loss(lambda x_, w_, b_: onednn.conv2d(x_, w_, b_, s, p, algorithm))
    reference = loss(lambda x_, w_, b_: conv_lib.conv2d(x_, w_, s, p, "im2col", b_))
    got = jax.jit(jax.vmap(jax.value_and_grad(ours, (0, 1, 2))))(x, w, bias)
    want = jax.jit(jax.vmap(jax.value_and_grad(reference, (0, 1, 2))))(x, w, bias)
    for g, wnt in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == wnt.shape
        assert _relative_error(g, wnt) < 2e-5


def test_unbatched_call_and_scan():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 16))
    w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16)) / 12
    bias = jnp.zeros(16)
    want = conv_lib.conv2d(x, w, 1, 1, "xla", bias)
    assert _relative_error(onednn.conv2d(x, w, bias, 1, 1), want) < 2e-5

    def body(carry, _):  # the trainer runs its steps inside lax.scan
        y = onednn.conv2d(carry, w, bias, 1, 1)
        return jnp.tanh(y), jnp.sum(y)

    _, sums = jax.jit(lambda v: jax.lax.scan(body, v, None, length=3))(x)
    _, want_sums = jax.lax.scan(
        lambda c, _: (jnp.tanh(conv_lib.conv2d(c, w, 1, 1, "xla", bias)),
                      jnp.sum(conv_lib.conv2d(c, w, 1, 1, "xla", bias))), x, None, length=3)
    np.testing.assert_allclose(np.asarray(sums), np.asarray(want_sums), rtol=1e-4)


def test_auto_picks_onednn_for_wide_float32_layers_only(monkeypatch):
    wide = jnp.zeros((1, 4, 4, 16)), jnp.zeros((3, 3, 16, 8))
    narrow = jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 3, 8))
    few_channels_big_kernel = jnp.zeros((1, 8, 8, 6)), jnp.zeros((6, 6, 6, 8))  # 216 features
    one_by_one = jnp.zeros((1, 4, 4, 32)), jnp.zeros((1, 1, 32, 8))  # 32 features
    assert conv_lib.auto_cpu_impl(*wide) == "onednn"
    assert conv_lib.auto_cpu_impl(*narrow) == "im2col"
    assert conv_lib.auto_cpu_impl(*few_channels_big_kernel) == "onednn"
    assert conv_lib.auto_cpu_impl(*one_by_one) == "im2col"
    assert conv_lib.auto_cpu_impl(*few_channels_big_kernel, stride=6) == "im2col"  # no overlap
    assert conv_lib.auto_cpu_impl(wide[0].astype(jnp.bfloat16), wide[1]) == "im2col"
    monkeypatch.setenv("AC_JAX_ONEDNN", "0")
    assert conv_lib.auto_cpu_impl(*wide) == "im2col"
    assert "AC_JAX_ONEDNN=0" in onednn.reason()


def test_training_with_onednn_matches_im2col():
    from conftest import training_seeds

    dataset = load("synthetic")
    # Three plain-SGD steps: both programs compute the same function with different float
    # orderings (Winograd included), so their losses agree to rounding level; longer training,
    # or Adam (whose first step is ~sign(gradient)), would amplify rounding into real
    # differences on some CPUs and seeds.
    schedule = TrainSchedule(epochs=1, batch_size=32, lr=0.01, optimizer="sgd", train_subset=96,
                             eval_batch_size=128)
    data = to_device(dataset, schedule)
    arch = Arch(dataset.input_shape, dataset.num_classes,
                (conv(3, 16, 1, 1), relu(), conv(3, 24, 1, 1), batchnorm(), relu(), maxpool(2),
                 conv(3, 16, 2, 1), relu(), linear(dataset.num_classes)))
    results = {}
    for impl in ("onednn", "im2col"):  # onednn_direct: same code path, other algorithm
        run = ChildTrainer(data, dataclasses.replace(schedule, conv_impl=impl), 2)
        results[impl] = run.train(arch, training_seeds(2))
        assert results[impl].ok, results[impl].reason
    np.testing.assert_allclose(np.array(results["onednn"].epoch_losses),
                               np.array(results["im2col"].epoch_losses), rtol=1e-4)


def test_failed_build_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("AC_JAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.raises(RuntimeError, match="building the oneDNN convolution failed"):
        onednn.build(force=True)
    assert not list(tmp_path.rglob("*.so"))  # nothing half-written is left to load


def test_plans_evicted_under_a_zero_budget_still_compute_correctly():
    # AC_JAX_ONEDNN_CACHE_MB is read once per process: a fresh interpreter with a zero budget
    # keeps only the newest plan, so alternating shapes rebuild and evict plans every call.
    import subprocess
    import sys

    script = """
import jax, jax.numpy as jnp, numpy as np
from ac_jax.child import conv, onednn
for size, channels in ((6, 16), (5, 24), (6, 16)):  # the third rebuilds the evicted first
    x = jax.random.normal(jax.random.key(size), (2, 3, size, size, channels))
    w = jax.random.normal(jax.random.key(1), (2, 3, 3, channels, 16)) / 12
    b = jnp.ones((2, 16))
    def grads(impl):
        f = lambda x_, w_, b_: jnp.sum(jnp.sin(conv.conv2d(x_, w_, 1, 1, impl, b_)))
        return jax.vmap(jax.grad(f, (0, 1, 2)))(x, w, b)
    for g, want in zip(grads("onednn"), grads("im2col")):
        assert np.max(np.abs(g - want)) <= 2e-5 * np.max(np.abs(want)), (size, channels)
print("ok")
"""
    # Compiled with most XLA optimizations off, as the suite's own process compiles (20 s -> 7 s).
    env = {**os.environ, "AC_JAX_ONEDNN_CACHE_MB": "0", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_unavailable_library_warns_once_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(onednn, "_state", {})
    monkeypatch.setattr(onednn, "build", lambda: (_ for _ in ()).throw(RuntimeError("no g++")))
    with pytest.warns(RuntimeWarning, match="fall back to im2col.*no g\\+\\+"):
        assert not onednn.available()
    assert onednn.reason() == "no g++"
    assert conv_lib.auto_cpu_impl(jnp.zeros((1, 4, 4, 16)), jnp.zeros((3, 3, 16, 8))) == "im2col"


def test_inconsistent_shapes_are_an_error_not_a_crash():
    x, w, b = jnp.zeros((1, 5, 5, 16)), jnp.zeros((3, 3, 16, 8)), jnp.zeros(8)
    wrong_out = jax.ShapeDtypeStruct((1, 4, 4, 8), jnp.float32)  # padding 1 keeps 5x5
    call = jax.ffi.ffi_call(onednn.FORWARD, wrong_out)
    with pytest.raises(Exception, match="output shape does not match"):
        jax.block_until_ready(call(x, w, b, **onednn._attrs(1, 1, "auto")))


FUZZ_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from ac_jax.child import conv, onednn
count, seed = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(seed)
done = 0
while done < count:
    k = int(rng.choice([1, 2, 3, 3, 3, 4, 5, 7]))
    s = int(rng.choice([1, 1, 1, 2, 3]))
    p = int(rng.integers(0, k))
    h = int(rng.integers(max(1, k - 2 * p), 33))
    b = int(rng.choice([1, 3, 64, 128, 200]))
    c = int(rng.choice([16, 17, 32, 48, 64, 96, 100, 128, 255, 256]))
    o = int(rng.choice([1, 5, 16, 17, 32, 64, 96, 128, 255, 256]))
    if rng.random() < 0.5:  # shapes oneDNN may run as Winograd
        k, s, p = 3, 1, int(rng.integers(0, 3))
        h = int(rng.integers(max(1, 3 - 2 * p), 33))
    algorithm = str(rng.choice(["direct", "auto"]))
    if b * h * h * max(c, o) > 4e6 or k * k * c * o > 2e6:
        continue
    print((b, h, c, o, k, s, p, algorithm), flush=True)
    keys = jax.random.split(jax.random.key(done), 3)
    x = jax.random.normal(keys[0], (2, b, h, h, c))
    w = jax.random.normal(keys[1], (2, k, k, c, o)) / np.sqrt(k * k * c)
    bias = jax.random.normal(keys[2], (2, o))
    def grads(fn):
        f = lambda x_, w_, b_: jnp.sum(jnp.sin(fn(x_, w_, b_)))
        return jax.jit(jax.vmap(jax.grad(f, (0, 1, 2))))(x, w, bias)
    got = grads(lambda x_, w_, b_: onednn.conv2d(x_, w_, b_, s, p, algorithm))
    want = grads(lambda x_, w_, b_: conv.conv2d(x_, w_, s, p, "im2col", b_))
    for g, wt in zip(got, want):
        err = float(jnp.max(jnp.abs(g - wt)) / (jnp.max(jnp.abs(wt)) + 1e-12))
        assert err < 1e-4, ("mismatch", err)
    done += 1
print("fuzz ok", done)
"""


@pytest.mark.slow
def test_fuzz_random_shapes_in_a_subprocess():
    """Random shapes (kernels 1-7, strides 1-3, odd channel counts, batches 1-200, half of them
    Winograd-eligible) against im2col. In a subprocess, so that a crash is a failure naming the
    shape (the last line printed) instead of taking pytest down; 7.5 min on 2 cores (2026-11-24)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, "150", "3"], capture_output=True,
                          text=True, timeout=3600)
    last = done.stdout.strip().splitlines()[-1:] or ["(nothing)"]
    assert done.returncode == 0, f"failed at {last[0]}: {done.stderr[-1500:]}"
    assert last[0].startswith("fuzz ok")
