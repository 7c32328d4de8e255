"""Classification: `jacsens.Probabilities` against its closed-form Jacobian, class labels
from `datasets.from_frame(task=...)`, and a cross-entropy fit on iris whose per-class
probability sensitivities sum to zero over the classes (probabilities sum to one)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

import jacsens
from jacsens import datasets

TOL = {jnp.float32: 1e-5, jnp.float64: 1e-12}
ZERO_SUM_TOL = {jnp.float32: 1e-6, jnp.float64: 1e-12}


def _as_dtype(model, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)


# --------------------------------------------------------------------------- Probabilities


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_probabilities_softmax_jacobian_closed_form(dtype, getkey):
    model = jacsens.MLP(5, (8,), 4, "tanh", key=getkey(), dtype=dtype)
    X = jax.random.normal(getkey(), (16, 5), dtype)
    probs = jacsens.Probabilities(model)
    P = jax.vmap(probs)(X)
    assert P.shape == (16, 4) and P.dtype == dtype
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(P, jax.nn.softmax(jax.vmap(model)(X), axis=-1), rtol=TOL[dtype])
    # J_p = (diag(p) − p pᵀ) J_z with J_z the logits' Jacobian by plain jax.jacrev
    Jz = jax.vmap(jax.jacrev(model))(X)
    expected = jnp.einsum("bc,cd,bdi->bci", P, jnp.eye(4, dtype=dtype), Jz) - jnp.einsum(
        "bc,bd,bdi->bci", P, P, Jz
    )
    Jp = jacsens.input_jacobian(probs, X, mode="rev")
    assert Jp.shape == (16, 4, 5) and Jp.dtype == dtype
    np.testing.assert_allclose(Jp, expected, rtol=TOL[dtype], atol=TOL[dtype])
    # every column of J_p sums to zero over the classes
    np.testing.assert_allclose(Jp.sum(axis=1), 0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("out", ["scalar", 1])
def test_probabilities_one_logit_is_the_sigmoid_pair(dtype, out, getkey):
    model = jacsens.MLP(3, (6,), out, "tanh", key=getkey(), dtype=dtype)
    X = jax.random.normal(getkey(), (10, 3), dtype)
    probs = jacsens.Probabilities(model)
    z = jax.vmap(model)(X).reshape(10)
    s = jax.nn.sigmoid(z)
    np.testing.assert_allclose(jax.vmap(probs)(X), jnp.stack([1 - s, s], 1), rtol=TOL[dtype])
    # ∂σ/∂x = σ'(z) J_z for class 1, its negative for class 0
    Jz = jax.vmap(jax.jacrev(model))(X).reshape(10, 3)
    d = (s * (1 - s))[:, None] * Jz
    Jp = jacsens.input_jacobian(probs, X, mode="rev")
    assert Jp.shape == (10, 2, 3)
    np.testing.assert_allclose(Jp[:, 1], d, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(Jp[:, 0], -d, rtol=TOL[dtype], atol=TOL[dtype])


def test_probabilities_of_an_ensemble_are_each_members(getkey):
    ens = jacsens.Ensemble.init(
        lambda k: jacsens.MLP(4, (5,), 3, key=k, dtype=jnp.float64), 3, key=getkey()
    )
    probs = jacsens.Ensemble(jacsens.Probabilities(ens.members), ens.size)
    x = jax.random.normal(getkey(), (4,), jnp.float64)
    each = probs.outputs(x)
    for i in range(3):
        np.testing.assert_allclose(each[i], jax.nn.softmax(ens.member(i)(x)), rtol=1e-14)
    np.testing.assert_allclose(probs(x), each.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(probs(x).sum(), 1, rtol=1e-14)


# --------------------------------------------------------------------------- from_frame


def _frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(3.0, 2.0, n),
            "b": rng.uniform(-1, 5, n),
            "species": rng.choice(["virginica", "setosa", "versicolor"], n),
            "code": rng.integers(0, 3, n),
            "size": rng.normal(0.0, 1.0, n),
            "count": rng.permutation(n),
        }
    )


def test_text_labels_become_sorted_classes_and_codes():
    frame = _frame()
    data = datasets.from_frame(frame, "species", features=["a", "b"], task="classification")
    assert data.task == "classification"
    assert data.class_names == ("setosa", "versicolor", "virginica")
    assert data.y.dtype == np.int32 and data.y.shape == (60,)
    names = np.array(data.class_names)[data.y]
    np.testing.assert_array_equal(names, frame["species"].to_numpy())
    # text labels: "auto" reads them as classes too
    auto = datasets.from_frame(frame, "species", features=["a", "b"], task="auto")
    np.testing.assert_array_equal(auto.y, data.y)
    assert auto.class_names == data.class_names


def test_auto_task_from_the_target_column():
    frame = _frame()
    codes = datasets.from_frame(frame, "code", features=["a", "b"], task="auto")
    assert codes.task == "classification" and codes.class_names == ("0", "1", "2")
    np.testing.assert_array_equal(codes.y, frame["code"].to_numpy())
    for target in ("size", "count"):  # continuous; 60 distinct integers
        reg = datasets.from_frame(frame, target, features=["a", "b"], task="auto")
        assert reg.task == "regression" and reg.class_names == ()
        assert reg.y.dtype == np.float32
    assert datasets.looks_categorical(frame["code"])
    assert not datasets.looks_categorical(frame["count"])
    assert not datasets.looks_categorical(frame["size"])
    # few levels but not fewer than half the rows: a measurement, not class codes
    assert not datasets.looks_categorical(pd.Series([0, 1, 2, 3, 1, 2]))


def test_classification_refuses_two_targets_and_one_class():
    frame = _frame()
    with pytest.raises(ValueError, match="one target column"):
        datasets.from_frame(frame, ["species", "code"], features=["a"], task="classification")
    frame["one"] = "setosa"
    with pytest.raises(ValueError, match="one class"):
        datasets.from_frame(frame, "one", features=["a", "b"], task="classification")
    with pytest.raises(ValueError, match="`task`"):
        datasets.from_frame(frame, "code", task="ordinal")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classification_standardises_features_only_and_reuses_constants(dtype):
    frame = _frame()
    train = datasets.from_frame(
        frame.iloc[:40], "species", features=["a", "b"], task="classification", dtype=dtype
    )
    raw = frame[["a", "b"]].to_numpy(np.float64)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert train.X.dtype == dtype
    np.testing.assert_allclose(train.X.mean(axis=0), 0, atol=tol)
    np.testing.assert_allclose(train.X.std(axis=0), 1, rtol=tol)
    st = train.standardisation
    assert st["y_mean"] is None and st["y_std"] is None
    assert train.y_mean is None and train.y_std is None
    np.testing.assert_allclose(st["x_mean"], raw[:40].mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(train.unstandardise_X(train.X), raw[:40], rtol=tol, atol=tol)
    # the training constants applied to the held-out rows; the same rows round-trip
    test = datasets.from_frame(
        frame.iloc[40:], "species", features=["a", "b"], task="classification",
        standardise=st, dtype=dtype,
    )  # fmt: skip
    expected = (raw[40:] - np.array(st["x_mean"])) / np.array(st["x_std"])
    np.testing.assert_allclose(test.X, expected, rtol=tol, atol=tol)
    assert test.standardisation == st
    again = datasets.from_frame(
        frame.iloc[:40], "species", features=["a", "b"], task="classification",
        standardise=st, dtype=dtype,
    )  # fmt: skip
    np.testing.assert_array_equal(again.X, train.X)
    np.testing.assert_array_equal(again.y, train.y)
    # y constants make no sense for class labels
    with pytest.raises(ValueError, match="class labels are not standardised"):
        datasets.from_frame(
            frame, "species", features=["a", "b"], task="classification",
            standardise={**st, "y_mean": 0.0, "y_std": 1.0},
        )  # fmt: skip


# --------------------------------------------------------------------------- iris fit


@pytest.fixture(scope="module")
def iris():
    sk = pytest.importorskip("sklearn.datasets")
    raw = sk.load_iris(as_frame=True)
    frame = raw.frame.copy()
    frame["species"] = np.asarray(raw.target_names)[frame.pop("target").to_numpy()]
    data = datasets.from_frame(frame, "species", task="auto")
    train, test = datasets.train_test_split(data, 0.2, key=jax.random.key(0))
    model = jacsens.MLP(4, (16,), 3, "tanh", key=jax.random.key(1), dtype=jnp.float32)
    model, history = jacsens.fit(
        model,
        train.X,
        train.y,
        loss="cross_entropy",
        optimizer=optax.adam(1e-2),
        epochs=60,
        batch_size=32,
        key=jax.random.key(2),
        progress=False,
    )
    return data, train, test, model, history


def test_cross_entropy_fit_on_iris_is_accurate(iris):
    data, train, test, model, history = iris
    assert data.class_names == ("setosa", "versicolor", "virginica")
    assert data.X.shape == (150, 4) and data.y.dtype == np.int32
    assert history.train_loss[-1] < 0.25 * history.train_loss[0]
    pred = np.asarray(jnp.argmax(jax.vmap(model)(jnp.asarray(test.X)), axis=-1))
    accuracy = np.mean(pred == test.y)
    assert accuracy >= 0.9, accuracy
    # the fitted loss is the mean cross-entropy of the softmax probabilities
    P = np.asarray(jax.vmap(jacsens.Probabilities(model))(jnp.asarray(train.X)), np.float64)
    log_loss = -np.mean(np.log(P[np.arange(len(train)), train.y]))
    logits = jax.vmap(model)(jnp.asarray(train.X))
    plain = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(train.y))
    np.testing.assert_allclose(log_loss, float(jnp.mean(plain)), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_per_class_probability_sensitivity_sums_to_zero(iris, dtype):
    data, _, _, model, _ = iris
    probs = jacsens.Probabilities(_as_dtype(model, dtype))
    X = jnp.asarray(data.X, dtype)
    res = jacsens.sensitivity(
        probs, X, feature_names=data.feature_names, output_names=data.class_names
    )
    assert res.mean.shape == (3, 4) and res.output_names == data.class_names
    # Σ_c ∂p_c/∂x = 0 row by row, so the class means of ∂p_c/∂x_i sum to zero
    np.testing.assert_allclose(res.mean.sum(axis=0), 0, atol=ZERO_SUM_TOL[dtype])
    # and they are the means of the closed-form Jacobian (diag(p) − p pᵀ) J_z
    P = jax.vmap(probs)(X)
    Jz = jax.vmap(jax.jacrev(probs.model))(X)
    Jp = jnp.einsum("bc,bci->bci", P, Jz) - jnp.einsum("bc,bd,bdi->bci", P, P, Jz)
    np.testing.assert_allclose(res.mean, Jp.mean(axis=0), rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(
        res.mean_abs, jnp.abs(Jp).mean(axis=0), rtol=TOL[dtype], atol=TOL[dtype]
    )
    assert np.all(res.mean_abs > 0)
    # the aggregate over classes is the root mean square of the per-class statistic
    np.testing.assert_allclose(
        res.values("mean_abs"), np.sqrt(np.mean(res.mean_abs**2, axis=0)), rtol=1e-12
    )
    assert res.ranking(output="setosa")[0] in data.feature_names
