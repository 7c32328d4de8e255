"""`jacsens.MLP` and the activation table with closed-form derivatives (`jacsens._models`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens._models import get_activation

from helpers import assert_close

# Points away from 0, where relu / leaky_relu / elu have their kink.
Z = jnp.concatenate([jnp.linspace(-4.0, -0.05, 40), jnp.linspace(0.05, 4.0, 40)])


@pytest.mark.parametrize("name", sorted(jacsens.ACTIVATIONS))
def test_closed_form_derivative_matches_autodiff(name):
    act = jacsens.ACTIVATIONS[name]
    assert act.name == name
    auto = jax.vmap(jax.grad(act.fn))(Z)
    assert_close(act.deriv(Z), auto, 1e-13)
    # and central differences on the function itself
    h = 1e-6
    fd = (act.fn(Z + h) - act.fn(Z - h)) / (2 * h)
    assert_close(act.deriv(Z), fd, 1e-8)
    # elementwise: the Jacobian of f on a vector is diag(f')
    J = jax.jacfwd(act.fn)(Z[:7])
    np.testing.assert_allclose(J, jnp.diag(act.deriv(Z[:7])), rtol=1e-13, atol=1e-15)
    assert act(Z).shape == Z.shape


@pytest.mark.parametrize(
    "name, reference",
    [
        ("tanh", jnp.tanh),
        ("sigmoid", jax.nn.sigmoid),
        ("relu", jax.nn.relu),
        ("softplus", jax.nn.softplus),
        ("gelu", jax.nn.gelu),
        ("gelu_exact", lambda z: jax.nn.gelu(z, approximate=False)),
        ("silu", jax.nn.silu),
        ("elu", jax.nn.elu),
        ("leaky_relu", jax.nn.leaky_relu),
        ("sin", jnp.sin),
        ("identity", lambda z: z),
    ],
)
def test_activation_values_match_jax(name, reference):
    z = jnp.concatenate([Z, jnp.zeros(1)])
    assert_close(jacsens.ACTIVATIONS[name].fn(z), reference(z), 1e-14)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu"])
def test_kink_derivative_convention(name):
    """At the kink the closed form agrees with JAX's own derivative convention."""
    act = jacsens.ACTIVATIONS[name]
    ref = {"relu": jax.nn.relu, "leaky_relu": jax.nn.leaky_relu, "elu": jax.nn.elu}[name]
    assert float(act.deriv(jnp.zeros(()))) == float(jax.grad(ref)(0.0))


def test_get_activation():
    assert get_activation("tanh") is jacsens.ACTIVATIONS["tanh"]
    custom = jacsens.Activation("cube", lambda z: z**3, lambda z: 3 * z**2)
    assert get_activation(custom) is custom
    with pytest.raises(ValueError, match=r"Unknown `activation` 'tanhh'.*'sigmoid'"):
        get_activation("tanhh")
    with pytest.raises(TypeError, match="`final_activation` must be an activation name"):
        get_activation(3, "final_activation")


@pytest.mark.parametrize("act", sorted(jacsens.ACTIVATIONS))
def test_mlp_forward_written_out(getkey, act):
    m = jacsens.MLP(5, (4, 3), 2, act, key=getkey(), final_activation="sigmoid")
    x = jax.random.normal(getkey(), (5,))
    f = jacsens.ACTIVATIONS[act].fn
    (l1, l2, l3), sig = m.layers, jax.nn.sigmoid
    expected = sig(l3.weight @ f(l2.weight @ f(l1.weight @ x + l1.bias) + l2.bias) + l3.bias)
    assert_close(m(x), expected, 1e-14)
    assert m(x, key=getkey()).shape == (2,)


@pytest.mark.parametrize(
    "in_size, widths, out_size, in_shape, out_shape, weight_shapes",
    [
        (5, (), 3, (5,), (3,), [(3, 5)]),
        (5, (7,), "scalar", (5,), (), [(7, 5), (1, 7)]),
        ("scalar", (4, 6), 2, (), (2,), [(4, 1), (6, 4), (2, 6)]),
        ("scalar", [3], "scalar", (), (), [(3, 1), (1, 3)]),
    ],
)
def test_mlp_shapes(getkey, in_size, widths, out_size, in_shape, out_shape, weight_shapes):
    m = jacsens.MLP(in_size, widths, out_size, key=getkey())
    assert m.in_shape == in_shape and m.out_shape == out_shape
    assert m.widths == tuple(widths)
    assert [layer.weight.shape for layer in m.layers] == weight_shapes
    assert m(jnp.ones(in_shape)).shape == out_shape
    assert jax.vmap(m)(jnp.ones((3, *in_shape))).shape == (3, *out_shape)


