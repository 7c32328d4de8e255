"""Per-sample losses (`jacsens._losses`): named losses, wrapped callables and losses that
are `eqx.Module`s holding arrays."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens._losses import get_loss

from helpers import assert_close, random_inputs, random_mlp


class WeightedSE(eqx.Module):
    w: jax.Array

    def __call__(self, y, t):
        return jnp.sum(self.w * (y - t) ** 2)


@pytest.fixture
def problem(getkey):
    model = random_mlp(getkey(), 4, (5,), 3, "tanh")
    X = random_inputs(getkey(), 6, (4,))
    Y = jax.random.normal(getkey(), (6, 3))
    return model, X, Y


def test_module_loss_with_arrays(problem):
    model, X, Y = problem
    w = jnp.array([1.0, 2.0, 0.5])
    loss = WeightedSE(w)

    def reference(m):  # the same loss written inline
        return jax.vmap(lambda x, y: jnp.sum(w * (m(x) - y) ** 2))(X, Y)

    g_ref = eqx.filter_grad(lambda m: jnp.mean(reference(m)))(model)
    g = jacsens.weight_grad(model, loss, X, Y)
    assert_close(g.layers[0].weight, g_ref.layers[0].weight, 1e-12)
    ps = jacsens.per_sample_grads(model, loss, X, Y)
    assert_close(jnp.mean(ps.layers[-1].weight, 0), g_ref.layers[-1].weight, 1e-12)
    for method in ("ghost", "materialise"):
        norms = jacsens.per_sample_grad_norms(model, loss, X, Y, method=method)
        flat = jnp.concatenate(
            [x.reshape(6, -1) for x in jax.tree.leaves(eqx.filter(ps, eqx.is_array))], axis=1
        )
        assert_close(norms, jnp.linalg.norm(flat, axis=1), 1e-12)
    # the array inside the loss is traced, not baked in: new weights, new gradient
    g2 = jacsens.weight_grad(model, WeightedSE(2 * w), X, Y)
    assert_close(g2.layers[0].weight, 2 * g.layers[0].weight, 1e-12)
    # a functools.partial over an array is a pytree too
    partial = functools.partial(lambda y, t, w: jnp.sum(w * (y - t) ** 2), w=w)
    assert_close(
        jacsens.weight_grad(model, partial, X, Y).layers[0].weight, g.layers[0].weight, 1e-12
    )


def test_function_loss_hits_the_jit_cache(problem):
    model, X, Y = problem
    traces = []

    def loss(y, t):
        traces.append(1)  # runs once per trace, never at run time
        return jnp.sum((y - t) ** 2)

    g1 = jacsens.weight_grad(model, loss, X, Y)
    n = len(traces)
    assert n >= 1
    g2 = jacsens.weight_grad(model, loss, X, Y)
    jacsens.weight_grad(model, loss, X, Y + 1.0)
    assert len(traces) == n  # same function, same shapes: no retrace
    assert_close(g1.layers[0].weight, g2.layers[0].weight, 0.0)
    # equal wrappers of one function
    assert get_loss(loss) == get_loss(loss)


def test_elementwise_callable_is_summed_and_named_losses_closed_form():
    y, t = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.0, 1.0, 0.5])
    summed = get_loss(lambda a, b: (a - b) ** 2)
    assert float(summed(y, t)) == pytest.approx(10.0)
    assert float(get_loss("mse")(y, t)) == pytest.approx(10.0 / 3)
    assert float(get_loss("half_squared_error")(y, t)) == pytest.approx(5.0)
    logits = jnp.array([0.0, np.log(3.0), 0.0])  # softmax = (1, 3, 1) / 5
    assert float(get_loss("cross_entropy")(logits, jnp.array(1))) == pytest.approx(np.log(5 / 3))


def test_cross_entropy_label_out_of_range():
    logits = jnp.array([0.0, np.log(3.0), 0.0])
    ce = jacsens.LOSSES["cross_entropy"]
    for label in (3, 5, -1):
        with pytest.raises(ValueError, match=rf"class label in \[0, 3\) for 3 logits, got {label}"):
            ce(logits, jnp.array(label))
    assert float(ce(logits, 2)) == pytest.approx(np.log(5.0))  # a Python int label works
    # under jit the label is traced: no check (fit and weight_grad check the batch up front)
    assert np.isfinite(float(jax.jit(ce)(logits, jnp.array(0))))
