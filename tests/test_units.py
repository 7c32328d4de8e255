"""Units: `rescale`/`scaled` against sensitivities of the reparametrised model, and the
near-constant feature flag."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens._sensitivity._result import report_scaling

DTYPES = [jnp.float32, jnp.float64]
STATS = ("mean", "mean_se", "mean_abs", "mean_abs_se", "dgsm", "dgsm_se", "std", "std_se")
A = np.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]])


def model_for(dtype):
    Ad = jnp.asarray(A, dtype)
    return lambda x: jnp.tanh(Ad @ x) + x[0] * x[2]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rescale_equals_the_reparametrised_model(dtype):
    """With x = s ⊙ z and y = t ỹ, the sensitivities of z -> f(s ⊙ z) / t on Z = X / s
    are those of f on X rescaled by s_i / t_o, every statistic and interaction."""
    f = model_for(dtype)
    s = np.array([0.5, 3.0, 1e-3])
    t = np.array([2.0, 0.25])
    X = jax.random.normal(jax.random.key(0), (200, 3), dtype) * jnp.asarray(s, dtype)
    r = jacsens.sensitivity(f, X, interactions=True, progress=False)
    sd, td = jnp.asarray(s, dtype), jnp.asarray(t, dtype)
    ref = jacsens.sensitivity(lambda z: f(sd * z) / td, X / sd, interactions=True, progress=False)
    got = r.rescale(s, t)
    rtol = 1e-4 if dtype == jnp.float32 else 1e-11
    for name in (*STATS, "max_abs", "interactions"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=rtol, atol=0)
    # the rescaled accumulators still merge and save
    both = got.merge(got)
    np.testing.assert_allclose(both.mean, got.mean, rtol=1e-15)


def test_scaled_std_range_none():
    f = model_for(jnp.float64)
    X = jax.random.uniform(jax.random.key(1), (150, 3), jnp.float64) * jnp.array([1.0, 10.0, 0.1])
    r = jacsens.sensitivity(f, X, progress=False)
    Xn = np.asarray(X)
    sd, rng = Xn.std(axis=0), Xn.max(axis=0) - Xn.min(axis=0)
    np.testing.assert_allclose(r.scaled(X).mean_abs, r.mean_abs * sd, rtol=1e-14)
    np.testing.assert_allclose(r.scaled(X, "range").dgsm, r.dgsm * rng**2, rtol=1e-14)
    np.testing.assert_allclose(r.scaled(X, "range").std_se, r.std_se * rng, rtol=1e-14)
    assert r.scaled(X, "none") is r
    with pytest.raises(ValueError, match="`scale`"):
        r.scaled(X, "iqr")
    with pytest.raises(ValueError, match="`X` must have shape"):
        r.scaled(Xn[:, :2])
    with pytest.raises(ValueError, match="`input_scale` must be finite and >= 0"):
        r.rescale([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="`output_scale`"):
        r.rescale(1.0, [1.0, 1.0, 1.0])


def test_report_scaling_none_gives_raw_units():
    """A model on standardised data, rescaled to 'none', has the derivative of the raw
    model: for y_raw = c·x_raw, dy_raw/dx_raw = c whatever the standardisation."""
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((100, 2)) * [3.0, 0.2] + [1.0, -5.0]
    c = np.array([2.0, -7.0])
    x_mean, x_std = raw.mean(0), raw.std(0)
    y = raw @ c
    y_std = y.std()
    Xs = (raw - x_mean) / x_std
    cs = jnp.asarray(c * x_std / y_std)  # the standardised model, exactly linear
    r = jacsens.sensitivity(lambda x: cs @ x, jnp.asarray(Xs), progress=False)
    s, t, units = report_scaling(Xs, "none", x_std, y_std)
    np.testing.assert_allclose(r.rescale(s, t).mean[0], c, rtol=1e-13)
    assert units == "units of y per unit of x"
    s, t, units = report_scaling(Xs, "std", x_std, y_std)
    np.testing.assert_allclose(r.rescale(s, t).mean[0], c * x_std / y_std, rtol=1e-13)
    assert units == "standard deviations of y per standard deviation of x"
    s, t, units = report_scaling(raw, "std")  # raw data: per sd of x, in units of y
    np.testing.assert_allclose(s, x_std, rtol=1e-14)
    assert units == "units of y per standard deviation of x"


def test_near_constant_flags_rare_nonzero_columns_only():
    """1797 rows as in digits: a pixel non-zero in one row, a constant column and a
    near-constant one (1e-14 wobble) are flagged; Gaussian, uniform, a 5% binary and a
    few-level integer column are not."""
    rng = np.random.default_rng(0)
    n = 1797
    rare = np.zeros(n)
    rare[123] = 16.0
    cols = {
        "rare_pixel": rare,
        "gauss": rng.standard_normal(n),
        "uniform": rng.uniform(0, 16, n),
        "binary_5pct": (rng.uniform(size=n) < 0.05).astype(float),
        "levels": rng.integers(0, 4, n).astype(float),
        "constant": np.full(n, 3.0),
        "wobble": 1.0 + 1e-14 * rng.standard_normal(n),
    }
    X = np.stack(list(cols.values()), axis=1)
    r = jacsens.sensitivity(lambda x: jnp.sum(x**2), jnp.asarray(X[:5]), progress=False)
    r = jacsens.SensitivityResult(r.jac, None, 0, tuple(cols), r.output_names)
    assert r.near_constant(X) == ("rare_pixel", "constant", "wobble")
    assert r.near_constant(X, share=0.9) == ("rare_pixel", "binary_5pct", "constant", "wobble")
    assert r.near_constant(X.astype(np.float32)) == ("rare_pixel", "constant", "wobble")
    with pytest.raises(ValueError, match="`share` must be in \\(0, 1\\)"):
        r.near_constant(X, share=1.0)
