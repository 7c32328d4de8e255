import re

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


def _manual_sgd(model, X, Y, key, lr, batch_size, epochs, first_epoch=0, steps=None):
    """Plain SGD over the documented permutations `fold_in(key, epoch)`, step by step.

    Runs epochs `first_epoch, ..., first_epoch + epochs - 1`, then `steps` more steps of the
    next epoch; returns the model and each epoch's batch-weighted mean loss.
    """

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def batch_loss(m, x, y):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    n = X.shape[0]
    m, epoch_losses = model, []
    for e in range(first_epoch, first_epoch + epochs + (steps is not None)):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, e), n))
        batches = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
        if e == first_epoch + epochs:
            batches = batches[:steps]
        total = 0.0
        for idx in batches:
            val, g = batch_loss(m, X[idx], Y[idx])
            m = eqx.apply_updates(m, jax.tree.map(lambda x: -lr * x, g))
            total += len(idx) * float(val)
        epoch_losses.append(total / n)
    return m, epoch_losses[:epochs]


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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_every_epoch_draws_its_own_shuffle(getkey, dtype):
    """Three epochs equal plain SGD over `fold_in(key, epoch)` for each epoch: a fit that
    reused epoch 0's permutation (or any fixed one) would take other mini-batches."""
    X, Y = _linear_problem(getkey(), n=23, d=3, dtype=dtype)
    model = jacsens.MLP(3, (4,), "scalar", key=getkey(), dtype=dtype)
    key = getkey()
    fitted, hist = jacsens.fit(
        model, X, Y, optimizer=optax.sgd(0.1), epochs=3, batch_size=5, key=key, progress=False
    )
    ref, ref_losses = _manual_sgd(model, X, Y, key, 0.1, batch_size=5, epochs=3)
    rtol = 1e-12 if dtype == jnp.float64 else 2e-5
    for a, b in zip(jax.tree.leaves(fitted), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol)
    np.testing.assert_allclose(hist.train_loss, ref_losses, rtol=rtol)
    # the same SGD with epoch 0's permutation in every epoch ends elsewhere: the test above
    # can tell the two apart
    perms = [np.asarray(jax.random.permutation(jax.random.fold_in(key, e), 23)) for e in range(3)]
    assert not np.array_equal(perms[0], perms[1]) and not np.array_equal(perms[1], perms[2])
    reused = model
    for _ in range(3):
        reused, _ = _manual_sgd(reused, X, Y, key, 0.1, batch_size=5, epochs=1)
    w_fit, w_reused = fitted.layers[0].weight, reused.layers[0].weight
    assert float(jnp.max(jnp.abs(w_fit - w_reused))) > 100 * rtol * float(jnp.max(jnp.abs(w_fit)))


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
    accuracy = np.mean(np.argmax(np.asarray(jax.vmap(fitted)(X)), axis=-1) == np.asarray(y))
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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["X", "Y", "validation[0]", "validation[1]"])
def test_non_finite_data_is_refused_naming_argument_and_row(dtype, bad, where):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(12, 3)).astype(dtype), rng.normal(size=12).astype(dtype)
    Xv, Yv = rng.normal(size=(6, 3)).astype(dtype), rng.normal(size=6).astype(dtype)
    arrays = {"X": X, "Y": Y, "validation[0]": Xv, "validation[1]": Yv}
    target = arrays[where]
    row = 4 if target.shape[0] == 12 else 2
    if target.ndim == 2:
        target[row, 1] = bad
    else:
        target[row] = bad
    target[row + 1 :][:1] = bad  # a second bad row: the message names the first
    model = jacsens.MLP(3, (4,), "scalar", key=jax.random.key(0), dtype=dtype)
    kind = "NaN" if np.isnan(bad) else "Inf"
    match = rf"`{re.escape(where)}` must be finite: row {row} contains {kind} \(2 of"
    with pytest.raises(ValueError, match=match):
        jacsens.fit(
            model, X, Y, epochs=1, key=jax.random.key(1), progress=False, validation=(Xv, Yv)
        )


