"""The public entry points with x64 switched off, as most users run them: float32 all the
way through (no silent float64), agreeing with float64 references to float32 round-off."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens

from helpers import assert_close, init_model


def _conv_net(k):
    k1, k2 = jax.random.split(k)
    return eqx.nn.Sequential(
        [
            eqx.nn.Conv1d(1, 3, 3, padding=1, key=k1),
            eqx.nn.Lambda(jax.nn.gelu),
            eqx.nn.Lambda(lambda h: h.reshape(-1)),
            eqx.nn.Linear(24, 2, key=k2),
        ]
    )


MODELS = {
    "mlp": (lambda k: jacsens.MLP(6, (8, 5), 3, "tanh", key=k), (6,)),
    "eqx-mlp": (lambda k: eqx.nn.MLP(6, 3, 8, 2, activation=jax.nn.sigmoid, key=k), (6,)),
    "conv": (_conv_net, (1, 8)),
}


def _reference(model, X, fn):
    """`fn(model, X)` in float64 (x64 on), as a numpy array."""
    with jax.enable_x64(True):
        m64 = jax.tree.map(
            lambda a: jnp.asarray(np.asarray(a), jnp.float64) if eqx.is_inexact_array(a) else a,
            model,
        )
        return np.asarray(fn(m64, jnp.asarray(np.asarray(X), jnp.float64)))


@pytest.fixture
def x64_off():
    with jax.enable_x64(False):
        yield


@pytest.mark.parametrize("name", list(MODELS))
def test_input_jacobian_every_mode_float32(getkey, x64_off, name):
    build, in_shape = MODELS[name]
    model = init_model(build, getkey())
    model = jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a), jnp.float32) if eqx.is_inexact_array(a) else a,
        model,
    )
    X = jnp.asarray(np.random.default_rng(0).normal(size=(5, *in_shape)), jnp.float32)
    want = _reference(model, X, lambda m, x: jax.vmap(jax.jacrev(m))(x))
    modes = ["auto", "rev", "fwd", "segments"]
    if jacsens._program._chain.try_read_chain(model) is not None:
        modes += ["chain", "backprop"]
    for mode in modes:
        J = jacsens.input_jacobian(model, X, mode=mode)
        assert J.dtype == jnp.float32, mode
        assert_close(J, want, 2e-5)
    H = jacsens.input_hessian(model, X[:2])
    assert H.dtype == jnp.float32
    assert_close(H, _reference(model, X[:2], lambda m, x: jax.vmap(jax.hessian(m))(x)), 1e-4)


def test_grads_attribution_sensitivity_float32(getkey, x64_off):
    model = init_model(lambda k: jacsens.MLP(4, (6,), 2, "tanh", key=k), getkey())
    model = jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a), jnp.float32) if eqx.is_inexact_array(a) else a,
        model,
    )
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)
    Y = jnp.asarray(rng.normal(size=(9, 2)), jnp.float32)

    norms = jacsens.per_sample_grad_norms(model, "mse", X, Y)
    assert norms.dtype == jnp.float32
    g = jacsens.weight_grad(model, "mse", X, Y)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g))

    sal = jacsens.attribution.saliency(model, X, target=1, abs=False)
    want = _reference(model, X, lambda m, x: jax.vmap(jax.grad(lambda v: m(v)[1]))(x))
    assert sal.dtype == jnp.float32
    assert_close(sal, want, 2e-5)
    ig, delta = jacsens.attribution.integrated_gradients(model, X, target=0, return_delta=True)
    assert ig.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(delta))) < 1e-4  # completeness: Σ IG = f(x) − f(baseline)

    r = jacsens.sensitivity(model, X, chunk_size=4, progress=False)
    J = _reference(model, X, lambda m, x: jax.vmap(jax.jacrev(m))(x))
    assert_close(r.mean, J.mean(0), 1e-5)
    assert_close(r.dgsm, (J**2).mean(0), 1e-5)
