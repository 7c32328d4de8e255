"""Small data sets for examples and tests: bundled (scikit-learn) and generated (JAX).

`diabetes()` and `digits()` read the files that ship inside scikit-learn (no download);
scikit-learn is an optional dependency (`pip install "jacsens[data]"`). `friedman1()` is
generated with `jax.random` and needs nothing extra. `from_csv()` and `from_frame()` turn a
table of your own (pandas, also in `[data]`) into a `Dataset`, standardised by default.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ._names import index_names

__all__ = [
    "Dataset",
    "diabetes",
    "digits",
    "friedman1",
    "friedman1_function",
    "from_csv",
    "from_frame",
    "split_sizes",
    "train_test_split",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A supervised data set with its metadata.

    **Fields:**

    - `X`: inputs, `float32` NumPy array of shape `(N, n_features)`.
    - `y`: targets of shape `(N,)`: `float32` for regression, `int32` class labels for
        classification; `(N, n_targets)` for several regression targets.
    - `feature_names`: one name per column of `X`.
    - `target_name`: name of the target (of several targets: their names joined by ", ";
        see `target_names`).
    - `description`: where the data come from and how they were transformed.
    - `bounds`: `(n_features, 2)` array of `[low, high]` per feature, or `None`. For
        generated data these are the sampling bounds; for bundled data the documented
        range of the (transformed) features.
    - `x_mean`, `x_std`: if `X` was standardised, the column means and standard deviations
        of the raw data (`raw = X * x_std + x_mean`); otherwise `None`.
    - `y_mean`, `y_std`: the same for `y` (arrays of one value per target for several).
    - `target_names`: one name per target: `(target_name,)` for one-dimensional `y`.
    - `class_names`: for classification data, the name of each class (`y == k` is class
        `class_names[k]`); `()` for regression.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str
    description: str
    bounds: np.ndarray | None = None
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    y_mean: float | np.ndarray | None = None
    y_std: float | np.ndarray | None = None
    target_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()

    @property
    def task(self) -> str:
        """`"classification"` (integer class labels with `class_names`) or `"regression"`."""
        return "classification" if self.class_names else "regression"

    def __post_init__(self):
        if self.X.ndim != 2:
            raise ValueError(f"`X` must have shape (N, n_features), got {self.X.shape}.")
        if self.y.shape[:1] != self.X.shape[:1]:
            raise ValueError(
                f"`X` and `y` must have the same number of rows, got {self.X.shape} and "
                f"{self.y.shape}."
            )
        if len(self.feature_names) != self.X.shape[1]:
            raise ValueError(
                f"`feature_names` must have {self.X.shape[1]} entries, got "
                f"{len(self.feature_names)}."
            )
        n_targets = 1 if self.y.ndim == 1 else self.y.shape[1]
        if not self.target_names:
            # frozen: the default is filled in once, here
            if n_targets != 1:
                raise ValueError(f"`target_names` must name the {n_targets} columns of `y`.")
            object.__setattr__(self, "target_names", (self.target_name,))
        if len(self.target_names) != n_targets or self.y.ndim > 2:
            raise ValueError(
                f"`target_names` must have one entry per target ({n_targets} for `y` of "
                f"shape {self.y.shape}), got {self.target_names}."
            )

    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return self.X.shape[1]

    @property
    def standardised(self) -> bool:
        """Whether `X` holds standardised columns."""
        return self.x_mean is not None

    def unstandardise_X(self, X: Any) -> np.ndarray:
        """Map standardised inputs back to the raw scale (identity if not standardised)."""
        X = np.asarray(X)
        if self.x_mean is None:
            return X
        return X * self.x_std + self.x_mean

    def unstandardise_y(self, y: Any) -> np.ndarray:
        """Map standardised targets (or predictions) back to the raw scale."""
        y = np.asarray(y)
        if self.y_mean is None:
            return y
        return y * self.y_std + self.y_mean

    def to_frame(self):
        """The data as a `pandas.DataFrame` (features then target)."""
        import pandas as pd

        frame = pd.DataFrame(self.X, columns=list(self.feature_names))
        y = self.y.reshape(len(self), -1)
        for i, name in enumerate(self.target_names):
            frame[name] = y[:, i]
        return frame

    @property
    def standardisation(self) -> dict[str, Any] | None:
        """The standardisation constants as plain lists and floats (the form `from_frame`'s
        `standardise` takes and JSON stores), or `None` if `X` is not standardised."""
        if self.x_mean is None:
            return None
        y = {"y_mean": None, "y_std": None}  # class labels are not standardised
        if self.y_mean is not None:
            y_mean, y_std = np.asarray(self.y_mean), np.asarray(self.y_std)
            y = {
                "y_mean": y_mean.astype(np.float64).tolist(),
                "y_std": y_std.astype(np.float64).tolist(),
            }
        return {
            "x_mean": np.asarray(self.x_mean, np.float64).tolist(),
            "x_std": np.asarray(self.x_std, np.float64).tolist(),
            **y,
        }

    def __repr__(self) -> str:
        kind = "standardised" if self.standardised else "raw"
        return (
            f"Dataset({self.target_name!r}: X {self.X.shape} {kind}, y {self.y.shape} "
            f"{self.y.dtype}, features {list(self.feature_names)[:6]}"
            f"{'...' if self.n_features > 6 else ''})"
        )


def _sklearn_datasets():
    try:
        import sklearn.datasets
    except ImportError as e:
        raise ImportError(
            "This data set is read from scikit-learn's bundled files; install it with: pip "
            'install "jacsens[data]"'
        ) from e
    return sklearn.datasets


def _standardise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    return (a - mean) / std, mean, std


def diabetes() -> Dataset:
    """The diabetes regression data of Efron et al. (2004), as bundled with scikit-learn.

    442 patients, 10 baseline variables (age, sex, body mass index, mean blood pressure
    and six blood serum measurements `s1`..`s6`); the target is a measure of disease
    progression one year later. Following convention, each column of `X` and the target
    are standardised to mean 0 and standard deviation 1 (population std); the raw
    means/stds are kept in the data set (`x_mean`, `x_std`, `y_mean`, `y_std`).
    `bounds` are the observed minimum and maximum of each standardised column.

    **Returns:**

    A `Dataset` with `X` of shape `(442, 10)` and `y` of shape `(442,)`, `float32`.

    **Raises:**

    `ImportError` if scikit-learn is not installed.
    """
    raw = _sklearn_datasets().load_diabetes(scaled=False)
    X, x_mean, x_std = _standardise(raw.data)
    y, y_mean, y_std = _standardise(raw.target)
    X = X.astype(np.float32)
    bounds = np.stack([X.min(axis=0), X.max(axis=0)], axis=1)
    return Dataset(
        X=X,
        y=y.astype(np.float32),
        feature_names=tuple(raw.feature_names),
        target_name="progression",
        description=(
            "Diabetes data (Efron, Hastie, Johnstone and Tibshirani, 2004; scikit-learn "
            "load_diabetes). X columns and y standardised to mean 0, std 1.\n\n" + raw.DESCR
        ),
        bounds=bounds,
        x_mean=x_mean,
        x_std=x_std,
        y_mean=float(y_mean),
        y_std=float(y_std),
    )


def digits() -> Dataset:
    """The 8×8 handwritten digits of scikit-learn (UCI optical recognition, test part).

    1797 images of 8×8 pixels with grey levels 0..16, flattened row by row into 64
    features `pixel_r_c` and scaled to `[0, 1]` (divided by 16, the usual convention for
    this data); targets are the digits 0..9 as `int32` labels.

    **Returns:**

    A `Dataset` with `X` of shape `(1797, 64)` (`float32`, bounds `[0, 1]`) and `y` of
    shape `(1797,)` (`int32`). Reshape a row to `(8, 8)` to view the image.

    **Raises:**

    `ImportError` if scikit-learn is not installed.
    """
    raw = _sklearn_datasets().load_digits()
    X = (np.asarray(raw.data, dtype=np.float64) / 16.0).astype(np.float32)
    names = tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8))
    return Dataset(
        X=X,
        y=np.asarray(raw.target, dtype=np.int32),
        feature_names=names,
        target_name="digit",
        description=(
            "Handwritten digits, 8x8 grey levels 0..16 scaled to [0, 1] (scikit-learn "
            "load_digits).\n\n" + raw.DESCR
        ),
        bounds=np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (64, 1)),
    )


def friedman1(n: int, key: PRNGKeyArray, noise: float = 0.0) -> Dataset:
    """Friedman's (1991) test function #1, sampled with `jax.random`.

    `y = 10 sin(π x0 x1) + 20 (x2 − 0.5)² + 10 x3 + 5 x4 + noise · ε` with ten features
    `x0..x9` independent and uniform on `[0, 1]` and `ε ~ N(0, 1)`; `x5..x9` do not
    enter `y`, which makes it a standard check that a sensitivity analysis finds
    irrelevant inputs. The features are named as `jacsens.sensitivity` names the columns
    of an unnamed array (`x0..x9`, 0-based, where Friedman writes `x1..x10`). Data are
    not standardised (`bounds` are the sampling box).

    **Arguments:**

    - `n`: number of samples (at least 1).
    - `key`: a `jax.random` key.
    - `noise`: standard deviation of the additive Gaussian noise (non-negative).

    **Returns:**

    A `Dataset` with `X` of shape `(n, 10)` and `y` of shape `(n,)`, `float32`.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}.")
    _check_key(key)
    if (
        isinstance(noise, bool)
        or not isinstance(noise, int | float | np.floating)
        or not 0 <= noise < math.inf
    ):
        raise ValueError(f"`noise` must be a finite non-negative float, got {noise!r}.")
    kx, ke = jax.random.split(key)
    X = jax.random.uniform(kx, (int(n), 10), dtype=jnp.float32)
    y = friedman1_function(X) + noise * jax.random.normal(ke, (int(n),), dtype=jnp.float32)
    return Dataset(
        X=np.asarray(X),
        y=np.asarray(y, dtype=np.float32),
        feature_names=index_names((10,)),
        target_name="y",
        description=(
            "Friedman #1: y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise, "
            f"x ~ U[0, 1]^10 (x5..x9 irrelevant), noise std {noise}."
        ),
        bounds=np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (10, 1)),
    )


