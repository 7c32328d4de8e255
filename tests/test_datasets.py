import builtins
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jacsens
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


def test_friedman1_feature_names_are_the_default_names(getkey):
    # issue 12 item 7: the data set's names are those sensitivity gives unnamed columns
    data = datasets.friedman1(20, getkey())
    assert data.feature_names == tuple(f"x{i}" for i in range(10))
    res = jacsens.sensitivity(lambda x: datasets.friedman1_function(x[None])[0], data.X)
    assert res.feature_names == data.feature_names
    # x0..x4 enter y, x5..x9 do not: the derivative of the irrelevant ones is exactly 0
    assert np.all(res.mean_abs[0][:5] > 0) and np.all(res.mean_abs[0][5:] == 0)


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
        (((np.zeros((2, 2)),), 0.1), ValueError, "2 train and 0 test rows"),
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


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        rng.normal(size=(30, 4)) * [1.0, 10.0, 0.1, 3.0] + [0, 5, -2, 1],
        columns=["a", "b", "c", "y"],
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return frame, path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_from_csv_standardises_against_float64_reference(table, dtype):
    frame, path = table
    data = datasets.from_csv(path, "y", dtype=dtype)
    raw = pd.read_csv(path).to_numpy(np.float64)
    mean, std = raw.mean(axis=0), raw.std(axis=0)  # population std, as documented
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    assert data.X.dtype == dtype and data.y.dtype == dtype
    np.testing.assert_allclose(data.X, (raw[:, :3] - mean[:3]) / std[:3], **tol)
    np.testing.assert_allclose(data.y, (raw[:, 3] - mean[3]) / std[3], **tol)
    np.testing.assert_allclose(data.x_mean, mean[:3], rtol=1e-14)
    assert data.y_std == pytest.approx(std[3], rel=1e-14)
    np.testing.assert_allclose(data.unstandardise_X(data.X), raw[:, :3], **tol)
    assert data.feature_names == ("a", "b", "c") and data.target_names == ("y",)
    assert str(path) in data.description
    # the same constants applied to other rows (e.g. test data standardised like train data)
    part = datasets.from_frame(frame.iloc[:5], "y", standardise=data.standardisation, dtype=dtype)
    np.testing.assert_allclose(part.X, data.X[:5], **tol)
    raw_data = datasets.from_frame(frame, "y", standardise=False, dtype=np.float64)
    np.testing.assert_array_equal(raw_data.X, raw[:, :3])
    assert raw_data.standardisation is None


def test_from_frame_features_and_several_targets(table):
    frame, _ = table
    data = datasets.from_frame(frame, ["c", "y"], features=["b", "a"], standardise=False)
    assert data.feature_names == ("b", "a") and data.target_names == ("c", "y")
    np.testing.assert_array_equal(data.X, frame[["b", "a"]].to_numpy(np.float32))
    np.testing.assert_array_equal(data.y, frame[["c", "y"]].to_numpy(np.float32))
    assert list(data.to_frame().columns) == ["b", "a", "c", "y"]
    std = datasets.from_frame(frame, ["c", "y"])
    np.testing.assert_allclose(std.y.std(axis=0), [1.0, 1.0], rtol=1e-5)
    assert np.shape(std.y_mean) == (2,)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda f: datasets.from_frame(f, "nope"), ValueError, r"`target` column\(s\) \['nope'\]"),
        (lambda f: datasets.from_frame(f, 3), TypeError, "`target`"),
        (lambda f: datasets.from_frame(f, "y", features=["a", "zz"]), ValueError, "`features`"),
        (lambda f: datasets.from_frame(f, "y", features=["a", "y"]), ValueError, "also `target`"),
        (lambda f: datasets.from_frame(f[["y"]], "y"), ValueError, "no feature columns"),
        (lambda f: datasets.from_frame(f.iloc[:0], "y"), ValueError, "no data rows"),
        (lambda f: datasets.from_frame(f.assign(a="x"), "y"), ValueError, r"\['a'\].*not numeric"),
        (lambda f: datasets.from_frame(f.assign(b=1.0), "y"), ValueError, r"constant.*\['b'\]"),
        (lambda f: datasets.from_frame(f.values, "y"), TypeError, "`frame`"),
        (lambda f: datasets.from_frame(f, "y", dtype=np.int32), TypeError, "`dtype`"),
        (
            lambda f: datasets.from_frame(f, "y", standardise={"x_mean": 0}),
            TypeError,
            "standardise",
        ),
    ],
)
def test_from_frame_errors(table, make, exc, match):
    with pytest.raises(exc, match=match):
        make(table[0])


def test_from_frame_missing_values_name_the_row(table, tmp_path):
    frame, _ = table
    bad = frame.copy()
    bad.loc[7, "c"] = np.nan
    bad.loc[9, "a"] = np.inf
    with pytest.raises(ValueError, match=r"2 row\(s\).*first: row 7, column 'c'"):
        datasets.from_frame(bad, "y")
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*first: line 9, column 'c'"):
        datasets.from_csv(path, "y")  # line 1 is the header


def test_from_csv_file_errors(tmp_path):
    (tmp_path / "header.csv").write_text("a,b,y\n")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"header\.csv' has a header but no data rows"):
        datasets.from_csv(tmp_path / "header.csv", "y")
    with pytest.raises(ValueError, match=r"empty\.csv' is empty"):
        datasets.from_csv(tmp_path / "empty.csv", "y")
    with pytest.raises(ValueError, match="`path`.*is a folder"):
        datasets.from_csv(tmp_path, "y")
    with pytest.raises(FileNotFoundError, match="absent"):
        datasets.from_csv(tmp_path / "absent.csv", "y")
    with pytest.raises(TypeError, match="`path`"):
        datasets.from_csv(3, "y")


@pytest.mark.parametrize("key", [0, np.int64(3), np.zeros(3, np.uint32), jnp.zeros(2, jnp.float32)])
def test_integer_and_malformed_keys_are_type_errors(key):
    with pytest.raises(TypeError, match="`key` must be one jax.random key"):
        datasets.friedman1(10, key)
    with pytest.raises(TypeError, match="`key` must be one jax.random key"):
        datasets.train_test_split((np.zeros((5, 2)),), key=key)


def test_legacy_uint32_keys_are_accepted():
    new = datasets.friedman1(5, jax.random.key(0))
    old = datasets.friedman1(5, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(new.X, old.X)


def test_train_test_split_tables_and_lists(getkey, table):
    frame, _ = table
    with pytest.raises(TypeError, match=r"`data` must be.*got DataFrame.*\(frame,\)"):
        datasets.train_test_split(frame, key=getkey())
    with pytest.raises(TypeError, match=r"`data\[1\]` must be an array.*got list"):
        datasets.train_test_split((np.zeros(3), [1, 2, 3]), key=getkey())
    key = getkey()
    (f_tr, y_tr), (f_te, y_te) = datasets.train_test_split((frame, frame["y"]), 0.2, key=key)
    (a_tr,), (a_te,) = datasets.train_test_split((frame.to_numpy(),), 0.2, key=key)
    # pandas objects are split by position, like arrays
    np.testing.assert_array_equal(f_tr.to_numpy(), a_tr)
    np.testing.assert_array_equal(y_te.to_numpy(), a_te[:, 3])
    assert datasets.split_sizes(30, 0.2) == (24, 6) and len(f_te) == 6
