"""Named losses against their textbook formulas in float64 (a gap found by the mutation
campaign, `benchmarks/mutants.py`: binary cross-entropy was only ever trained with)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_binary_cross_entropy_closed_form_and_gradient(dtype):
    # -Σ [y log σ(z) + (1 - y) log(1 - σ(z))], with hard and soft targets, and its
    # gradient σ(z) - y
    z = np.array([-3.0, -0.5, 0.0, 0.7, 4.0])
    y = np.array([0.0, 1.0, 0.3, 1.0, 0.0])
    s = 1.0 / (1.0 + np.exp(-z))
    want = -np.sum(y * np.log(s) + (1.0 - y) * np.log1p(-s))
    bce = jacsens.LOSSES["binary_cross_entropy"]
    got = bce(jnp.asarray(z, dtype), jnp.asarray(y, dtype))
    assert got.dtype == dtype
    tol = 1e-6 if dtype == jnp.float32 else 1e-14
    np.testing.assert_allclose(float(got), want, rtol=tol)
    grad = jax.grad(bce)(jnp.asarray(z, dtype), jnp.asarray(y, dtype))
    np.testing.assert_allclose(np.asarray(grad, np.float64), s - y, rtol=tol, atol=tol)
