"""Multi-output results: `output=None` aggregates by the root mean square over outputs
(with a delta-method standard error), `output=` selects one, and tables name the output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.colors import to_rgba

import jacsens
from jacsens import plot

DTYPES = [jnp.float32, jnp.float64]
W = np.array([[3.0, -1.0, 0.5, 0.0], [0.0, 2.0, -4.0, 1.0], [1.0, 1.0, 1.0, -2.0]])


def linear_result(dtype):
    """`y = W x`: every derivative is exactly `W` (standard errors 0)."""
    X = jax.random.normal(jax.random.key(0), (40, 4), dtype)
    Wd = jnp.asarray(W, dtype)
    return jacsens.sensitivity(lambda x: Wd @ x, X, progress=False)


def tanh_result(dtype, n=300):
    X = jax.random.normal(jax.random.key(1), (n, 4), dtype)
    Wd = jnp.asarray(W, dtype)
    return jacsens.sensitivity(lambda x: jnp.tanh(Wd @ x), X, progress=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_aggregate_is_rms_over_outputs(dtype):
    r = linear_result(dtype)
    rms = np.sqrt(np.mean(W**2, axis=0))
    rtol = 1e-6 if dtype == jnp.float32 else 1e-13
    for by in ("mean_abs", "dgsm", "max_abs", "mean"):
        want = rms if by != "dgsm" else np.sqrt(np.mean(W**4, axis=0))
        np.testing.assert_allclose(r.values(by), want, rtol=rtol)
        np.testing.assert_allclose(r.values(by, output=None), want, rtol=rtol)
    order = np.argsort(-rms, kind="stable")
    assert r.ranking() == [f"x{i}" for i in order] == r.ranking(output=None)
    assert r.ranking(output="y1") == ["x2", "x1", "x3", "x0"]
    assert r.ranking(output=1) == r.ranking(output="y1")
    np.testing.assert_allclose(r.values("mean", output="y1"), W[1], rtol=rtol)
    np.testing.assert_array_equal(r.se("mean_abs"), np.zeros(4))  # linear: exact
    assert r.se("max_abs") is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_aggregate_se_is_the_delta_method(dtype):
    """The delta-method SE of A = sqrt(mean_o v_o²) agrees with the first-order change
    of A under a perturbation of each v_o by its own SE, combined in quadrature, computed
    by finite differences on the per-output values."""
    r = tanh_result(dtype)
    v, se = r.mean_abs, r.mean_abs_se
    A = np.sqrt(np.mean(v**2, axis=0))
    h = 1e-6
    parts = []
    for o in range(r.n_out):
        vp = v.copy()
        vp[o] += h * se[o]
        parts.append((np.sqrt(np.mean(vp**2, axis=0)) - A) / h)
    fd = np.sqrt(np.sum(np.square(parts), axis=0))
    np.testing.assert_allclose(r.se("mean_abs"), fd, rtol=1e-5)
    assert np.all(r.se("mean_abs") > 0)


def test_single_output_none_is_that_output():
    X = jax.random.normal(jax.random.key(2), (30, 3))
    r = jacsens.sensitivity(lambda x: -2.0 * x[0] + x[1] ** 2, X, progress=False)
    np.testing.assert_array_equal(r.values("mean"), r.values("mean", 0))  # signed, not RMS
    assert r.values("mean")[0] == pytest.approx(-2.0, rel=1e-13)
    assert r.output_label() == "y" and r.ranked_frame()["output"].unique().tolist() == ["y"]


def test_tables_name_their_output():
    r = linear_result(jnp.float64)
    agg = r.ranked_frame()
    assert agg["output"].unique().tolist() == ["RMS over 3 outputs"]
    assert agg["feature"].tolist() == r.ranking()
    assert agg["rank"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(agg["mean_abs"], np.sort(np.sqrt(np.mean(W**2, 0)))[::-1])
    one = r.ranked_frame(output="y2", by="dgsm")
    assert one["output"].unique().tolist() == ["y2"] and "dgsm_se" in one.columns
    assert r.ranked_frame(by="max_abs").columns.tolist() == ["output", "rank", "feature", "max_abs"]
    frame = r.to_frame()
    assert frame["output"].tolist() == [f"y{o}" for o in range(3) for _ in range(4)]
    with pytest.raises(ValueError, match="Unknown `output` 'z'"):
        r.ranking(output="z")


def test_bar_plot_aggregates_and_says_so():
    r = linear_result(jnp.float64)
    ax = r.plot("bar").axes[0]
    rms = np.sqrt(np.mean(W**2, axis=0))
    widths = [p.get_width() for p in ax.patches]
    np.testing.assert_allclose(widths, np.sort(rms)[::-1], rtol=1e-13)
    assert ax.get_title().split("\n")[0] == "Sensitivity, RMS over 3 outputs"
    assert {p.get_facecolor() for p in ax.patches} == {to_rgba("tab:blue")}  # no sign
    one = plot.sensitivity_bar(r, output="y1").axes[0]
    assert one.get_title().split("\n")[0] == "Sensitivity of y1"
    np.testing.assert_allclose(
        sorted(p.get_width() for p in one.patches), sorted(np.abs(W[1])), rtol=1e-13
    )