def friedman1_function(X: Any) -> jax.Array:
    """The noiseless Friedman #1 response for inputs of shape `(N, ≥5)` (columns `x5`
    onwards, 0-based, unused)."""
    X = jnp.asarray(X)
    if X.ndim != 2 or X.shape[1] < 5:
        raise ValueError(f"`X` must have shape (N, >=5), got {X.shape}.")
    x1, x2, x3, x4, x5 = (X[:, i] for i in range(5))
    return 10 * jnp.sin(jnp.pi * x1 * x2) + 20 * (x3 - 0.5) ** 2 + 10 * x4 + 5 * x5


def _check_key(key: Any, argname: str = "key") -> None:
    """A typed key (`jax.random.key`) or a legacy `uint32[2]` key (`jax.random.PRNGKey`)."""
    if isinstance(key, jax.Array | np.ndarray):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return
        if key.dtype == np.uint32 and key.shape == (2,):
            return
        got = f"an array of shape {key.shape} and dtype {key.dtype}"
    else:
        got = f"{type(key).__name__} {key!r}"
    raise TypeError(
        f"`{argname}` must be one jax.random key, such as `jax.random.key(0)`, got {got}."
    )


def split_sizes(n_rows: int, test_fraction: float) -> tuple[int, int]:
    """The sizes `(n_train, n_test)` that `train_test_split` gives `n_rows` rows:
    `n_test = round(n_rows * test_fraction)` (to the nearest integer, ties to even)."""
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, float | int)
        or not 0 < test_fraction < 1
    ):
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")
    n_test = int(round(n_rows * test_fraction))
    return n_rows - n_test, n_test


