"""`fit` stopping at a non-finite step whose successors are finite (a gap found by the
mutation campaign, `benchmarks/mutants.py`: in the other divergence tests every step after
the first bad one is bad too, so applying later steps went unnoticed)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxtyping import Array

import jacsens


class SqrtModel(eqx.Module):
    """`y = w sqrt(x_0) + b x_1`: NaN exactly for the rows with a negative `x_0`."""

    w: Array
    b: Array

    def __call__(self, x):
        return self.w * jnp.sqrt(x[0]) + self.b * x[1]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_steps_after_a_refused_one_are_not_applied(getkey, dtype):
    n, bad_pos, lr = 7, 2, 0.1
    key = getkey()
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), n))
    rng = np.random.default_rng(0)
    X = np.stack([rng.uniform(0.5, 2.0, n), rng.normal(size=n)], axis=1).astype(dtype)
    X[perm[bad_pos], 0] = -1.0  # finite data; only this row's loss is NaN
    Y = rng.normal(size=n).astype(dtype)
    model = SqrtModel(jnp.asarray(0.3, dtype), jnp.asarray(-0.2, dtype))
    with pytest.raises(jacsens.NonFiniteLossError) as info:
        jacsens.fit(model, X, Y, optimizer=optax.sgd(lr), epochs=3, batch_size=1, key=key)
    err = info.value
    assert (err.epoch, err.step) == (0, bad_pos)
    # the model is plain SGD over the rows before the refused step, in float64, and no
    # step after it (all finite) was applied
    w, b = 0.3, -0.2
    for r in perm[:bad_pos]:
        x0, x1, y = (float(v) for v in (X[r, 0], X[r, 1], Y[r]))
        resid = w * np.sqrt(x0) + b * x1 - y
        w, b = w - lr * 2 * resid * np.sqrt(x0), b - lr * 2 * resid * x1
    tol = 1e-6 if dtype == jnp.float32 else 1e-14
    np.testing.assert_allclose([float(err.model.w), float(err.model.b)], [w, b], rtol=tol)
