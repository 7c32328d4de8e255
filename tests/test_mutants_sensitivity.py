"""Sensitivity details the mutation campaign (`benchmarks/mutants.py`) found untested: the
omitted-row count of merged results, and the data fingerprint beyond its first rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens._sensitivity import _sources


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_adds_the_omitted_rows_of_both_results(getkey, dtype):
    # y = w·x: every derivative is w, so each part's statistics are exact; the rows with
    # a NaN are omitted, and the merge must account for all of them (3 + 2)
    w = np.array([1.5, -2.0, 0.5], dtype)

    def model(x):
        return jnp.dot(jnp.asarray(w), x)

    X = np.array(jax.random.normal(getkey(), (40, 3)), dtype)  # a writable copy
    X[[1, 7, 13], 0] = np.nan
    X[[25, 31], 2] = np.nan
    whole = jacsens.sensitivity(model, X, nan_policy="omit", chunk_size=8, progress=False)
    a = jacsens.sensitivity(model, X[:20], nan_policy="omit", chunk_size=8, progress=False)
    b = jacsens.sensitivity(model, X[20:], nan_policy="omit", chunk_size=8, progress=False)
    assert (a.n_omitted, b.n_omitted, whole.n_omitted) == (3, 2, 5)
    merged = a.merge(b)
    assert merged.n_omitted == 5 and merged.n == whole.n == 35
    np.testing.assert_allclose(merged.mean, w[None].astype(np.float64), rtol=1e-6)
    np.testing.assert_allclose(merged.dgsm, (w**2)[None].astype(np.float64), rtol=1e-6)


def test_array_digest_sees_every_row_of_an_array_hashed_whole(getkey):
    # below the whole-hash limit every row counts, however many rows the array has
    X = np.asarray(jax.random.normal(getkey(), (3000, 2)))
    digest = _sources.array_digest(X)
    assert digest.startswith("full:")
    for row in (0, 1023, 1024, 2047, 2048, 2999):
        X2 = X.copy()
        X2[row, 1] = np.nextafter(X2[row, 1], np.inf)  # the smallest possible edit
        assert _sources.array_digest(X2) != digest, row
    # the same contents give the same digest, as a copy or a JAX array
    assert _sources.array_digest(X.copy()) == digest
    assert _sources.array_digest(jnp.asarray(X)) == digest
