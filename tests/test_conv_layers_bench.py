"""benchmarks/conv_layers.py: the Winograd convolutions it measures compute the same function as
XLA's convolution (values and both gradients), and the layer list matches the architecture."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import conv_layers  # noqa: E402

from ac_jax.child.conv import conv2d  # noqa: E402


@pytest.mark.parametrize("m,size,padding", [(2, 8, 1), (2, 7, 1), (4, 9, 0), (4, 7, 1)])
def test_winograd_matches_xla_convolution_and_its_gradients(m, size, padding):
    rng = np.random.default_rng(m * 100 + size)
    x = jnp.asarray(rng.standard_normal((2, size, size + 1, 3), np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 5), np.float32))
    reference = conv2d(x, kernel, 1, padding, "xla")
    result = conv_layers.winograd_conv(x, kernel, padding, m)
    assert result.shape == reference.shape
    scale = float(jnp.max(jnp.abs(reference)))
    np.testing.assert_allclose(result, reference, atol=1e-4 * scale)

    def loss(conv):
        return lambda x_, k_: jnp.sum(jnp.sin(conv(x_, k_)))

    ref_grads = jax.grad(loss(lambda a, b: conv2d(a, b, 1, padding, "xla")), (0, 1))(x, kernel)
    win_grads = jax.grad(loss(lambda a, b: conv_layers.winograd_conv(a, b, padding, m)), (0, 1))(
        x, kernel
    )
    for got, want in zip(win_grads, ref_grads):
        np.testing.assert_allclose(got, want, atol=1e-3 * float(jnp.max(jnp.abs(want))))


def test_winograd_only_where_it_applies():
    assert conv_layers.conv_fn("winograd2", 3, 1)[1] == "winograd2"
    assert conv_layers.conv_fn("winograd2", 3, 2)[1] == "im2col"
    assert conv_layers.conv_fn("winograd4", 5, 1)[1] == "im2col"
    assert conv_layers.conv_fn("xla", 3, 1)[1] == "xla"


def test_conv7_layers_and_their_input_shapes():
    layers = conv_layers.conv_layers("conv7")
    assert [layer["name"] for layer in layers] == [f"Conv_{i}" for i in range(7)]
    assert [(c["h"], c["c"], c["o"]) for c in layers] == [
        (28, 1, 64), (28, 64, 64), (14, 64, 64), (14, 64, 96), (7, 96, 128), (7, 128, 128),
        (7, 128, 256),
    ]


def test_markdown_table_sums_and_marks_fallbacks():
    layers = [{"name": "Conv_0", "k": 3, "s": 2, "h": 8, "w": 8, "c": 1, "o": 4}]
    by_impl = {
        "winograd2": [{"ms": 2.0, "impl": "im2col"}],
        "torch": [{"ms": 3.0, "impl": "torch"}],
    }
    table = conv_layers.markdown_table(layers, by_impl)
    assert "| 2 (im2col) | 3 |" in table
    assert "**2** | **3**" in table
