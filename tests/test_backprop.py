"""The hand-written kernel `jacsens.backprop`, against autodiff."""

import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import jacsens
from jacsens import backprop
from jacsens._losses import cross_entropy, half_squared_error

from helpers import (
    assert_close,
    init_model,
    perturb_biases,
    random_inputs,
    random_mlp,
    random_probabilities,
)

CUBE = jacsens.Activation("cube", lambda z: z**3 / 3, lambda z: z**2)

MODELS = {
    "mlp": (lambda k: random_mlp(k, 5, (6, 4), 3, "silu", final_activation="tanh"), (5,), (3,)),
    "scalar": (lambda k: random_mlp(k, "scalar", (6,), "scalar", "sin"), (), ()),
    "affine": (lambda k: random_mlp(k, 4, (), 2), (4,), (2,)),
    "eqx-mlp": (
        lambda k: eqx.nn.MLP(5, 3, 6, 2, activation=jax.nn.gelu, use_final_bias=False, key=k),
        (5,),
        (3,),
    ),
    "sequential": (
        lambda k: eqx.nn.Sequential(
            [
                eqx.nn.Lambda(jnp.tanh),  # acts on the input itself
                eqx.nn.Linear(5, 6, key=jax.random.fold_in(k, 0)),
                eqx.nn.Lambda(CUBE),  # a user-defined Activation
                eqx.nn.Lambda(jax.nn.sigmoid),  # two activations in a row
                eqx.nn.Linear(6, 3, key=jax.random.fold_in(k, 1)),
            ]
        ),
        (5,),
        (3,),
    ),
}


def _params(tree):
    return [x for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]


@pytest.mark.parametrize("name", list(MODELS), ids=list(MODELS))
def test_kernel_matches_autodiff(getkey, name):
    build, in_shape, out_shape = MODELS[name]
    model = perturb_biases(init_model(build, getkey()), getkey())
    B = 4
    X = random_inputs(getkey(), B, in_shape)
    J = backprop.input_jacobian(model, X)
    assert J.shape == (B, *out_shape, *in_shape)
    assert_close(J, jacsens.input_jacobian(model, X, mode="rev"), 1e-12)

    Y = random_inputs(getkey(), B, out_shape)
    loss_grad = backprop.squared_error_grad
    auto_mean = jacsens.weight_grad(model, "half_squared_error", X, Y)
    auto_each = jacsens.per_sample_grads(model, "half_squared_error", X, Y)
    for reduction, ref, scale in (
        ("mean", auto_mean, 1.0),
        ("sum", auto_mean, float(B)),
        ("none", auto_each, 1.0),
    ):
        kern = backprop.weight_grads(model, loss_grad, X, Y, reduction=reduction)
        assert jax.tree.structure(kern) == jax.tree.structure(ref)
        for a, b in zip(_params(kern), _params(ref), strict=True):
            assert a.shape == b.shape
            assert_close(a, b * scale, 1e-12)


def test_forward_cache(getkey):
    m = random_mlp(getkey(), 3, (4,), 2, "tanh", final_activation="sigmoid")
    m = perturb_biases(m, getkey())
    x = random_inputs(getkey(), 1, (3,))[0]
    y, cache = backprop.forward(m, x)
    assert_close(y, m(x), 1e-15)
    (W1, b1), (W2, b2) = ((layer.weight, layer.bias) for layer in m.layers)
    z1 = W1 @ x + b1
    z2 = W2 @ jnp.tanh(z1) + b2
    assert_close(cache.inputs[0][0], x, 0)
    assert_close(cache.inputs[1][0], jnp.tanh(z1), 1e-15)
    assert_close(cache.pre[0][0], z1, 1e-15)
    assert_close(cache.pre[1][0], z2, 1e-15)
    assert_close(cache.derivs[0][0], 1 - jnp.tanh(z1) ** 2, 1e-15)
    s = jax.nn.sigmoid(z2)
    assert_close(cache.derivs[1][0], s * (1 - s), 1e-15)
    assert_close(cache.input_deriv[0], jnp.ones(3), 0)
    with pytest.raises(ValueError, match=r"`x` must have shape \(3,\) \(one sample\), got \(2, 3"):
        backprop.forward(m, jnp.zeros((2, 3)))


@pytest.mark.parametrize("label", ["one-hot", "soft", "integer"])
def test_cross_entropy_kernel(getkey, label):
    m = perturb_biases(random_mlp(getkey(), 4, (6,), 3, "sigmoid"), getkey())
    X = random_inputs(getkey(), 5, (4,))
    ints = jnp.array([0, 2, 1, 1, 0])
    Y = {
        "one-hot": jax.nn.one_hot(ints, 3, dtype=jnp.float64),
        "soft": random_probabilities(getkey(), (5,), 3),
        "integer": ints,
    }[label]
    auto = jacsens.per_sample_grads(m, "cross_entropy", X, Y)
    kern = backprop.weight_grads(m, backprop.softmax_cross_entropy_grad, X, Y, reduction="none")
    for a, b in zip(_params(kern), _params(auto), strict=True):
        assert_close(a, b, 1e-12)