def _split_indices(n: int, test_fraction: float, key: Any) -> tuple[np.ndarray, np.ndarray]:
    n_train, n_test = split_sizes(n, test_fraction)
    if n_test < 1 or n_train < 1:
        raise ValueError(
            f"`test_fraction`={test_fraction} of {n} rows leaves {n_train} train and {n_test} "
            "test rows; each part needs at least one."
        )
    _check_key(key)
    perm = np.asarray(jax.random.permutation(key, n))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _take(a: Any, idx: np.ndarray) -> Any:
    # pandas objects are indexed by position (`a[idx]` would select columns or labels)
    return a.iloc[idx] if hasattr(a, "iloc") else a[idx]


def train_test_split(
    data: Dataset | Sequence[Any], test_fraction: float = 0.2, *, key: PRNGKeyArray
) -> tuple[Any, Any]:
    """Split a data set (or aligned arrays) into random train and test parts.

    **Arguments:**

    - `data`: a `Dataset`, or a tuple or list of arrays with the same number of rows
        (e.g. `(X, y)`; NumPy or JAX arrays, or pandas DataFrames/Series, split by
        position).
    - `test_fraction`: fraction of rows in the test part, in `(0, 1)`; rounded to a whole
        number of rows (`split_sizes`), at least one in each part.
    - `key`: a `jax.random` key choosing the rows.

    **Returns:**

    `(train, test)`: two `Dataset`s with the same metadata (standardisation constants are
    those of the full data), or two tuples of arrays in the order given. Rows keep their
    original order within each part.

    **Raises:**

    `TypeError` if `data` is neither (a DataFrame alone: pass `(frame,)`, or use
    `from_frame`) or `key` is not a PRNG key; `ValueError` if the row counts differ or a
    part would be empty.
    """
    if isinstance(data, Dataset):
        train_idx, test_idx = _split_indices(len(data), test_fraction, key)
        return (
            dataclasses.replace(data, X=data.X[train_idx], y=data.y[train_idx]),
            dataclasses.replace(data, X=data.X[test_idx], y=data.y[test_idx]),
        )
    if not isinstance(data, list | tuple) or len(data) == 0:
        hint = ""
        if hasattr(data, "iloc"):
            hint = " (for one table pass `(frame,)`, or make a Dataset with from_frame)"
        raise TypeError(
            "`data` must be a jacsens.datasets.Dataset or a non-empty tuple or list of "
            f"arrays, got {type(data).__name__}{hint}."
        )
    for i, a in enumerate(data):
        if not (hasattr(a, "iloc") or isinstance(a, np.ndarray | jax.Array)):
            raise TypeError(
                f"`data[{i}]` must be an array (NumPy, JAX or pandas), got "
                f"{type(a).__name__}; convert it with np.asarray first."
            )
    rows = [np.shape(a)[0] if np.ndim(a) > 0 else None for a in data]
    if any(r is None for r in rows) or len(set(rows)) != 1:
        raise ValueError(
            f"The arrays in `data` must have the same number of rows, got shapes "
            f"{[np.shape(a) for a in data]}."
        )
    train_idx, test_idx = _split_indices(rows[0], test_fraction, key)
    return tuple(_take(a, train_idx) for a in data), tuple(_take(a, test_idx) for a in data)