def test_mlp_options(getkey):
    m = jacsens.MLP(4, (3,), 2, "relu", key=getkey(), use_bias=False, dtype=jnp.float32)
    assert all(layer.bias is None for layer in m.layers)
    assert all(layer.weight.dtype == jnp.float32 for layer in m.layers)
    x = jnp.ones(4, jnp.float32)
    assert m(x).dtype == jnp.float32
    assert_close(m(x), m.layers[1].weight @ jax.nn.relu(m.layers[0].weight @ x), 1e-6)
    assert m.hyperparameters() == {
        "in_size": 4,
        "widths": [3],
        "out_size": 2,
        "activation": "relu",
        "final_activation": None,
        "use_bias": False,
        "dtype": "float32",
    }
    # the activation is static: only the weights are leaves
    assert len(jax.tree.leaves(m)) == 2
    # deterministic in the key
    k = getkey()
    a = jacsens.MLP(4, (3,), 2, "relu", key=k, use_bias=False, dtype=jnp.float32)
    b = jacsens.MLP(4, (3,), 2, "relu", key=k, use_bias=False, dtype=jnp.float32)
    assert eqx.tree_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(in_size=0), ValueError, r"`in_size` must be a positive int or \"scalar\", got 0"),
        (dict(in_size=2.5), ValueError, "`in_size` must be a positive int"),
        (dict(in_size=True), ValueError, "`in_size` must be a positive int"),
        (dict(out_size="vector"), ValueError, "`out_size` must be a positive int"),
        (dict(widths=5), TypeError, "`widths` must be a sequence of ints, got 5"),
        (dict(widths="abc"), TypeError, "`widths` must be a sequence of ints"),
        (dict(widths=(3, 0)), ValueError, r"`widths\[i\]` must be a positive int, got 0"),
        (dict(widths=("scalar",)), ValueError, r"`widths\[i\]` must be a positive int"),
        (dict(activation="tanhh"), ValueError, "Unknown `activation` 'tanhh'"),
        (dict(final_activation="soft"), ValueError, "Unknown `final_activation` 'soft'"),
        (dict(activation=None), TypeError, "`activation` must be an activation name"),
        # a custom Activation cannot be stored by name: refused, not a KeyError on call
        (
            dict(activation=jacsens.Activation("cube", lambda z: z**3, lambda z: 3 * z**2)),
            TypeError,
            r"`activation` of jacsens.MLP must be an activation name .*got the "
            r"jacsens.Activation 'cube'",
        ),
        (
            dict(final_activation=jacsens.ACTIVATIONS["tanh"]),
            TypeError,
            "`final_activation` of jacsens.MLP must be an activation name",
        ),
    ],
)
def test_mlp_bad_arguments(getkey, kwargs, exc, match):
    args = dict(in_size=3, widths=(4,), out_size=2, activation="tanh") | kwargs
    with pytest.raises(exc, match=match):
        jacsens.MLP(**args, key=getkey())


def test_activation_object_sits_in_sequential():
    """A jacsens.Activation accepts Sequential's `key` and is read as a diagonal factor."""
    keys = jax.random.split(jax.random.key(0), 2)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, 4, key=keys[0]),
            jacsens.ACTIVATIONS["sigmoid"],
            eqx.nn.Linear(4, 2, key=keys[1]),
        ]
    )
    X = jax.random.normal(jax.random.key(1), (5, 3), dtype=jnp.float64)
    J_chain = jacsens.input_jacobian(model, X, mode="chain")
    J_rev = jacsens.input_jacobian(model, X, mode="rev")
    assert float(jnp.max(jnp.abs(J_chain - J_rev))) <= 1e-12 * float(jnp.max(jnp.abs(J_rev)))


@pytest.mark.parametrize("name", sorted(jacsens.ACTIVATIONS))
@pytest.mark.parametrize("z", [0.0, -1.3, 0.7, 2.0])
def test_closed_form_derivative_matches_autodiff_at_kinks(name, z):
    """autodiff of `fn` and the hand-written `deriv` agree everywhere, kinks (z = 0) included;
    otherwise chain/backprop and rev/fwd disagree on no-bias layers with zero inputs."""
    act = jacsens.ACTIVATIONS[name]
    z = jnp.asarray(z, jnp.float64)
    assert float(jax.grad(act.fn)(z)) == pytest.approx(float(act.deriv(z)), rel=1e-12, abs=1e-15)


def test_relu_no_bias_zero_input_modes_agree():
    model = jacsens.MLP(
        3, (4,), 2, "relu", key=jax.random.key(0), use_bias=False, dtype=jnp.float64
    )
    X = jnp.zeros((2, 3), jnp.float64)
    J_rev = jacsens.input_jacobian(model, X, mode="rev")
    for mode in ("fwd", "chain", "backprop"):
        assert jnp.array_equal(jacsens.input_jacobian(model, X, mode=mode), J_rev), mode
