"""The slice-based max pools match `reduce_window` (values and, without ties, gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ac_jax.child.pooling import max_pool


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 1, 1), (3, 2, 1), (2, 1, 1), (1, 2, 0), (4, 3, 2),
                                   (3, 3, 1), (2, 2, 1), (4, 4, 0), (1, 1, 0), (12, 12, 2),
                                   (9, 5, 4), (5, 2, 2)])
def test_slices_match_reduce_window(k, s, p):
    size = (2, 27, 25, 3) if k > 4 else (2, 11, 9, 3)  # a 12x12 window needs a bigger input
    x = jax.random.normal(jax.random.key(k * 100 + s * 10 + p), size)  # no ties
    want = max_pool(x, k, s, p, "xla")
    got = max_pool(x, k, s, p, "slices")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    weights = jax.random.normal(jax.random.key(7), want.shape)

    def loss(impl):
        return lambda v: jnp.sum(max_pool(v, k, s, p, impl) * weights)

    np.testing.assert_allclose(np.asarray(jax.grad(loss("slices"))(x)),
                               np.asarray(jax.grad(loss("xla"))(x)), rtol=1e-6, atol=1e-6)


def test_unknown_impl_is_a_clear_error():
    with pytest.raises(ValueError, match="max-pool impl"):
        max_pool(jnp.zeros((1, 4, 4, 1)), 2, 2, 0, "fast")


def test_tiled_pool_gradient_goes_to_the_first_maximum_like_pytorch():
    # Ties everywhere: one window of four equal values, one with a tie in its second row.
    x = jnp.array([[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0]]).reshape(1, 2, 4, 1)
    weights = jnp.array([3.0, 5.0]).reshape(1, 1, 2, 1)
    grad = jax.grad(lambda v: jnp.sum(max_pool(v, 2, 2, 0, "slices") * weights))(x)
    np.testing.assert_array_equal(np.asarray(grad).reshape(2, 4),
                                  [[3.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])


def test_tiled_pool_under_jit_and_vmap_matches_reduce_window():
    x = jax.random.normal(jax.random.key(3), (3, 2, 9, 7, 4))  # 3 seeds, odd sizes
    weights = jax.random.normal(jax.random.key(4), (3, 2, 4, 3, 4))

    def loss(impl):
        def seed_loss(v, w):
            return jnp.sum(max_pool(v, 2, 2, 0, impl) * w)
        return jax.jit(jax.vmap(jax.value_and_grad(seed_loss)))

    got_value, got_grad = loss("slices")(x, weights)
    want_value, want_grad = loss("xla")(x, weights)
    np.testing.assert_allclose(np.asarray(got_value), np.asarray(want_value), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), rtol=1e-6, atol=1e-6)
