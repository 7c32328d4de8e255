"""Small data sets for examples and tests: bundled (scikit-learn) and generated (JAX).

`diabetes()` and `digits()` read the files that ship inside scikit-learn (no download);
scikit-learn is an optional dependency (`pip install "jacsens[data]"`). `friedman1()` is
generated with `jax.random` and needs nothing extra.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

__all__ = ["Dataset", "diabetes", "digits", "friedman1", "friedman1_function", "train_test_split"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A supervised data set with its metadata.

    **Fields:**

    - `X`: inputs, `float32` NumPy array of shape `(N, n_features)`.
    - `y`: targets of shape `(N,)`: `float32` for regression, `int32` class labels for
        classification.
    - `feature_names`: one name per column of `X`.
    - `target_name`: name of the target.
    - `description`: where the data come from and how they were transformed.
    - `bounds`: `(n_features, 2)` array of `[low, high]` per feature, or `None`. For
        generated data these are the sampling bounds; for bundled data the documented
        range of the (transformed) features.
    - `x_mean`, `x_std`: if `X` was standardised, the column means and standard deviations
        of the raw data (`raw = X * x_std + x_mean`); otherwise `None`.
    - `y_mean`, `y_std`: the same for `y`.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str
    description: str
    bounds: np.ndarray | None = None
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    y_mean: float | None = None
    y_std: float | None = None

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
        frame[self.target_name] = self.y
        return frame

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

    `y = 10 sin(π x1 x2) + 20 (x3 − 0.5)² + 10 x4 + 5 x5 + noise · ε` with ten features
    `x1..x10` independent and uniform on `[0, 1]` and `ε ~ N(0, 1)`; `x6..x10` do not
    enter `y`, which makes it a standard check that a sensitivity analysis finds
    irrelevant inputs. Data are not standardised (`bounds` are the sampling box).

    **Arguments:**

    - `n`: number of samples (at least 1).
    - `key`: a `jax.random` key.
    - `noise`: standard deviation of the additive Gaussian noise (non-negative).

    **Returns:**

    A `Dataset` with `X` of shape `(n, 10)` and `y` of shape `(n,)`, `float32`.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}.")
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
        feature_names=tuple(f"x{i}" for i in range(1, 11)),
        target_name="y",
        description=(
            "Friedman #1: y = 10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5 + noise, "
            f"x ~ U[0, 1]^10 (x6..x10 irrelevant), noise std {noise}."
        ),
        bounds=np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (10, 1)),
    )


def friedman1_function(X: Any) -> jax.Array:
    """The noiseless Friedman #1 response for inputs of shape `(N, ≥5)` (columns 6+ unused)."""
    X = jnp.asarray(X)
    if X.ndim != 2 or X.shape[1] < 5:
        raise ValueError(f"`X` must have shape (N, >=5), got {X.shape}.")
    x1, x2, x3, x4, x5 = (X[:, i] for i in range(5))
    return 10 * jnp.sin(jnp.pi * x1 * x2) + 20 * (x3 - 0.5) ** 2 + 10 * x4 + 5 * x5


def _split_indices(n: int, test_fraction: float, key) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(test_fraction, float | int) or not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test > n - 1:
        raise ValueError(
            f"`test_fraction`={test_fraction} of {n} rows leaves an empty train or test set."
        )
    perm = np.asarray(jax.random.permutation(key, n))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def train_test_split(
    data: Dataset | Sequence[Any], test_fraction: float = 0.2, *, key: PRNGKeyArray
) -> tuple[Any, Any]:
    """Split a data set (or aligned arrays) into random train and test parts.

    **Arguments:**

    - `data`: a `Dataset`, or a sequence of arrays with the same number of rows
        (e.g. `(X, y)`).
    - `test_fraction`: fraction of rows in the test part, in `(0, 1)`; rounded to a whole
        number of rows, at least one in each part.
    - `key`: a `jax.random` key choosing the rows.

    **Returns:**

    `(train, test)`: two `Dataset`s with the same metadata (standardisation constants are
    those of the full data), or two tuples of arrays in the order given. Rows keep their
    original order within each part.
    """
    if isinstance(data, Dataset):
        train_idx, test_idx = _split_indices(len(data), test_fraction, key)
        return (
            dataclasses.replace(data, X=data.X[train_idx], y=data.y[train_idx]),
            dataclasses.replace(data, X=data.X[test_idx], y=data.y[test_idx]),
        )
    if not isinstance(data, list | tuple) or len(data) == 0:
        raise TypeError(
            "`data` must be a jacsens.datasets.Dataset or a non-empty sequence of arrays, "
            f"got {type(data).__name__}."
        )
    rows = [np.shape(a)[0] if np.ndim(a) > 0 else None for a in data]
    if any(r is None for r in rows) or len(set(rows)) != 1:
        raise ValueError(
            f"The arrays in `data` must have the same number of rows, got shapes "
            f"{[np.shape(a) for a in data]}."
        )
    train_idx, test_idx = _split_indices(rows[0], test_fraction, key)
    return tuple(a[train_idx] for a in data), tuple(a[test_idx] for a in data)
