import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jacsens
from jacsens import datasets

# One optimiser object for the whole module: fit's compiled epoch is cached per optimiser.
ADAM = optax.adam(1e-2)


def _linear_problem(key, n=203, d=5, dtype=jnp.float64):
    X = jax.random.normal(key, (n, d), dtype=dtype)
    w = jnp.arange(1.0, d + 1, dtype=dtype)
    return X, X @ w - 0.5


def test_fits_noiseless_linear_target(getkey):
    X, Y = _linear_problem(getkey())
    model = jacsens.MLP(5, (), "scalar", key=getkey(), dtype=jnp.float64)
    model, hist = jacsens.fit(
        model, X, Y, optimizer=optax.adam(3e-2), epochs=300, batch_size=32, key=getkey()
    )
    assert hist.train_loss[-1] < 1e-12
    np.testing.assert_allclose(model.layers[0].weight[0], np.arange(1.0, 6.0), rtol=1e-6)
    np.testing.assert_allclose(model.layers[0].bias, [-0.5], atol=1e-6)
    # The recorded epoch loss is the batch-weighted mean of the per-batch losses, so on a
    # converged fit it equals the full-data loss.
    full = jnp.mean((jax.vmap(model)(X) - Y) ** 2)
    assert abs(hist.train_loss[-1] - float(full)) < 1e-12


def test_same_key_is_bit_identical_and_different_key_differs(getkey):
    X, Y = _linear_problem(getkey(), n=100, dtype=jnp.float32)
    model = jacsens.MLP(5, (8,), "scalar", key=getkey(), dtype=jnp.float32)
    k = getkey()
    runs = [
        jacsens.fit(model, X, Y, optimizer=ADAM, epochs=5, batch_size=16, key=k)[0]
        for _ in range(2)
    ]
    other = jacsens.fit(model, X, Y, optimizer=ADAM, epochs=5, batch_size=16, key=getkey())[0]
    la, lb, lo = (jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (*runs, other))
    assert all(np.array_equal(a, b) for a, b in zip(la, lb, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(la, lo, strict=True))


def test_epoch_matches_manual_loop_with_partial_batch(getkey):
    """One epoch equals plain SGD over the documented permutation, including the remainder."""
    X, Y = _linear_problem(getkey(), n=23, d=3)
    model = jacsens.MLP(3, (4,), "scalar", key=getkey(), dtype=jnp.float64)
    key = getkey()
    opt = optax.sgd(0.1)
    fitted, hist = jacsens.fit(model, X, Y, optimizer=opt, epochs=1, batch_size=10, key=key)

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def batch_loss(m, x, y):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), 23))
    m, losses = model, []
    for idx in (perm[:10], perm[10:20], perm[20:]):
        val, g = batch_loss(m, X[idx], Y[idx])
        m = eqx.apply_updates(m, jax.tree.map(lambda x: -0.1 * x, g))
        losses.append(float(val))
    for a, b in zip(jax.tree.leaves(fitted), jax.tree.leaves(m), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    expected = (10 * losses[0] + 10 * losses[1] + 3 * losses[2]) / 23
    assert hist.train_loss[0] == pytest.approx(expected, rel=1e-12)


def test_validation_history_frame_and_callbacks(getkey):
    X, Y = _linear_problem(getkey(), n=64, d=5)
    Xv, Yv = _linear_problem(getkey(), n=20, d=5)
    model = jacsens.MLP(5, (), "scalar", key=getkey(), dtype=jnp.float64)
    seen = []

    def stop_at_3(epoch, m, hist):
        seen.append((epoch, len(hist.train_loss), len(hist.val_loss)))
        return epoch == 2

    fitted, hist = jacsens.fit(
        model, X, Y, epochs=10, key=getkey(), validation=(Xv, Yv), callbacks=[stop_at_3]
    )
    assert seen == [(0, 1, 1), (1, 2, 2), (2, 3, 3)]
    assert hist.stopped_early and hist.epochs == 3
    assert repr(hist).startswith("History(epochs=3, train_loss[-1]=")
    assert hist.val_loss[-1] == pytest.approx(float(jnp.mean((jax.vmap(fitted)(Xv) - Yv) ** 2)))
    frame = hist.to_frame()
    assert list(frame.columns) == ["train_loss", "val_loss"]
    assert list(frame.index) == [1, 2, 3]
    fig = hist.plot()
    assert len(fig.axes[0].lines) == 2


def test_loss_decreases_on_diabetes(getkey):
    data = datasets.diabetes()
    model = jacsens.MLP(10, (16,), "scalar", key=getkey(), dtype=jnp.float32)
    _, hist = jacsens.fit(
        model,
        data.X,
        data.y,
        optimizer=ADAM,
        epochs=30,
        batch_size=64,
        key=getkey(),
        progress=False,
    )
    assert hist.train_loss[-1] < 0.7 * hist.train_loss[0]
    assert hist.train_loss[-1] < 0.6  # y is standardised: predicting the mean gives 1.0


def test_loss_decreases_on_digits_cross_entropy(getkey):
    data = datasets.digits()
    X, y = data.X[:600], data.y[:600]
    model = jacsens.MLP(64, (32,), 10, key=getkey(), dtype=jnp.float32)
    fitted, hist = jacsens.fit(
        model,
        X,
        y,
        loss="cross_entropy",
        optimizer=ADAM,
        epochs=15,
        batch_size=100,
        key=getkey(),
    )
    assert hist.train_loss[0] > 1.0 and hist.train_loss[-1] < 0.3
    accuracy = np.mean(np.argmax(jax.vmap(fitted)(X), axis=-1) == y)
    assert accuracy > 0.9


def test_loss_decreases_on_friedman1(getkey):
    data = datasets.friedman1(300, getkey())
    model = jacsens.MLP(10, (32,), "scalar", key=getkey(), dtype=jnp.float32)
    _, hist = jacsens.fit(
        model,
        data.X,
        data.y,
        optimizer=ADAM,
        epochs=40,
        batch_size=50,
        key=getkey(),
    )
    assert hist.train_loss[-1] < 0.2 * hist.train_loss[0]


def test_callable_loss(getkey):
    X, Y = _linear_problem(getkey(), n=32, d=2)
    model = jacsens.MLP(2, (), "scalar", key=getkey(), dtype=jnp.float64)
    _, h1 = jacsens.fit(model, X, Y, loss=optax.l2_loss, epochs=2, key=getkey())
    _, h2 = jacsens.fit(model, X, Y, loss="mse", epochs=2, key=getkey())
    assert h1.train_loss[0] == pytest.approx(0.5 * h2.train_loss[0], rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(epochs=0), ValueError, "epochs"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(optimizer="adam"), TypeError, "optimizer"),
        (dict(loss="nope"), ValueError, "loss"),
        (dict(callbacks=[1]), TypeError, "callbacks"),
        (dict(key=0), TypeError, "key"),
        (dict(validation=(np.zeros((4, 2)), np.zeros(4))), ValueError, "validation"),
    ],
)
def test_bad_arguments(getkey, kwargs, exc, match):
    X, Y = _linear_problem(getkey(), n=16, d=3)
    model = jacsens.MLP(3, (), "scalar", key=getkey(), dtype=jnp.float64)
    kwargs = {"key": getkey(), **kwargs}
    with pytest.raises(exc, match=match):
        jacsens.fit(model, X, Y, **kwargs)


