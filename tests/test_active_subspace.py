"""active_subspace against closed forms and exact numpy references."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import jacsens

from helpers import assert_close

A_RIDGE = np.array([1.0, -2.0, 0.5, 0.0, 1.5])
SYM = np.array(
    [
        [2.0, 0.5, 0.0, -0.3],
        [0.5, 1.0, 0.2, 0.0],
        [0.0, 0.2, -1.5, 0.4],
        [-0.3, 0.0, 0.4, 0.3],
    ]
)


def ridge(x):
    return jnp.sin(x @ jnp.asarray(A_RIDGE, x.dtype))


def quadratic(x):
    return x @ (jnp.asarray(SYM, x.dtype) @ x)


def _tol(dtype):
    return 1e-12 if dtype == jnp.float64 else 2e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_ridge_exact_on_fixed_data(dtype):
    X = np.random.default_rng(0).normal(size=(700, 5))
    r = jacsens.active_subspace(
        ridge, X.astype(dtype), chunk_size=256, n_bootstrap=0, progress=False
    )
    # ∇f = g'(aᵀx) a: C = mean(cos²(aᵀx)) a aᵀ exactly, rank one
    Xd = X.astype(dtype).astype(np.float64)
    C = np.mean(np.cos(Xd @ A_RIDGE) ** 2) * np.outer(A_RIDGE, A_RIDGE)
    assert r.n == 700 and r.matrix.dtype == np.float64
    assert_close(r.matrix, C, _tol(dtype) * np.abs(C).max())
    lam = r.eigenvalues
    assert_close(lam[0], np.trace(C), _tol(dtype) * lam[0])
    assert np.all(np.abs(lam[1:]) < 10 * _tol(dtype) * lam[0])
    w = r.eigenvectors[:, 0]
    assert_close(np.abs(w @ A_RIDGE) / np.linalg.norm(A_RIDGE), 1.0, 1e-6)
    # k = 1: the scores are the diagonal of C (all of the variation is in one direction)
    assert_close(r.activity_scores(1), np.diag(C), 10 * _tol(dtype) * np.abs(C).max())
    assert r.suggested_dimension == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_ridge_eigenvalue_closed_form_on_normal_inputs(getkey, dtype):
    # x ~ N(0, I): aᵀx ~ N(0, s²), E[cos²(aᵀx)] = (1 + exp(-2 s²)) / 2; λ₁ = that · ‖a‖²
    s2 = float(A_RIDGE @ A_RIDGE)
    exact = (1 + math.exp(-2 * s2)) / 2 * s2
    r = jacsens.active_subspace(
        ridge, jacsens.normal(np.zeros(5), 1.0, 20_000, getkey(), dtype=dtype), progress=False
    )
    lam, se = r.eigenvalues[0], r.eigenvalues_se[0]
    assert 0 < se < 0.05 * exact
    assert abs(lam - exact) < 4 * se, (lam, exact, se)
    lo, hi = r.eigenvalues_ci()
    assert lo[0] < lam < hi[0]
    # the estimated direction is a up to sign, and the bootstrap agrees it is well defined
    assert_close(abs(r.eigenvectors[:, 0] @ A_RIDGE) / math.sqrt(s2), 1.0, 1e-5)
    assert r.subspace_distance()["high"][0] < 1e-3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_quadratic_is_4_A_squared(getkey, dtype):
    # f = xᵀAx, ∇f = 2Ax, C = 4 A E[xxᵀ] A = 4A² for x ~ N(0, I)
    exact = np.sort(np.linalg.eigvalsh(4 * SYM @ SYM))[::-1]
    r = jacsens.active_subspace(
        quadratic,
        jacsens.normal(np.zeros(4), 1.0, 40_000, getkey(), dtype=dtype),
        n_bootstrap=200,
        progress=False,
    )
    lam, se = r.eigenvalues, r.eigenvalues_se
    assert np.all(se > 0) and np.all(se < 0.05 * exact)
    assert np.all(np.abs(lam - exact) < 4 * se), (lam, exact, se)


def test_quadratic_exact_on_fixed_data():
    X = np.random.default_rng(1).normal(size=(300, 4))
    r = jacsens.active_subspace(quadratic, X, chunk_size=64, n_bootstrap=0, progress=False)
    C = 4 * SYM @ (X.T @ X / len(X)) @ SYM
    assert_close(r.matrix, C, 1e-12 * np.abs(C).max())
    assert_close(r.eigenvalues, np.sort(np.linalg.eigvalsh(C))[::-1], 1e-11 * np.abs(C).max())


def test_bootstrap_does_not_depend_on_chunking():
    X = np.random.default_rng(2).normal(size=(500, 4))
    runs = [
        jacsens.active_subspace(quadratic, X, chunk_size=c, n_bootstrap=20, progress=False)
        for c in (64, 500)
    ]
    scale = np.abs(runs[0].boot_total).max()
    assert_close(runs[0].boot_total, runs[1].boot_total, 1e-12 * scale)
    assert_close(runs[0].boot_count, runs[1].boot_count, 0.0)
    # Poisson(1) weights: the replicate counts scatter around n with sd sqrt(n)
    counts = runs[0].boot_count
    assert abs(counts.mean() - 500) < 4 * math.sqrt(500 / 20) and counts.std() > 5


def test_outputs_and_metric():
    B = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])

    def two(x):
        return jnp.stack([jnp.sin(x @ jnp.asarray(B[0])), (x @ jnp.asarray(B[1])) ** 2])

    X = np.random.default_rng(3).normal(size=(200, 3))
    J = np.stack(
        [np.cos(X @ B[0])[:, None] * B[0], 2 * (X @ B[1])[:, None] * B[1]], axis=1
    )  # (n, 2, 3)
    C = [np.einsum("ni,nj->ij", J[:, o], J[:, o]) / len(X) for o in range(2)]
    kw = dict(chunk_size=64, n_bootstrap=0, progress=False)
    tol = 1e-12 * max(np.abs(c).max() for c in C)
    assert_close(jacsens.active_subspace(two, X, **kw).matrix, C[0] + C[1], tol)
    r1 = jacsens.active_subspace(two, X, output=1, output_names=["a", "b"], **kw)
    assert_close(r1.matrix, C[1], tol)
    assert r1.target == "output 'b'"
    assert_close(
        jacsens.active_subspace(two, X, metric=[2.0, 3.0], **kw).matrix, 2 * C[0] + 3 * C[1], tol
    )
    M = np.array([[1.0, 0.5], [0.5, 1.0]])
    want = np.einsum("npi,pq,nqj->ij", J, M, J) / len(X)
    assert_close(jacsens.active_subspace(two, X, metric=M, **kw).matrix, want, tol)
    with pytest.raises(ValueError, match="`output` or `metric`"):
        jacsens.active_subspace(two, X, output=0, metric=[1.0, 1.0], **kw)
    with pytest.raises(ValueError, match="`metric` must have shape"):
        jacsens.active_subspace(two, X, metric=[1.0, 1.0, 1.0], **kw)
    with pytest.raises(ValueError, match="positive semi-definite"):
        jacsens.active_subspace(two, X, metric=[[1.0, 2.0], [2.0, 1.0]], **kw)
    with pytest.raises(ValueError, match="n_bootstrap"):
        jacsens.active_subspace(two, X, n_bootstrap=-1, progress=False)


def test_nan_rows_omitted_and_problem_names(getkey):
    X = np.random.default_rng(4).normal(size=(100, 4))
    X[[3, 50]] = np.nan
    r = jacsens.active_subspace(
        quadratic, X, nan_policy="omit", chunk_size=32, n_bootstrap=0, progress=False
    )
    good = np.delete(X, [3, 50], axis=0)
    assert r.n == 98 and r.n_omitted == 2
    assert_close(r.matrix, 4 * SYM @ (good.T @ good / 98) @ SYM, 1e-12 * 50)
    with pytest.raises(ValueError, match="sample 3"):
        jacsens.active_subspace(quadratic, X, chunk_size=32, n_bootstrap=0, progress=False)
    problem = {"num_vars": 4, "names": ["a", "b", "c", "d"], "bounds": [[-1, 1]] * 4}
    r = jacsens.active_subspace(
        quadratic, jacsens.sobol(problem, 256, getkey(), replicates=2), progress=False
    )
    assert r.feature_names == ("a", "b", "c", "d")


def test_plot_returns_figure():
    import matplotlib.figure

    X = np.random.default_rng(5).normal(size=(200, 4))
    r = jacsens.active_subspace(quadratic, X, n_bootstrap=10, progress=False)
    fig = r.plot(n_directions=2)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3
    assert fig.axes[1].get_title() == "direction 1"
