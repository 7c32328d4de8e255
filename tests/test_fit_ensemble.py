"""`fit` with optimisers that need the loss (lbfgs, reduce_on_plateau, MultiSteps), early
stopping, and ensembles trained in one vmap (each member equals its own single fit)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jacsens
from jacsens._fit import _INIT_STREAM


def _linear(key, n=64, d=3, dtype=jnp.float64):
    X = jax.random.normal(key, (n, d), dtype=dtype)
    w = jnp.asarray([1.5, -2.0, 0.5][:d], dtype)
    return X, X @ w + 0.25


def _manual_full_batch(model, X, Y, opt, steps, *, extra):
    """Plain optax loop on the whole batch (the mean loss is row-order invariant)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        m = eqx.combine(p, static)
        return jnp.mean((jax.vmap(m)(X) - Y) ** 2)

    state = opt.init(params)
    for _ in range(steps):
        value, grad = jax.value_and_grad(loss)(params)
        with jax.numpy_dtype_promotion("standard"):
            if extra:
                upd, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
            else:
                upd, state = opt.update(grad, state, params)
        params = optax.apply_updates(params, upd)
    return eqx.combine(params, static)


def test_lbfgs_converges_to_the_least_squares_solution(getkey):
    X, Y = _linear(getkey())
    model = jacsens.MLP(3, (), "scalar", key=getkey(), dtype=jnp.float64)
    fitted, hist = jacsens.fit(
        model, X, Y, optimizer=optax.lbfgs(), epochs=15, batch_size=len(X), key=getkey()
    )
    A = np.concatenate([np.asarray(X), np.ones((len(X), 1))], axis=1)
    coef = np.linalg.lstsq(A, np.asarray(Y), rcond=None)[0]
    layer = fitted.layers[0]
    np.testing.assert_allclose(np.ravel(layer.weight), coef[:3], atol=1e-8)
    np.testing.assert_allclose(np.ravel(layer.bias), coef[3:], atol=1e-8)
    assert hist.train_loss[-1] < 1e-14 < hist.train_loss[0]


