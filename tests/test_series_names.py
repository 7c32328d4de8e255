"""pandas targets in and out: a Series' name (a DataFrame's columns) names the outputs.

`fit`/`weight_grad` take targets as a Series or DataFrame; `sensitivity` and
`active_subspace` take the targets' Series/DataFrame as `output_names`, so a DataFrame
and a Series in give a `to_frame()` with the columns as features and the Series' name as
the output.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens

pd = pytest.importorskip("pandas")

DTYPES = [jnp.float32, jnp.float64]
RTOL = {jnp.float32: 2e-5, jnp.float64: 1e-12}


def _frame(dtype, n=48, cols=("a", "b", "c")):
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.normal(size=(n, len(cols))).astype(dtype), columns=list(cols))


def _mean_grad(model, X):
    """Mean ∂y/∂x over the rows by plain JAX, in float64: (n_out, n_in)."""
    J = jax.vmap(jax.jacrev(model))(jnp.asarray(np.asarray(X)))
    return np.asarray(J, np.float64).reshape(len(X), -1, X.shape[1]).mean(axis=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_on_frame_and_series_equals_fit_on_arrays(dtype):
    X = _frame(dtype)
    y = pd.Series((np.sin(X.a) + X.b).astype(dtype), name="price")
    model = jacsens.MLP(3, (4,), "scalar", key=jax.random.key(0), dtype=dtype)
    kw = dict(epochs=2, batch_size=16, key=jax.random.key(1), progress=False)
    from_pandas, _ = jacsens.fit(model, X, y, **kw)
    from_arrays, _ = jacsens.fit(model, X.to_numpy(), y.to_numpy(), **kw)
    for a, b in zip(jax.tree.leaves(from_pandas), jax.tree.leaves(from_arrays), strict=True):
        np.testing.assert_array_equal(a, b)
    g = jacsens.weight_grad(model, "mse", X, y)
    g_ref = jax.grad(
        lambda m: jnp.mean((jax.vmap(m)(jnp.asarray(X.to_numpy())) - y.to_numpy()) ** 2)
    )(model)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype] * 10, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_series_name_is_the_output_name_round_trip(dtype):
    X = _frame(dtype)
    y = pd.Series((X.a * X.b).astype(dtype), name="price")
    (X_train, y_train), _ = jacsens.datasets.train_test_split((X, y), 0.25, key=jax.random.key(2))
    assert y_train.name == "price"  # the split keeps pandas objects (by position)
    model = jacsens.MLP(3, (5,), "scalar", "tanh", key=jax.random.key(3), dtype=dtype)
    res = jacsens.sensitivity(model, X_train, output_names=y_train, progress=False)
    frame = res.to_frame()
    assert list(frame["output"]) == ["price"] * 3
    assert list(frame["feature"]) == ["a", "b", "c"]
    assert res.output_names == ("price",) and res.ranking(output="price")
    np.testing.assert_allclose(
        frame["mean"].to_numpy(), _mean_grad(model, X_train)[0], rtol=RTOL[dtype]
    )


def test_dataframe_columns_name_several_outputs():
    X = _frame(np.float64)
    Y = pd.DataFrame({"p": X.a, "q": X.b - X.c})
    model = jacsens.MLP(3, (6,), 2, "tanh", key=jax.random.key(4), dtype=jnp.float64)
    res = jacsens.sensitivity(model, X, output_names=Y, progress=False)
    assert res.output_names == ("p", "q")
    frame = res.to_frame()
    q = frame[frame["output"] == "q"]["mean"].to_numpy()
    np.testing.assert_allclose(q, _mean_grad(model, X)[1], rtol=1e-12)
    by_name = jacsens.active_subspace(
        model, X, output="q", output_names=Y, n_bootstrap=0, progress=False
    )
    by_index = jacsens.active_subspace(model, X, output=1, n_bootstrap=0, progress=False)
    np.testing.assert_allclose(by_name.eigenvalues, by_index.eigenvalues, rtol=1e-12)
    J = jax.vmap(jax.jacrev(model))(jnp.asarray(X.to_numpy()))[:, 1]
    C = np.asarray(J.T @ J / len(X))
    np.testing.assert_allclose(by_name.eigenvalues, np.linalg.eigvalsh(C)[::-1], rtol=1e-10)


def test_unnamed_series_keeps_the_default_names():
    X = _frame(np.float64)
    scalar = jacsens.MLP(3, (4,), "scalar", key=jax.random.key(5), dtype=jnp.float64)
    vector = jacsens.MLP(3, (4,), 1, key=jax.random.key(5), dtype=jnp.float64)
    unnamed = pd.Series(X.a.to_numpy())
    run = dict(output_names=unnamed, progress=False)
    assert jacsens.sensitivity(scalar, X, **run).output_names == ("y",)
    assert jacsens.sensitivity(vector, X, **run).output_names == ("y0",)
    # a Series named by a number: the name as a string
    named_0 = jacsens.sensitivity(scalar, X, output_names=unnamed.rename(0), progress=False)
    assert named_0.output_names == ("0",)


def test_series_for_several_outputs_is_refused():
    X = _frame(np.float64)
    model = jacsens.MLP(3, (4,), 3, key=jax.random.key(6), dtype=jnp.float64)
    with pytest.raises(ValueError, match=r"`output_names` must have 3 names.*got 1"):
        jacsens.sensitivity(model, X, output_names=pd.Series(X.a, name="a"), progress=False)