def _standardisation_constants(
    X: np.ndarray, y: np.ndarray | None, standardise: Any, features: list[str], targets: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(x_mean, x_std, y_mean, y_std)` in float64: the data's own, or those given."""
    if standardise is True:
        x_mean, x_std = X.mean(axis=0), X.std(axis=0)
        const = [f for f, sd in zip(features, x_std, strict=True) if not sd > 0]
        if y is None:  # class labels: only the features are standardised
            y_mean = y_std = None
        else:
            y_mean, y_std = y.mean(axis=0), y.std(axis=0)
            const += [t for t, sd in zip(targets, np.atleast_1d(y_std), strict=True) if not sd > 0]
        if const:
            raise ValueError(
                f"Cannot standardise the constant column(s) {const}: drop them or pass "
                "`standardise=False`."
            )
        return x_mean, x_std, y_mean, y_std
    if not isinstance(standardise, Mapping) or set(standardise) != {
        "x_mean",
        "x_std",
        "y_mean",
        "y_std",
    }:
        raise TypeError(
            "`standardise` must be True, False or a mapping with the keys x_mean, x_std, "
            f"y_mean and y_std (such as `Dataset.standardisation`), got {standardise!r}."
        )
    consts = {k: np.asarray(v, np.float64) for k, v in standardise.items() if v is not None}
    shapes = {"x_mean": X.shape[1:], "x_std": X.shape[1:]}
    if y is not None:
        shapes["y_mean"] = shapes["y_std"] = y.shape[1:]
    elif "y_mean" in consts or "y_std" in consts:
        raise ValueError("`standardise` holds y constants, but class labels are not standardised.")
    for k, shape in shapes.items():
        if consts[k].shape != shape:
            raise ValueError(
                f"`standardise[{k!r}]` must have shape {shape} for {X.shape[1]} features and "
                f"{len(targets)} target(s), got {consts[k].shape}."
            )
        if not np.all(np.isfinite(consts[k])) or (k.endswith("std") and np.any(consts[k] <= 0)):
            raise ValueError(f"`standardise[{k!r}]` must be finite (stds positive).")
    return consts["x_mean"], consts["x_std"], consts.get("y_mean"), consts.get("y_std")


def _from_frame(
    frame: Any,
    target: str | Sequence[str],
    features: Sequence[str] | None,
    standardise: bool | Mapping[str, Any],
    dtype: Any,
    source: str,
    row_label: str,
    task: str = "regression",
    classes: Sequence[str] | None = None,
) -> Dataset:
    """`from_frame` with `source` naming the table in messages and `row_label` (`"row"`
    or `"line"`) how its rows are numbered (0-based rows, 1-based file lines)."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"`frame` must be a pandas DataFrame, got {type(frame).__name__}.")
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise ValueError(f"{source} has duplicate column names {dup}.")
    frame = frame.set_axis(columns, axis=1)
    if isinstance(target, str):
        targets, single = [target], True
    elif isinstance(target, Sequence) and target and all(isinstance(t, str) for t in target):
        targets, single = list(target), False
    else:
        raise TypeError(
            f"`target` must be a column name or a non-empty list of them, got {target!r}."
        )
    missing = [t for t in targets if t not in columns]
    if missing:
        raise ValueError(
            f"`target` column(s) {missing} are not in {source}; its columns are {columns}."
        )
    if features is None:
        feats = [c for c in columns if c not in targets]
    else:
        if isinstance(features, str) or not all(isinstance(f, str) for f in features):
            raise TypeError(f"`features` must be a list of column names, got {features!r}.")
        feats = list(features)
        absent = [f for f in feats if f not in columns]
        if absent:
            raise ValueError(f"`features` {absent} are not in {source}; its columns are {columns}.")
        both = [f for f in feats if f in targets]
        if both:
            raise ValueError(f"`features` {both} are also `target` columns.")
    if not feats:
        raise ValueError(f"{source} has no feature columns besides the target {targets}.")
    if len(frame) == 0:
        raise ValueError(f"{source} has a header but no data rows.")
    if task not in ("auto", "regression", "classification"):
        raise ValueError(f"`task` must be 'auto', 'regression' or 'classification', got {task!r}.")
    if task == "auto":
        task = (
            "classification" if all(looks_categorical(frame[t]) for t in targets) else "regression"
        )
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    if task == "classification":
        if not single:
            raise ValueError(
                f"Classification takes one target column, got {targets}; fit one model per "
                "target, or treat them as regression targets."
            )
        col = frame[targets[0]]
        if col.isna().any():
            row = int(np.flatnonzero(col.isna().to_numpy())[0])
            where = f"line {row + 2}" if row_label == "line" else f"row {row}"
            raise ValueError(f"{source} has a missing class label (first: {where}).")
        if classes is not None:  # the codes of an earlier fit, by class name
            class_names = tuple(str(c) for c in classes)
            lookup = {c: k for k, c in enumerate(class_names)}
            names = [_class_name(v) for v in col.to_numpy()]
            unknown = sorted({n for n in names if n not in lookup})
            if unknown:
                raise ValueError(
                    f"Target {targets[0]!r} of {source} holds label(s) {unknown[:10]} that are "
                    f"not among the classes {list(class_names)} given."
                )
            labels = np.asarray([lookup[n] for n in names], np.int32)
        else:
            values, codes = np.unique(col.to_numpy(), return_inverse=True)
            if len(values) < 2:
                raise ValueError(
                    f"Target {targets[0]!r} of {source} has one class ({values[0]!r}); "
                    "classification needs at least two."
                )
            if len(values) > max(2, len(col) // 2):
                raise ValueError(
                    f"Target {targets[0]!r} of {source} has {len(values)} distinct values in "
                    f"{len(col)} rows: as classes most would hold one row. Is it a regression "
                    "target? (task='regression')"
                )
            labels = codes.astype(np.int32).reshape(-1)
            class_names = tuple(_class_name(v) for v in values)
        used = list(feats)
    else:
        used = feats + targets
    text = [c for c in used if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise ValueError(
            f"Column(s) {text} of {source} are not numeric; encode or drop them first."
        )
    values = frame[used].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        where = f"line {row + 2}" if row_label == "line" else f"row {row}"
        raise ValueError(
            f"{source} has {int(bad.any(axis=1).sum())} row(s) with missing or non-finite "
            f"values (first: {where}, column {used[col]!r})."
        )
    X = values[:, : len(feats)]
    if labels is not None:
        y = None
    else:
        y = values[:, len(feats)] if single else values[:, len(feats) :]
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"`dtype` must be float32 or float64, got {dtype}.")
    st: dict[str, Any] = {}
    how = "raw (not standardised)"
    if standardise is not False:
        x_mean, x_std, y_mean, y_std = _standardisation_constants(X, y, standardise, feats, targets)
        X = (X - x_mean) / x_std
        st = dict(x_mean=x_mean, x_std=x_std)
        if y is not None:
            y = (y - y_mean) / y_std
            st["y_mean"] = float(y_mean) if single else y_mean
            st["y_std"] = float(y_std) if single else y_std
        how = (
            "standardised to mean 0, std 1 (population std)"
            if standardise is True
            else "standardised with the constants given"
        )
    X = X.astype(dtype)
    if labels is not None:
        how += f"; target {targets[0]!r}: {len(class_names)} classes {list(class_names)[:10]}"
    return Dataset(
        X=X,
        y=labels if labels is not None else y.astype(dtype),  # type: ignore[union-attr]
        class_names=class_names,
        feature_names=tuple(feats),
        target_name=targets[0] if single else ", ".join(targets),
        description=f"{source}: {len(X)} rows, target(s) {targets}; X and y {how}.",
        bounds=np.stack([X.min(axis=0), X.max(axis=0)], axis=1),
        target_names=tuple(targets),
        **st,
    )


_MAX_AUTO_CLASSES = 10


def _class_name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def looks_categorical(column: Any) -> bool:
    """Whether `task="auto"` treats a target column as class labels: text, booleans or
    categories; or whole numbers with at most 10 distinct values, fewer than half the rows
    (`0/1/2` class codes, not counts or measurements)."""
    import pandas as pd

    values = column.dropna()
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return True
    v = values.to_numpy(dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)) or not np.all(v == np.round(v)):
        return False
    levels = np.unique(v).size
    return 2 <= levels <= _MAX_AUTO_CLASSES and levels <= v.size / 2


def from_frame(
    frame: Any,
    target: str | Sequence[str],
    *,
    features: Sequence[str] | None = None,
    standardise: bool | Mapping[str, Any] = True,
    dtype: Any = np.float32,
    task: str = "regression",
    classes: Sequence[str] | None = None,
) -> Dataset:
    """A `Dataset` from the numeric columns of a pandas DataFrame.

    **Arguments:**

    - `frame`: a `pandas.DataFrame` with one row per sample.
    - `target`: the column to predict, or a list of columns (then `y` has shape
        `(N, n_targets)`).
    - `features`: the input columns, in this order; default: every other column.
    - `standardise`: `True` (default) standardises each feature and target column to mean 0
        and (population) standard deviation 1, keeping the constants in the data set
        (`x_mean`, ..., and `Dataset.standardisation`); `False` keeps the raw values; a
        mapping with `x_mean`, `x_std`, `y_mean`, `y_std` (such as another data set's
        `standardisation`, e.g. that of the training data) standardises with those.
    - `dtype`: `float32` (default) or `float64`, of `X` and `y`.
    - `task`: `"regression"` (default), `"classification"` (one target column whose
        distinct values, sorted, become classes `0..C-1`: `y` holds `int32` labels, not
        standardised, and `class_names` their names; the column may hold text), or
        `"auto"`: classification when the target is text, booleans, categories, or whole
        numbers with at most 10 distinct values (fewer than half the rows); regression
        otherwise.
    - `classes`: for classification, the class names in code order (e.g. an earlier
        data set's `class_names`): labels are coded by these names instead of by sorting
        the values found, and a label not among them is refused.

    **Returns:**

    A `Dataset` with `X` of shape `(N, n_features)`, `bounds` the observed range of each
    (transformed) column.

    **Raises:**

    `ValueError` naming the columns if a target or feature is not in the frame, a column
    is not numeric, a value is missing or not finite (with the first row), a column to
    standardise is constant, or the frame has no rows; `TypeError` for arguments of the
    wrong type.
    """
    return _from_frame(
        frame, target, features, standardise, dtype, "the frame", "row", task, classes
    )


def from_csv(
    path: str | os.PathLike,
    target: str | Sequence[str],
    *,
    features: Sequence[str] | None = None,
    standardise: bool | Mapping[str, Any] = True,
    dtype: Any = np.float32,
    task: str = "regression",
    classes: Sequence[str] | None = None,
) -> Dataset:
    """A `Dataset` from a CSV file with a header row (read with pandas).

    **Arguments:**

    - `path`: the CSV file; its first line names the columns.
    - `target`, `features`, `standardise`, `dtype`, `task`, `classes`: as in `from_frame`.

    **Returns:**

    A `Dataset` whose `description` names the file.

    **Raises:**

    `FileNotFoundError` if `path` does not exist; `ValueError` naming `path` if it is a
    folder, empty, not readable as CSV, has a header but no data rows, or fails one of
    `from_frame`'s checks (missing values are reported by line number in the file).
    """
    import pandas as pd

    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` {path!r} is a folder, not a CSV file.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"`path` {path!r} does not exist.")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path!r} is empty (no header row, no data).") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"Cannot read {path!r} as CSV: {str(e).splitlines()[0]}") from None
    return _from_frame(
        frame, target, features, standardise, dtype, repr(path), "line", task, classes
    )
