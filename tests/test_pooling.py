"""The slice-based max pool matches `reduce_window` (values and, without ties, gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ac_jax.child.pooling import max_pool


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 1, 1), (3, 2, 1), (2, 1, 1), (1, 2, 0), (4, 3, 2)])
def test_slices_match_reduce_window(k, s, p):
    x = jax.random.normal(jax.random.key(k * 100 + s * 10 + p), (2, 11, 9, 3))  # no ties
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