class _SqrtGain(eqx.Module):
    """`y = sqrt(w) x`: NaN output (and gradient) once training pushes `w` below 0."""

    w: jax.Array

    def __call__(self, x):
        return jnp.sqrt(self.w) * x[0]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_weights_that_produce_nan_stop_training_with_the_last_finite_model(dtype):
    # Targets 0 and inputs 1: the loss is w and its gradient 1, so SGD(0.3) walks w down
    # 1 -> 0.7 -> 0.4 (epoch 0) -> 0.1 -> -0.2 (epoch 1); epoch 2's first step evaluates
    # sqrt(-0.2) = NaN: that step is refused and w = -0.2 (finite) is kept.
    X, Y = jnp.ones((8, 1), dtype), jnp.zeros((8,), dtype)
    model = _SqrtGain(jnp.asarray(1.0, dtype))
    with pytest.raises(jacsens.NonFiniteLossError, match="epoch 2, mini-batch step 0") as info:
        jacsens.fit(
            model, X, Y, optimizer=optax.sgd(0.3), epochs=10, batch_size=4, key=jax.random.key(0)
        )
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.epoch, err.step) == (2, 0)
    tol = 1e-6 if dtype == jnp.float32 else 1e-14
    assert err.model.w.dtype == dtype
    assert float(err.model.w) == pytest.approx(1.0 - 4 * 0.3, abs=tol)
    # the completed epochs' losses: the mean of w over each epoch's two steps
    np.testing.assert_allclose(err.history.train_loss, [0.85, 0.25], atol=tol)
    assert err.history.val_loss is None and not err.history.stopped_early


def test_nan_gradient_stops_training_unless_the_optimizer_drops_it():
    # SGD(0.25) reaches w = 0 exactly after 4 steps; there the loss is 0 but its gradient
    # is 0 * inf = NaN, which plain SGD would write into w.
    X, Y = jnp.ones((8, 1)), jnp.zeros((8,))
    model = _SqrtGain(jnp.asarray(1.0))
    with pytest.raises(jacsens.NonFiniteLossError) as info:
        jacsens.fit(
            model, X, Y, optimizer=optax.sgd(0.25), epochs=5, batch_size=4, key=jax.random.key(0)
        )
    assert (info.value.epoch, info.value.step) == (2, 0)
    assert float(info.value.model.w) == 0.0
    # optax.zero_nans() replaces the NaN gradient by 0: training goes on at w = 0
    opt = optax.chain(optax.zero_nans(), optax.sgd(0.25))
    fitted, hist = jacsens.fit(
        model, X, Y, optimizer=opt, epochs=5, batch_size=4, key=jax.random.key(0)
    )
    assert float(fitted.w) == 0.0
    assert hist.train_loss == pytest.approx((0.875, 0.375, 0.0, 0.0, 0.0))


def test_divergence_keeps_the_model_of_the_last_finite_step(getkey):
    """SGD with far too large a step overflows float32 mid-training; the model on the error
    is exactly plain SGD replayed up to the refused step."""
    X, Y = _linear_problem(getkey(), n=40, d=3, dtype=jnp.float32)
    model = jacsens.MLP(3, (8,), "scalar", key=getkey(), dtype=jnp.float32)
    key = getkey()
    lr = 2.0
    with pytest.raises(jacsens.NonFiniteLossError) as info:
        jacsens.fit(model, X, Y, optimizer=optax.sgd(lr), epochs=50, batch_size=8, key=key)
    err = info.value
    assert err.epoch >= 1, "diverged in the first epoch: the test would not cover a later one"
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(err.model))
    assert len(err.history) == err.epoch and np.all(np.isfinite(err.history.train_loss))
    ref, ref_losses = _manual_sgd(model, X, Y, key, lr, 8, err.epoch, steps=err.step)
    for a, b in zip(jax.tree.leaves(err.model), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4)
    np.testing.assert_allclose(err.history.train_loss, ref_losses, rtol=1e-4)
    # the refused step is the next one: its loss or its update is not finite
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, err.epoch), 40))
    idx = perm[8 * err.step : 8 * err.step + 8]
    loss, g = eqx.filter_value_and_grad(lambda m: jnp.mean((jax.vmap(m)(X[idx]) - Y[idx]) ** 2))(
        err.model
    )
    nxt = eqx.apply_updates(err.model, jax.tree.map(lambda x: -lr * x, g))
    finite = [bool(jnp.isfinite(loss))] + [
        bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(nxt)
    ]
    assert not all(finite)


def test_non_finite_validation_loss_stops_training():
    # the training rows are harmless; the validation inputs are so large that a float32
    # model's output, and the squared error, overflow to inf
    X, Y = jnp.ones((8, 2), jnp.float32), jnp.zeros((8,), jnp.float32)
    Xv, Yv = jnp.full((3, 2), 3e38, jnp.float32), jnp.zeros((3,), jnp.float32)
    model = jacsens.MLP(2, (), "scalar", key=jax.random.key(0), dtype=jnp.float32)
    with pytest.raises(jacsens.NonFiniteLossError, match="validation loss became inf") as info:
        jacsens.fit(model, X, Y, epochs=3, key=jax.random.key(1), validation=(Xv, Yv))
    err = info.value
    assert (err.epoch, err.step) == (0, None) and len(err.history) == 0
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(err.model))
