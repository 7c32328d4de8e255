"""`weight_grad`, `per_sample_grads` and `per_sample_grad_norms` (`jacsens._grads`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jacsens
import jacsens._grads as grads_module

from helpers import (
    assert_close,
    init_model,
    perturb_biases,
    random_inputs,
    random_labels,
    random_mlp,
)


def _params(tree):
    return [x for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]


def _sequential(key):
    k1, k2 = jax.random.split(key)
    return eqx.nn.Sequential(
        [
            eqx.nn.Lambda(jnp.sin),  # an activation on the input itself
            eqx.nn.Linear(4, 6, key=k1),
            eqx.nn.Lambda(jax.nn.softplus),
            eqx.nn.Linear(6, 3, use_bias=False, key=k2),
        ]
    )


def _softmax_model(key):
    k1, k2 = jax.random.split(key)
    return eqx.nn.Sequential(
        [
            eqx.nn.Linear(4, 5, key=k1),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Linear(5, 3, key=k2),
            eqx.nn.Lambda(lambda z: z - jnp.max(z)),  # not elementwise: no chain
        ]
    )


def _targets(key, loss, B, out_shape):
    if loss == "cross_entropy":
        return random_labels(key, (B,), out_shape[0])
    if loss == "binary_cross_entropy":
        return random_labels(key, (B, *out_shape), 2).astype(jnp.float64)
    return random_inputs(key, B, out_shape)


# (model factory, in_shape, out_shape, loss, has chain)
CASES = {
    "mlp-mse": (lambda k: random_mlp(k, 4, (5, 3), 2, "tanh"), (4,), (2,), "mse", True),
    "mlp-nobias-ce": (
        lambda k: jacsens.MLP(4, (5,), 3, "gelu", key=k, use_bias=False),
        (4,),
        (3,),
        "cross_entropy",
        True,
    ),
    "mlp-scalar-bce": (
        lambda k: random_mlp(k, "scalar", (5,), "scalar", "sigmoid"),
        (),
        (),
        "binary_cross_entropy",
        True,
    ),
    "eqx-mlp": (
        lambda k: eqx.nn.MLP(4, 2, 5, 2, activation=jax.nn.silu, key=k),
        (4,),
        (2,),
        "half_squared_error",
        True,
    ),
    "sequential": (_sequential, (4,), (3,), "half_squared_error", True),
    "no-chain": (_softmax_model, (4,), (3,), "cross_entropy", False),
}


def _case(getkey, name, B=6):
    build, in_shape, out_shape, loss, has_chain = CASES[name]
    model = perturb_biases(init_model(build, getkey()), getkey())
    X = random_inputs(getkey(), B, in_shape)
    Y = _targets(getkey(), loss, B, out_shape)
    return model, loss, X, Y, has_chain


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_per_sample_grads_and_norms(getkey, name):
    model, loss, X, Y, has_chain = _case(getkey, name)
    B = X.shape[0]
    g = jacsens.weight_grad(model, loss, X, Y)
    ps = jacsens.per_sample_grads(model, loss, X, Y)
    assert jax.tree.structure(g) == jax.tree.structure(ps)
    for leaf_g, leaf_ps, p in zip(_params(g), _params(ps), _params(model), strict=True):
        assert leaf_ps.shape == (B, *p.shape) and leaf_g.shape == p.shape
        # the mean of the per-sample gradients is the gradient of the mean loss
        assert_close(leaf_ps.sum(0), leaf_g * B, 1e-12)
    # per-sample gradient of sample b alone
    g0 = jacsens.weight_grad(model, loss, X[2:3], Y[2:3])
    for a, b in zip(_params(g0), _params(ps), strict=True):
        assert_close(a, b[2], 1e-12)

    by_hand = np.sqrt(sum(np.sum(np.asarray(x).reshape(B, -1) ** 2, 1) for x in _params(ps)))
    mat = jacsens.per_sample_grad_norms(model, loss, X, Y, method="materialise")
    auto = jacsens.per_sample_grad_norms(model, loss, X, Y)
    assert mat.shape == auto.shape == (B,)
    assert_close(mat, by_hand, 1e-12)
    assert_close(auto, by_hand, 1e-12)
    if has_chain:
        ghost = jacsens.per_sample_grad_norms(model, loss, X, Y, method="ghost")
        assert_close(ghost, by_hand, 1e-12)
    else:
        with pytest.raises(ValueError, match="`method='ghost'` needs a model with a readable"):
            jacsens.per_sample_grad_norms(model, loss, X, Y, method="ghost")


@pytest.mark.parametrize("has_chain", [True, False])
def test_auto_norm_method(getkey, monkeypatch, has_chain):
    """`method="auto"` uses ghost norms exactly when the model has a readable chain."""
    model, loss, X, Y, _ = _case(getkey, "mlp-mse" if has_chain else "no-chain")
    seen = []
    original = grads_module._norms_impl

    def spy(model, loss, X, Y, chunk_size, method):
        seen.append(method)
        return original(model, loss, X, Y, chunk_size, method)

    monkeypatch.setattr(grads_module, "_norms_impl", spy)
    jacsens.per_sample_grad_norms(model, loss, X, Y)
    assert seen == ["ghost" if has_chain else "materialise"]


def test_weight_grad_directional_finite_difference(getkey):
    """⟨∇θ L, v⟩ equals (L(θ + hv) − L(θ − hv)) / 2h, for v along the gradient (so the
    derivative is large, ‖∇θ L‖) and for v a random direction."""
    model, loss, X, Y, _ = _case(getkey, "mlp-mse")
    g = jacsens.weight_grad(model, loss, X, Y)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def mean_loss(p):
        m = eqx.combine(p, static)
        return jnp.mean(jax.vmap(lambda x, y: jnp.mean((m(x) - y) ** 2))(X, Y))

    g_norm = jnp.sqrt(sum(jnp.sum(a**2) for a in _params(g)))
    along = jax.tree.map(lambda a: a / g_norm, eqx.filter(g, eqx.is_inexact_array))
    rand = jax.tree.map(lambda p: random_inputs(getkey(), 1, p.shape)[0], params)
    h = 1e-5
    for v, rtol in ((along, 1e-8), (rand, 1e-6)):
        plus = jax.tree.map(lambda p, d: p + h * d, params, v)
        minus = jax.tree.map(lambda p, d: p - h * d, params, v)
        fd = (mean_loss(plus) - mean_loss(minus)) / (2 * h)
        inner = sum(jnp.vdot(a, b) for a, b in zip(_params(g), jax.tree.leaves(v), strict=True))
        assert_close(inner, fd, rtol)


def test_optax_losses(getkey):
    model = perturb_biases(random_mlp(getkey(), 4, (5,), 3, "tanh"), getkey())
    X = random_inputs(getkey(), 5, (4,))
    Yr = random_inputs(getkey(), 5, (3,))
    Yc = random_labels(getkey(), (5,), 3)
    pairs = [
        # optax.l2_loss is elementwise ½(y − t)²: summed per sample it is ½‖y − t‖²
        (optax.l2_loss, "half_squared_error", Yr),
        (optax.losses.softmax_cross_entropy_with_integer_labels, "cross_entropy", Yc),
        (optax.losses.softmax_cross_entropy, "cross_entropy", jax.nn.one_hot(Yc, 3)),
    ]
    for fn, name, Y in pairs:
        expected = jacsens.weight_grad(model, name, X, Y)
        for a, b in zip(
            _params(jacsens.weight_grad(model, fn, X, Y)), _params(expected), strict=True
        ):
            assert_close(a, b, 1e-12)
        ps = jacsens.per_sample_grads(model, fn, X, Y)
        for a, b in zip(_params(ps), _params(expected), strict=True):
            assert_close(a.mean(0), b, 1e-12)
        assert_close(
            jacsens.per_sample_grad_norms(model, fn, X, Y),
            jacsens.per_sample_grad_norms(model, name, X, Y, method="materialise"),
            1e-12,
        )


def test_chunked_equals_unchunked(getkey):
    model, loss, X, Y, _ = _case(getkey, "mlp-nobias-ce", B=6)
    ps = jacsens.per_sample_grads(model, loss, X, Y)
    norms = {
        m: jacsens.per_sample_grad_norms(model, loss, X, Y, method=m)
        for m in ("ghost", "materialise")
    }
    for chunk in (3, 4, 9):  # dividing B, not dividing, larger than B
        chunked = jacsens.per_sample_grads(model, loss, X, Y, chunk_size=chunk)
        for a, b in zip(_params(chunked), _params(ps), strict=True):
            assert_close(a, b, 1e-14)
        for m, ref in norms.items():
            out = jacsens.per_sample_grad_norms(model, loss, X, Y, chunk_size=chunk, method=m)
            assert_close(out, ref, 1e-14)


def test_grads_under_jit(getkey):
    model, loss, X, Y, _ = _case(getkey, "mlp-mse")

    @jax.jit
    def run(X, Y):
        return (
            jacsens.weight_grad(model, loss, X, Y),
            jacsens.per_sample_grads(model, loss, X, Y, chunk_size=4),
            jacsens.per_sample_grad_norms(model, loss, X, Y),
        )

    g, ps, norms = run(X, Y)
    for a, b in zip(_params(g), _params(jacsens.weight_grad(model, loss, X, Y)), strict=True):
        assert_close(a, b, 1e-13)
    for a, b in zip(_params(ps), _params(jacsens.per_sample_grads(model, loss, X, Y)), strict=True):
        assert_close(a, b, 1e-13)
    ref = jacsens.per_sample_grad_norms(model, loss, X, Y, method="materialise")
    assert_close(norms, ref, 1e-12)


def test_ghost_norms_float32_inputs_float64_model(getkey):
    # float32 X with a float64 model: both paths work in float64 (the promoted dtype), so
    # they agree to float64 round-off, not float32's ~1e-8
    model = random_mlp(getkey(), 6, (16, 8), 3, "tanh")
    X = random_inputs(getkey(), 10, (6,)).astype(jnp.float32)
    Y = jax.random.normal(getkey(), (10, 3))
    ghost = jacsens.per_sample_grad_norms(model, "mse", X, Y, method="ghost")
    mat = jacsens.per_sample_grad_norms(model, "mse", X, Y, method="materialise")
    assert ghost.dtype == mat.dtype == jnp.float64
    assert_close(ghost, mat, 1e-12)
    # and both equal the float64 computation on the (exactly representable) float32 inputs
    ref = jacsens.per_sample_grad_norms(model, "mse", X.astype(jnp.float64), Y, method="ghost")
    assert_close(ghost, ref, 1e-12)