def test_bad_shapes(getkey):
    X, Y = _linear_problem(getkey(), n=16, d=3)
    model = jacsens.MLP(3, (), "scalar", key=getkey(), dtype=jnp.float64)
    with pytest.raises(ValueError, match="same batch size"):
        jacsens.fit(model, X, Y[:10], key=getkey())
    with pytest.raises(ValueError, match=r"X"):
        jacsens.fit(model, X[:, :2], Y, key=getkey())
    with pytest.raises(ValueError, match=r"`Y` must have shape \(batch,\) for loss 'mse'"):
        jacsens.fit(model, X, jnp.stack([Y, Y], axis=1), key=getkey())
    with pytest.raises(TypeError, match="model"):
        jacsens.fit(lambda x: x, X, Y, key=getkey())


@pytest.mark.parametrize(
    "stop", [True, np.True_, jnp.asarray(True), 1, np.asarray([True])], ids=repr
)
def test_callback_stops_on_any_truthy_answer(getkey, stop):
    X, Y = _linear_problem(getkey(), n=16, d=3)
    model = jacsens.MLP(3, (), "scalar", key=getkey(), dtype=jnp.float64)
    seen = []

    def stop_at_2(epoch, model, history):
        seen.append(epoch)
        return stop if epoch == 2 else np.False_

    _, hist = jacsens.fit(
        model, X, Y, optimizer=ADAM, epochs=10, key=getkey(), callbacks=[stop_at_2]
    )
    assert seen == [0, 1, 2] and hist.epochs == 3 and hist.stopped_early
    # falsy answers (None, False, np.False_, jnp.asarray(False)) never stop
    answers = iter([None, False, np.False_, jnp.asarray(False)])
    _, hist = jacsens.fit(
        model, X, Y, optimizer=ADAM, epochs=4, key=getkey(), callbacks=[lambda *a: next(answers)]
    )
    assert hist.epochs == 4 and not hist.stopped_early


class _WeightedMSE(eqx.Module):
    w: jax.Array

    def __call__(self, y, t):
        return jnp.sum(self.w * (y - t) ** 2)


def test_fit_with_a_module_loss_holding_arrays(getkey):
    # weights 2 on one output: the fitted linear model is the same, the loss doubles
    X, Y = _linear_problem(getkey(), n=64, d=3)
    model = jacsens.MLP(3, (), "scalar", key=getkey(), dtype=jnp.float64)
    w = jnp.asarray(2.0)
    opt = optax.adam(3e-2)
    k = getkey()
    m1, h1 = jacsens.fit(model, X, Y, loss=_WeightedMSE(w), optimizer=opt, epochs=3, key=k)
    m2, h2 = jacsens.fit(model, X, Y, loss="mse", optimizer=opt, epochs=3, key=k)
    # Adam is invariant to scaling the loss (up to its eps=1e-8): same parameters, twice the loss
    np.testing.assert_allclose(np.asarray(h1.train_loss), 2 * np.asarray(h2.train_loss), rtol=1e-8)
    np.testing.assert_allclose(m1.layers[0].weight, m2.layers[0].weight, rtol=1e-6)


def test_empty_validation_is_refused():
    model = jacsens.MLP(3, (4,), "scalar", key=jax.random.key(0))
    X, Y = jnp.ones((8, 3)), jnp.ones((8,))
    with pytest.raises(ValueError, match=r"`validation\[0\]` must hold at least one sample"):
        jacsens.fit(
            model,
            X,
            Y,
            epochs=1,
            key=jax.random.key(1),
            progress=False,
            validation=(jnp.zeros((0, 3)), jnp.zeros((0,))),
        )
