"""`jacsens.crosscheck` and `finite_difference_jacobian` (`jacsens._check`)."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import jacsens

from helpers import assert_close, init_model, perturb_biases, random_inputs, random_mlp

# A wrong derivative: tanh' is 1 − tanh², not 1 − tanh.
TANH_WRONG = jacsens.Activation("tanh_wrong", jnp.tanh, lambda z: 1 - jnp.tanh(z))


def _sequential(key, act):
    k1, k2 = jax.random.split(key)
    return eqx.nn.Sequential(
        [eqx.nn.Linear(4, 6, key=k1), eqx.nn.Lambda(act), eqx.nn.Linear(6, 3, key=k2)]
    )


GOOD = {
    "mlp-f32": (lambda k: random_mlp(k, 4, (5, 3), 2, "tanh", dtype=jnp.float32), (4,), 4),
    "eqx-mlp": (lambda k: eqx.nn.MLP(3, 2, 5, 1, activation=jax.nn.sigmoid, key=k), (3,), 2),
    "sequential": (lambda k: _sequential(k, jnp.tanh), (4,), 3),
    "callable": (lambda k: lambda x: jnp.sin(x) * x.sum(), (3,), 2),
}


@pytest.mark.parametrize("name", list(GOOD), ids=list(GOOD))
def test_passes_on_good_models(getkey, name):
    build, in_shape, B = GOOD[name]
    model = init_model(build, getkey())
    dtype = jnp.float32 if name.endswith("f32") else jnp.float64
    X = random_inputs(getkey(), B, in_shape, dtype=dtype)
    report = jacsens.crosscheck(model, X, strict=True)
    assert report.passed
    methods = ("rev", "fwd", "chain", "backprop", "segments", "fd")
    if name == "callable":
        methods = ("rev", "fwd", "segments", "fd")
    assert report.methods == methods
    pairs = [(c.a, c.b) for c in report.comparisons]
    assert pairs == list(itertools.combinations(methods, 2))
    for c in report.comparisons:
        assert c.quantity == "input_jacobian"
        # float64 throughout: exact modes agree to round-off, fd to its truncation error
        assert c.max_rel <= (1e-6 if "fd" in (c.a, c.b) else 1e-13)
        assert c.rtol == (1e-6 if "fd" in (c.a, c.b) else 1e-10)
    assert report.max_rel == max(c.max_rel for c in report.comparisons)
    assert report.failures() == ()
    assert "all agree" in str(report)


@pytest.mark.parametrize("loss", ["half_squared_error", "cross_entropy"])
def test_weight_grad_check(getkey, loss):
    model = perturb_biases(random_mlp(getkey(), 4, (5,), 3, "sigmoid"), getkey())
    X = random_inputs(getkey(), 4, (4,))
    if loss == "cross_entropy":
        Ys = [jnp.array([0, 2, 1, 2]), jax.nn.one_hot(jnp.array([0, 2, 1, 2]), 3)]
    else:
        Ys = [random_inputs(getkey(), 4, (3,))]
    for Y in Ys:
        report = jacsens.crosscheck(model, X, Y, loss=loss, finite_differences=False, strict=True)
        (wg,) = [c for c in report.comparisons if c.quantity == "weight_grad"]
        assert (wg.a, wg.b) == ("autodiff", "backprop") and wg.max_rel < 1e-13
        assert report.methods == ("rev", "fwd", "chain", "backprop", "segments")


def test_detects_wrong_activation_derivative(getkey):
    model = init_model(lambda k: _sequential(k, TANH_WRONG), getkey())
    X = random_inputs(getkey(), 3, (4,))
    report = jacsens.crosscheck(model, X)
    assert not report.passed
    autodiff = {"rev", "fwd", "segments", "fd"}  # the structured engine is autodiff too
    kernel = {"chain", "backprop"}
    for c in report.comparisons:
        same_side = {c.a, c.b} <= autodiff or {c.a, c.b} <= kernel
        # autodiff and fd agree with each other, and chain with backprop (both use the
        # closed-form derivative); every autodiff-vs-closed-form pair disagrees
        assert c.passed == same_side, c
        if not same_side:
            assert c.max_rel > 1e-2
    assert len(report.failures()) == 8

    with pytest.raises(jacsens.CrosscheckError) as info:
        jacsens.crosscheck(model, X, strict=True)
    text = str(info.value)
    assert "8 disagreement(s)" in text
    assert "max rel" in text and "rtol" in text
    rows = [line for line in text.splitlines() if line.startswith("input_jacobian")]
    assert len(rows) == 15
    failing = [line for line in rows if line.rstrip().endswith("NO")]
    assert len(failing) == 8 and all("chain" in r or "backprop" in r for r in failing)
    assert issubclass(jacsens.CrosscheckError, AssertionError)


def test_detects_wrong_derivative_in_weight_grads(getkey):
    model = init_model(lambda k: _sequential(k, TANH_WRONG), getkey())
    X = random_inputs(getkey(), 3, (4,))
    Y = random_inputs(getkey(), 3, (3,))
    report = jacsens.crosscheck(model, X, Y, modes=("rev",), finite_differences=False)
    (wg,) = report.failures()
    assert wg.quantity == "weight_grad" and wg.max_rel > 1e-2


def test_tolerances_are_used(getkey):
    model = random_mlp(getkey(), 3, (4,), 2, "tanh")
    X = random_inputs(getkey(), 2, (3,))
    report = jacsens.crosscheck(model, X, rtol=0.0, fd_rtol=0.0)
    assert not report.passed  # some round-off is always there between fd and the rest
    assert all(not c.passed for c in report.comparisons if "fd" in (c.a, c.b))
    assert jacsens.crosscheck(model, X, rtol=1e-10, fd_rtol=1e-6).passed


def test_finite_difference_jacobian(getkey):
    # affine model: the Jacobian is W, and central differences are exact up to round-off
    m = random_mlp(getkey(), 5, (), 3)
    X = random_inputs(getkey(), 2, (5,))
    J = jacsens.finite_difference_jacobian(m, X)
    assert J.shape == (2, 3, 5)
    for b in range(2):
        assert_close(J[b], m.layers[0].weight, 1e-9)
    # x ↦ exp(x) elementwise on a (2, 2) sample: Jacobian (2, 2, 2, 2) = δ exp(x)
    X = random_inputs(getkey(), 3, (2, 2))
    J = jacsens.finite_difference_jacobian(jnp.exp, X)
    assert J.shape == (3, 2, 2, 2, 2)
    expected = jax.vmap(lambda x: jnp.diag(jnp.exp(x).ravel()).reshape(2, 2, 2, 2))(X)
    assert_close(J, expected, 1e-9)
    # a larger step h = step·max(1, |x|): the central difference of exp is exactly
    # exp(x) sinh(h) / h, which shows the O(h²) truncation error
    coarse = jacsens.finite_difference_jacobian(jnp.exp, X, step=1e-2)
    h = 1e-2 * jnp.maximum(1.0, jnp.abs(X))
    diag = jnp.exp(X) * jnp.sinh(h) / h
    expected_coarse = jax.vmap(lambda d: jnp.diag(d.ravel()).reshape(2, 2, 2, 2))(diag)
    assert_close(coarse, expected_coarse, 1e-9)
    assert float(jnp.max(jnp.abs(coarse - expected))) > 1e-6
    # float32 inputs: step ε^(1/3) of float32
    J32 = jacsens.finite_difference_jacobian(jnp.sin, X.astype(jnp.float32))
    assert J32.dtype == jnp.float32
    assert_close(J32, jax.vmap(jax.jacfwd(jnp.sin))(X), 1e-3)


def test_crosscheck_bad_arguments(getkey):
    X = random_inputs(getkey(), 2, (3,))
    f = lambda x: jnp.sin(x)  # noqa: E731
    with pytest.raises(ValueError, match=r"Unknown `modes\[i\]` 'chain'; expected one of"):
        jacsens.crosscheck(f, X, modes=("rev", "chain"))
    m = random_mlp(getkey(), 3, (4,), 2)
    with pytest.raises(ValueError, match="Unknown `loss` 'mse'"):
        jacsens.crosscheck(m, X, random_inputs(getkey(), 2, (2,)), loss="mse")
    with pytest.raises(ValueError, match="`Y` was given, but the parameter-gradient check"):
        jacsens.crosscheck(f, X, X)
    with pytest.raises(ValueError, match=r"`X` must have shape \(batch, 3\)"):
        jacsens.crosscheck(m, random_inputs(getkey(), 2, (4,)))