@pytest.mark.parametrize(
    "make",
    [
        lambda: optax.chain(optax.sgd(0.05), optax.contrib.reduce_on_plateau(patience=1)),
        lambda: optax.MultiSteps(optax.sgd(0.1), every_k_schedule=3),
    ],
    ids=["reduce_on_plateau", "multisteps"],
)
def test_extra_args_optimisers_equal_a_plain_optax_loop(getkey, make):
    X, Y = _linear(getkey(), n=40)
    model = jacsens.MLP(3, (5,), "scalar", key=getkey(), dtype=jnp.float64)
    fitted, _ = jacsens.fit(
        model, X, Y, optimizer=make(), epochs=12, batch_size=len(X), key=getkey()
    )
    manual = _manual_full_batch(model, X, Y, make(), 12, extra=True)
    for a, b in zip(jax.tree.leaves(fitted), jax.tree.leaves(manual), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_reduce_on_plateau_lowers_the_scale():
    """A loss that stops falling: the plateau rule must have cut the step scale."""
    X = jnp.zeros((8, 1))
    Y = jnp.ones((8,))
    model = jacsens.MLP(1, (), "scalar", key=jax.random.key(0), dtype=jnp.float64)
    opt = optax.chain(optax.sgd(1e-9), optax.contrib.reduce_on_plateau(patience=1, factor=0.5))
    fitted, _ = jacsens.fit(
        model, X, Y, optimizer=opt, epochs=6, batch_size=8, key=jax.random.key(1)
    )
    # run the same through optax by hand and read the scale it reached
    manual = _manual_full_batch(model, X, Y, opt, 6, extra=True)
    np.testing.assert_allclose(fitted.layers[0].bias, manual.layers[0].bias, rtol=1e-12)
    params = eqx.filter(model, eqx.is_inexact_array)
    state = opt.init(params)
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(6):
            _, state = opt.update(params, state, params, value=jnp.asarray(1.0))
    assert float(state[1].scale) < 1.0


def test_optimisers_are_refused_naming_what_is_missing(getkey):
    X, Y = _linear(getkey(), n=8)
    model = jacsens.MLP(3, (), "scalar", key=getkey(), dtype=jnp.float64)
    lb = optax.lbfgs()
    with pytest.raises(TypeError, match="missing 3 required keyword-only"):
        jacsens.fit(
            model,
            X,
            Y,
            optimizer=optax.GradientTransformation(lb.init, lb.update),
            epochs=1,
            key=getkey(),
        )
    with pytest.raises(TypeError, match="no callable `init` or `update`"):
        jacsens.fit(model, X, Y, optimizer=object(), epochs=1, key=getkey())

    class Duck:
        init = staticmethod(lambda p: ())
        update = staticmethod(lambda g, s, p=None: (g, s))

    with pytest.raises(TypeError, match="has `init` and `update` but is not one"):
        jacsens.fit(model, X, Y, optimizer=Duck(), epochs=1, key=getkey())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_every_ensemble_member_equals_its_own_fit(getkey, dtype):
    X, Y = _linear(getkey(), n=30, dtype=dtype)
    key = getkey()
    K = 3

    def make(k):
        return jacsens.MLP(3, (6,), "scalar", key=k, dtype=dtype)

    opt = optax.adam(1e-2)
    ens, hist = jacsens.fit(make, X, Y, optimizer=opt, epochs=4, batch_size=8, ensemble=K, key=key)
    assert isinstance(ens, jacsens.Ensemble) and len(ens) == K
    assert hist.member_train_loss.shape == (4, K)
    init_keys = jax.random.split(jax.random.fold_in(key, _INIT_STREAM), K)
    shuffle_keys = jax.random.split(key, K)
    rtol = 1e-5 if dtype == jnp.float32 else 1e-11
    for i in range(K):
        single, h = jacsens.fit(
            make(init_keys[i]), X, Y, optimizer=opt, epochs=4, batch_size=8, key=shuffle_keys[i]
        )
        for a, b in zip(jax.tree.leaves(ens.member(i)), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(hist.member_train_loss[:, i], h.train_loss, rtol=rtol)
    # members differ, the ensemble predicts their mean
    w = [np.asarray(ens.member(i).layers[0].weight) for i in range(K)]
    assert not np.allclose(w[0], w[1])
    x = X[0]
    np.testing.assert_allclose(
        ens(x), np.mean([ens.member(i)(x) for i in range(K)], axis=0), rtol=rtol
    )


def test_ensemble_from_an_mlp_instance_reinitialises_its_architecture(getkey):
    X, Y = _linear(getkey(), n=20)
    model = jacsens.MLP(3, (4,), "scalar", "relu", key=getkey(), dtype=jnp.float64)
    ens, _ = jacsens.fit(model, X, Y, epochs=1, ensemble=2, key=getkey())
    m0 = ens.member(0)
    assert m0.hyperparameters() == model.hyperparameters()
    # then trained further as an Ensemble
    ens2, hist = jacsens.fit(ens, X, Y, epochs=1, key=getkey())
    assert isinstance(ens2, jacsens.Ensemble) and hist.member_train_loss.shape == (1, 2)


def test_early_stopping_returns_the_best_validation_model(getkey):
    X, Y = _linear(getkey(), n=64)
    Xv, Yv = X[:16], -Y[:16]  # a validation set the training makes worse after a while
    model = jacsens.MLP(3, (8,), "scalar", key=getkey(), dtype=jnp.float64)
    fitted, hist = jacsens.fit(
        model,
        X,
        Y,
        optimizer=optax.adam(3e-2),
        epochs=200,
        batch_size=16,
        key=getkey(),
        validation=(Xv, Yv),
        early_stopping=3,
    )
    assert hist.stopped_early and hist.epochs == hist.best_epoch + 1 + 3
    val = float(jnp.mean((jax.vmap(fitted)(Xv) - Yv) ** 2))
    assert val == pytest.approx(min(hist.val_loss), rel=1e-12)
    assert min(hist.val_loss) < hist.val_loss[-1]


def test_ensemble_early_stopping_keeps_each_members_best(getkey):
    X, Y = _linear(getkey(), n=64)
    Xv, Yv = X[:16], -Y[:16]
    ens, hist = jacsens.fit(
        lambda k: jacsens.MLP(3, (8,), "scalar", key=k, dtype=jnp.float64),
        X,
        Y,
        optimizer=optax.adam(3e-2),
        epochs=200,
        batch_size=16,
        key=getkey(),
        validation=(Xv, Yv),
        early_stopping=3,
        ensemble=2,
    )
    for i in range(2):
        m = ens.member(i)
        val = float(jnp.mean((jax.vmap(m)(Xv) - Yv) ** 2))
        assert val == pytest.approx(hist.member_val_loss[:, i].min(), rel=1e-12)


def test_bad_ensemble_and_early_stopping_arguments(getkey):
    X, Y = _linear(getkey(), n=8)
    model = jacsens.MLP(3, (), "scalar", key=getkey(), dtype=jnp.float64)
    with pytest.raises(ValueError, match="early_stopping.*validation"):
        jacsens.fit(model, X, Y, epochs=1, key=getkey(), early_stopping=2)
    with pytest.raises(ValueError, match="early_stopping"):
        jacsens.fit(model, X, Y, epochs=1, key=getkey(), early_stopping=0, validation=(X, Y))
    with pytest.raises(ValueError, match="ensemble"):
        jacsens.fit(model, X, Y, epochs=1, key=getkey(), ensemble=0)

    class Custom(eqx.Module):
        w: jax.Array

        def __call__(self, x):
            return jnp.sum(self.w * x)

    with pytest.raises(TypeError, match="initialiser"):
        jacsens.fit(Custom(jnp.ones(3)), X, Y, epochs=1, key=getkey(), ensemble=2)
    ens = jacsens.Ensemble.init(lambda k: Custom(jax.random.normal(k, (3,))), 2, key=getkey())
    with pytest.raises(ValueError, match="size of the Ensemble"):
        jacsens.fit(ens, X, Y, epochs=1, key=getkey(), ensemble=3)
    with pytest.raises(TypeError, match="equinox Module"):
        jacsens.fit(lambda x: x, X, Y, epochs=1, key=getkey())
    with pytest.raises(ValueError, match="leading axis"):
        jacsens.Ensemble(Custom(jnp.ones(3)), 2)


def test_divergence_with_early_stopping_carries_the_best_model(getkey):
    """A run that diverges after improving: the error carries the best validation epoch's
    model, as a finished run would have returned."""
    X, Y = _linear(getkey(), n=32)
    model = jacsens.MLP(3, (8,), "scalar", key=getkey(), dtype=jnp.float64)
    stop_after = 3

    sgd = optax.sgd(0.05)  # plain SGD; infinite updates from step `stop_after` on

    def update(grads, state, params=None):
        count, inner = state
        upd, inner = sgd.update(grads, inner, params)
        boom = count >= stop_after
        upd = jax.tree.map(lambda u: jnp.where(boom, jnp.inf, u), upd)
        return upd, (count + 1, inner)

    opt = optax.GradientTransformation(lambda p: (jnp.asarray(0), sgd.init(p)), update)
    with pytest.raises(jacsens.NonFiniteLossError) as info:
        jacsens.fit(
            model,
            X,
            Y,
            optimizer=opt,
            epochs=10,
            batch_size=32,
            key=getkey(),
            validation=(X[:8], -Y[:8]),  # a validation set training makes worse
            early_stopping=5,
        )
    err = info.value
    assert err.epoch == stop_after and len(err.history.val_loss) == stop_after
    best = int(np.argmin(err.history.val_loss))
    assert best < stop_after - 1  # not the last finite step's model
    val = float(jnp.mean((jax.vmap(err.model)(X[:8]) + Y[:8]) ** 2))
    assert val == pytest.approx(err.history.val_loss[best], rel=1e-12)