def test_loss_grads_match_autodiff(getkey):
    logits = random_inputs(getkey(), 1, (6,))[0]
    y = random_probabilities(getkey(), (), 6)
    assert_close(
        backprop.softmax_cross_entropy_grad(logits, y), jax.grad(cross_entropy)(logits, y), 1e-14
    )
    assert_close(
        backprop.softmax_cross_entropy_grad(logits, jnp.array(4)),
        jax.grad(cross_entropy)(logits, jax.nn.one_hot(4, 6, dtype=jnp.float64)),
        1e-14,
    )
    t = random_inputs(getkey(), 1, (6,))[0]
    assert_close(
        backprop.squared_error_grad(logits, t), jax.grad(half_squared_error)(logits, t), 1e-15
    )
    # stable for huge logits (no overflow in exp)
    big = jnp.array([1000.0, 0.0, -1000.0])
    g = backprop.softmax_cross_entropy_grad(big, jnp.array([0.0, 1.0, 0.0]))
    assert jnp.all(jnp.isfinite(g))
    assert_close(g, jnp.array([1.0, -1.0, 0.0]), 1e-15)


def test_kernel_uses_no_autodiff():
    """The kernel is an independent opinion: no JAX transformation of derivatives in it."""
    source = inspect.getsource(backprop)
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("-"))
    for name in ("jax.grad", "jax.vjp", "jax.jvp", "jacfwd", "jacrev", "linearize"):
        assert f"{name}(" not in code


def test_kernel_under_jit(getkey):
    m = random_mlp(getkey(), 4, (5,), 2, "tanh")
    X = random_inputs(getkey(), 3, (4,))
    Y = random_inputs(getkey(), 3, (2,))
    run = jax.jit(
        lambda X, Y: (
            backprop.input_jacobian(m, X),
            backprop.weight_grads(m, backprop.squared_error_grad, X, Y, reduction="none"),
        )
    )
    J, g = run(X, Y)
    assert_close(J, jacsens.input_jacobian(m, X, mode="rev"), 1e-12)
    ref = jacsens.per_sample_grads(m, "half_squared_error", X, Y)
    for a, b in zip(_params(g), _params(ref), strict=True):
        assert_close(a, b, 1e-12)


def test_kernel_bad_input(getkey):
    m = random_mlp(getkey(), 4, (5,), 2, "tanh")
    X = random_inputs(getkey(), 3, (4,))
    Y = random_inputs(getkey(), 3, (2,))
    with pytest.raises(jacsens.ChainError, match="cannot read a layer chain from function"):
        backprop.input_jacobian(lambda x: jnp.sin(x), X)
    with pytest.raises(jacsens.ChainError):
        backprop.weight_grads(lambda x: x, backprop.squared_error_grad, X, Y)
    with pytest.raises(ValueError, match=r"`X` must have shape \(batch, 4\).*got \(3, 5\)"):
        backprop.input_jacobian(m, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"`X` must have shape.*got \(4,\)"):
        backprop.weight_grads(m, backprop.squared_error_grad, jnp.zeros(4), Y)
    with pytest.raises(TypeError, match="`X` must have a floating dtype, got dtype int"):
        backprop.input_jacobian(m, jnp.zeros((3, 4), dtype=jnp.int32))
    with pytest.raises(ValueError, match="same batch size"):
        backprop.weight_grads(m, backprop.squared_error_grad, X, Y[:2])
    with pytest.raises(ValueError, match=r"Unknown `reduction` 'avg'"):
        backprop.weight_grads(m, backprop.squared_error_grad, X, Y, reduction="avg")
    with pytest.raises(TypeError, match="`loss_grad` must be callable, got str"):
        backprop.weight_grads(m, "half_squared_error", X, Y)


def test_kernel_loss_grad_shape_and_empty_batch(getkey):
    m = random_mlp(getkey(), 3, (4,), 2, "tanh")
    X = random_inputs(getkey(), 5, (3,))
    Y = random_inputs(getkey(), 5, (2,))
    with pytest.raises(ValueError, match=r"`loss_grad` must return .* shape \(2,\), got \(\)"):
        backprop.weight_grads(m, lambda y, t: jnp.sum(y - t), X, Y)
    with pytest.raises(ValueError, match="`loss_grad` cannot be evaluated"):
        backprop.weight_grads(m, lambda y, t: y @ jnp.ones((7, 7)), X, Y)
    # an empty batch: zero gradients (the mean of nothing), not a division by zero
    g = backprop.weight_grads(m, backprop.squared_error_grad, X[:0], Y[:0])
    assert float(jnp.max(jnp.abs(g.layers[0].weight))) == 0.0
    g_none = backprop.weight_grads(m, backprop.squared_error_grad, X[:0], Y[:0], reduction="none")
    assert g_none.layers[0].weight.shape == (0, 4, 3)
