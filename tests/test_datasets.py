import builtins
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacsens import datasets


def test_diabetes_standardised_and_invertible():
    data = datasets.diabetes()
    assert data.X.shape == (442, 10) and data.y.shape == (442,)
    assert data.X.dtype == np.float32 and data.y.dtype == np.float32
    assert data.feature_names == ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
    np.testing.assert_allclose(data.X.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(data.X.std(axis=0), 1, rtol=1e-5)
    assert abs(data.y.mean()) < 1e-6 and data.y.std() == pytest.approx(1, rel=1e-5)
    # Undoing the standardisation gives scikit-learn's raw data back.
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(scaled=False)
    np.testing.assert_allclose(data.unstandardise_X(data.X), raw.data, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(data.unstandardise_y(data.y), raw.target, rtol=1e-5)
    assert data.y_mean == pytest.approx(raw.target.mean())
    np.testing.assert_array_equal(data.bounds[:, 0], data.X.min(axis=0))
    np.testing.assert_array_equal(data.bounds[:, 1], data.X.max(axis=0))
    frame = data.to_frame()
    assert list(frame.columns) == [*data.feature_names, "progression"]


def test_digits():
    data = datasets.digits()
    assert data.X.shape == (1797, 64) and data.y.shape == (1797,)
    assert data.X.dtype == np.float32 and data.y.dtype == np.int32
    assert data.X.min() == 0.0 and data.X.max() == 1.0
    assert set(np.unique(data.y)) == set(range(10))
    assert np.all(np.isin(data.X * 16, np.arange(17)))  # grey levels 0..16 scaled by 1/16
    assert data.feature_names[9] == "pixel_1_1"
    assert not data.standardised and data.unstandardise_y(data.y) is not None


def test_friedman1_formula_and_reproducibility(getkey):
    key = getkey()
    data = datasets.friedman1(500, key)
    X = data.X.astype(np.float64)
    expected = (
        10 * np.sin(np.pi * X[:, 0] * X[:, 1])
        + 20 * (X[:, 2] - 0.5) ** 2
        + 10 * X[:, 3]
        + 5 * X[:, 4]
    )
    np.testing.assert_allclose(data.y, expected, rtol=1e-5, atol=1e-5)
    assert data.X.shape == (500, 10) and data.X.dtype == np.float32
    assert 0 <= data.X.min() and data.X.max() <= 1
    np.testing.assert_array_equal(data.bounds, np.tile([[0.0, 1.0]], (10, 1)))
    again = datasets.friedman1(500, key)
    np.testing.assert_array_equal(again.X, data.X)
    noisy = datasets.friedman1(500, key, noise=1.0)
    np.testing.assert_array_equal(noisy.X, data.X)
    resid = noisy.y - data.y
    assert 0.85 < resid.std() < 1.15
    # The last five features do not enter y.
    X2 = X.copy()
    X2[:, 5:] = 0.123
    np.testing.assert_allclose(datasets.friedman1_function(X2), expected, rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_friedman1_bad_n(getkey, bad):
    with pytest.raises(ValueError, match="`n`"):
        datasets.friedman1(bad, getkey())


def test_friedman1_bad_noise(getkey):
    with pytest.raises(ValueError, match="`noise`"):
        datasets.friedman1(10, getkey(), noise=-1.0)


def test_train_test_split_dataset(getkey):
    data = datasets.diabetes()
    key = getkey()
    train, test = datasets.train_test_split(data, 0.2, key=key)
    assert len(test) == 88 and len(train) == 354
    assert train.feature_names == data.feature_names and train.y_std == data.y_std
    # Disjoint and covering: every row appears exactly once.
    rows = np.concatenate([train.X, test.X])
    assert np.unique(rows, axis=0).shape[0] == np.unique(data.X, axis=0).shape[0]
    assert sorted(map(tuple, rows)) == sorted(map(tuple, data.X))
    again, _ = datasets.train_test_split(data, 0.2, key=key)
    np.testing.assert_array_equal(again.X, train.X)


def test_train_test_split_arrays(getkey):
    X = jnp.arange(20.0).reshape(10, 2)
    y = jnp.arange(10)
    (Xtr, ytr), (Xte, yte) = datasets.train_test_split((X, y), test_fraction=0.3, key=getkey())
    assert Xte.shape == (3, 2) and Xtr.shape == (7, 2)
    np.testing.assert_array_equal(Xtr[:, 0] / 2, ytr)  # rows stay aligned
    np.testing.assert_array_equal(Xte[:, 0] / 2, yte)
    assert sorted(np.concatenate([ytr, yte]).tolist()) == list(range(10))


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (((np.zeros((5, 2)), np.zeros(4)),), ValueError, "same number of rows"),
        ((np.zeros((5, 2)),), TypeError, "data"),
        (((np.zeros((5, 2)),), 1.5), ValueError, "test_fraction"),
        (((np.zeros((2, 2)),), 0.1), ValueError, "empty"),
    ],
)
def test_train_test_split_errors(getkey, args, exc, match):
    with pytest.raises(exc, match=match):
        datasets.train_test_split(*args, key=getkey())


def test_dataset_validates_fields():
    with pytest.raises(ValueError, match="feature_names"):
        datasets.Dataset(np.zeros((3, 2), np.float32), np.zeros(3), ("a",), "y", "")
    data = datasets.Dataset(np.zeros((3, 2), np.float32), np.zeros(3), ("a", "b"), "y", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.X = None


def test_missing_sklearn_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install "jacsens\[data\]"'):
        datasets.digits()
    # friedman1 needs nothing beyond JAX.
    assert datasets.friedman1(3, jax.random.key(0)).X.shape == (3, 10)


@pytest.mark.parametrize("noise", [float("inf"), float("nan"), True, -0.5])
def test_friedman1_refuses_bad_noise(noise):
    with pytest.raises(ValueError, match="`noise`"):
        datasets.friedman1(10, jax.random.key(0), noise=noise)
