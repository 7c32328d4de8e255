"""SALib problem dicts, quasi-Monte Carlo samplers and the normalised DGSM."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jacsens
from jacsens._sensitivity._sources import marginal_transform, parse_problem

from helpers import assert_close

PI = math.pi
ISHIGAMI_A, ISHIGAMI_B = 7.0, 0.1
ISHIGAMI_BOUNDS = [[-PI, PI]] * 3


def ishigami(x):
    a, b = ISHIGAMI_A, ISHIGAMI_B
    return jnp.sin(x[0]) + a * jnp.sin(x[1]) ** 2 + b * x[2] ** 4 * jnp.sin(x[0])


def ishigami_dgsm(a=ISHIGAMI_A, b=ISHIGAMI_B):
    """ν_i = E[(∂f/∂x_i)²] for x ~ U(-π, π)³, with E[x⁴] = π⁴/5, E[x⁶] = π⁶/7, E[x⁸] = π⁸/9
    and E[cos² x] = E[sin² x] = E[sin² 2x] = 1/2:
    ∂f/∂x1 = cos x1 (1 + b x3⁴)  → ν1 = (1 + 2bπ⁴/5 + b²π⁸/9) / 2
    ∂f/∂x2 = a sin 2x2           → ν2 = a²/2
    ∂f/∂x3 = 4b x3³ sin x1       → ν3 = 16b² (π⁶/7) / 2 = 8b²π⁶/7"""
    return np.array(
        [
            (1 + 2 * b * PI**4 / 5 + b**2 * PI**8 / 9) / 2,
            a**2 / 2,
            8 * b**2 * PI**6 / 7,
        ]
    )


ISHIGAMI_VAR = ISHIGAMI_A**2 / 8 + ISHIGAMI_B * PI**4 / 5 + ISHIGAMI_B**2 * PI**8 / 18 + 0.5


def test_ishigami_closed_forms_against_quadrature():
    # tensor Gauss-Legendre (exact to round-off for these trigonometric-polynomial
    # integrands) over derivatives from autodiff, not from the hand-derived formulas
    t, w = np.polynomial.legendre.leggauss(48)
    t, w = PI * t, PI * w / (2 * PI)  # nodes on [-π, π], weights of the uniform density
    grid = np.stack(np.meshgrid(t, t, t, indexing="ij"), axis=-1).reshape(-1, 3)
    weight = np.einsum("i,j,k->ijk", w, w, w).reshape(-1)
    X = jnp.asarray(grid, jnp.float64)
    G = np.asarray(jax.vmap(jax.grad(ishigami))(X))
    assert_close(weight @ G**2, ishigami_dgsm(), 1e-11 * ishigami_dgsm().max())
    y = np.asarray(jax.vmap(ishigami)(X))
    mean = weight @ y
    assert_close(mean, ISHIGAMI_A / 2, 1e-12)
    assert_close(weight @ (y - mean) ** 2, ISHIGAMI_VAR, 1e-11 * ISHIGAMI_VAR)


def test_ishigami_sobol_error_and_honest_standard_errors(getkey):
    nu = ishigami_dgsm()
    r_qmc = jacsens.sensitivity(
        ishigami, jacsens.sobol(ISHIGAMI_BOUNDS, 2**14, getkey(), replicates=8), progress=False
    )
    r_mc = jacsens.sensitivity(
        ishigami, jacsens.uniform(ISHIGAMI_BOUNDS, 2**14, getkey()), progress=False
    )
    err_qmc = np.abs(r_qmc.dgsm[0] - nu)
    err_mc = np.abs(r_mc.dgsm[0] - nu)
    assert np.all(err_qmc / nu < 1e-3) and np.max(err_mc / nu) > 10 * np.max(err_qmc / nu)
    # the replicate spread is the RQMC error scale: far below the i.i.d. standard error,
    # and the actual error within a few of it
    assert len(r_qmc.replicates) == 8 and sum(r.n for r in r_qmc.replicates) == 2**14
    assert np.all(r_qmc.dgsm_se[0] < r_mc.dgsm_se[0] / 10)
    assert np.all(err_qmc < 5 * r_qmc.dgsm_se[0]), (err_qmc, r_qmc.dgsm_se)
    assert np.all(err_mc < 5 * r_mc.dgsm_se[0])
    # the pooled estimate is the mean of the replicate estimates (equal sizes)
    reps = np.stack([r.sq_mean for r in r_qmc.replicates])
    assert_close(r_qmc.dgsm, reps.mean(axis=0), 1e-13 * nu.max())
    assert_close(r_qmc.dgsm_se, reps.std(axis=0, ddof=1) / math.sqrt(8), 1e-13 * nu.max())


def test_rqmc_standard_error_matches_spread_of_repeated_runs(getkey):
    def quad(x):
        return jnp.sum(jnp.asarray([1.0, 2.0], x.dtype) * x**3)

    runs = [
        jacsens.sensitivity(
            quad, jacsens.sobol([[0.0, 1.0]] * 2, 512, getkey(), replicates=8), progress=False
        )
        for _ in range(16)
    ]
    values = np.stack([r.dgsm[0] for r in runs])
    reported = np.sqrt(np.mean([r.dgsm_se[0] ** 2 for r in runs], axis=0))
    ratio = values.std(axis=0, ddof=1) / reported
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


@pytest.mark.parametrize("method", ["sobol", "halton"])
def test_rows_do_not_depend_on_reads_or_chunks(getkey, method):
    make = getattr(jacsens, method)
    s = make([[0.0, 1.0], [-2.0, 2.0], [5.0, 6.0]], 96, getkey(), replicates=3)
    whole = s.rows(0, 96)
    pieces = np.concatenate([s.rows(0, 10), s.rows(10, 50), s.rows(60, 36)])
    assert_close(pieces, whole, 0.0)
    assert_close(s.rows(70, 5), whole[70:75], 0.0)  # a jump: a fresh, fast-forwarded engine
    # scrambles differ, and each is a low-discrepancy set: per replicate, every coordinate
    # of 32 Sobol' points hits each of the 32 equal bins once
    u = s.unit_rows(0, 96)
    assert not np.allclose(u[:32], u[32:64])
    if method == "sobol":
        for rep in range(3):
            bins = np.floor(u[32 * rep : 32 * (rep + 1)] * 32).astype(int)
            assert all(sorted(bins[:, j]) == list(range(32)) for j in range(3))
    r = [jacsens.sensitivity(jnp.sum, s, chunk_size=c, progress=False).mean_se for c in (7, 32, 96)]
    assert_close(r[0], r[1], 1e-14) and assert_close(r[0], r[2], 1e-14)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_problem_marginals_match_scipy_ppfs(getkey, dtype):
    problem = {
        "num_vars": 5,
        "names": ["u", "lu", "n", "ln", "t"],
        "bounds": [[1.0, 3.0], [0.1, 10.0], [2.0, 0.5], [0.0, 0.3], [1.0, 5.0, 0.25]],
        "dists": ["unif", "logunif", "norm", "lognorm", "triang"],
    }
    spec = parse_problem(problem)
    u = np.random.default_rng(0).uniform(size=(1000, 5))
    x = marginal_transform(np, spec.codes, spec.params, u, scipy.stats.norm.ppf(u))
    # the distributions SALib's scale_samples gives these rows
    want = np.stack(
        [
            scipy.stats.uniform.ppf(u[:, 0], loc=1.0, scale=2.0),
            scipy.stats.loguniform.ppf(u[:, 1], 0.1, 10.0),
            scipy.stats.norm.ppf(u[:, 2], loc=2.0, scale=0.5),
            scipy.stats.lognorm.ppf(u[:, 3], s=0.3, scale=math.exp(0.0)),
            scipy.stats.triang.ppf(u[:, 4], c=0.25, loc=1.0, scale=4.0),
        ],
        axis=1,
    )
    assert_close(x, want, 1e-12 * np.abs(want).max())
    # the device sampler draws the same marginals: means within 5 standard errors
    means = np.array(
        [2.0, 9.9 / math.log(100.0), 2.0, math.exp(0.045), 8.0 / 3]
    )  # triang: (a+b+mode)/3
    for method in ("random", "sobol"):
        s = jacsens.from_problem(problem, 8192, getkey(), method=method, dtype=dtype)
        rows = np.asarray(s.rows(0, 8192), np.float64)
        assert rows.dtype == np.float64 and s.dtype == dtype
        se = rows.std(axis=0) / math.sqrt(8192)
        assert np.all(np.abs(rows.mean(axis=0) - means) < 5 * se), method
        assert np.all(rows[:, 4] >= 1.0) and np.all(rows[:, 4] <= 5.0)


def test_problem_names_errors_and_uniform(getkey):
    problem = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": ISHIGAMI_BOUNDS}
    r = jacsens.sensitivity(ishigami, jacsens.uniform(problem, 64, getkey()), progress=False)
    assert r.feature_names == ("x1", "x2", "x3")
    with pytest.raises(ValueError, match="from_problem"):
        jacsens.uniform({**problem, "dists": ["unif", "norm", "unif"]}, 64, getkey())
    with pytest.raises(ValueError, match="truncnorm"):
        jacsens.from_problem({**problem, "dists": ["truncnorm"] * 3}, 64, getkey())
    with pytest.raises(ValueError, match="num_vars=4"):
        jacsens.from_problem({**problem, "num_vars": 4}, 64, getkey())
    with pytest.raises(ValueError, match=r"problem\['bounds'\]\[1\].*two-value"):
        jacsens.from_problem(
            {"num_vars": 2, "bounds": [[0, 1], [3, 0.5]], "dists": ["unif", "triang"]},
            64,
            getkey(),
        )
    with pytest.raises(ValueError, match=r"problem\['bounds'\]\[0\].*sd > 0"):
        jacsens.from_problem({"num_vars": 1, "bounds": [[0, -1]], "dists": ["norm"]}, 8, getkey())
    with pytest.raises(ValueError, match="replicates"):
        jacsens.sobol(ISHIGAMI_BOUNDS, 100, getkey(), replicates=8)
    with pytest.warns(UserWarning, match="powers of two"):
        jacsens.sobol(ISHIGAMI_BOUNDS, 96, getkey(), replicates=8)
    with pytest.raises(TypeError, match="from_problem"):
        jacsens.sensitivity(ishigami, problem)


def test_dgsm_normalised_salib_formula_and_delta_method(getkey, tmp_path):
    problem = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": ISHIGAMI_BOUNDS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = jacsens.from_problem(problem, 2**12, getkey(), method="sobol", replicates=4)
    r = jacsens.sensitivity(ishigami, s, progress=False)
    nd = r.dgsm_normalised(problem, ISHIGAMI_VAR, output_variance_se=0.5)
    exact = ishigami_dgsm() * (2 * PI) ** 2 / (PI**2 * ISHIGAMI_VAR)
    assert_close(nd.value[0], r.dgsm[0] * 4 / ISHIGAMI_VAR, 1e-14 * exact.max())
    assert np.all(np.abs(nd.value[0] - exact) < 1e-2 * exact)
    rel = np.sqrt((r.dgsm_se[0] / r.dgsm[0]) ** 2 + (0.5 / ISHIGAMI_VAR) ** 2)
    assert_close(nd.se[0], nd.value[0] * rel, 1e-14 * exact.max())
    assert_close(nd.high - nd.value, 1.959963984540054 * nd.se, 1e-9 * exact.max())
    assert_close(nd.value, r.sobol_bound(ISHIGAMI_BOUNDS, ISHIGAMI_VAR), 0.0)
    with pytest.raises(ValueError, match="uniform inputs only"):
        r.dgsm_normalised({**problem, "dists": ["norm"] * 3}, 1.0)
    with pytest.raises(ValueError, match="differ"):
        r.dgsm_normalised({**problem, "names": ["a", "b", "c"]}, 1.0)
    # replicates survive save/load and merge replicate by replicate
    r.save(tmp_path / "r.npz")
    back = jacsens.SensitivityResult.load(tmp_path / "r.npz")
    assert len(back.replicates) == 4
    assert_close(back.dgsm_se, r.dgsm_se, 0.0)
    both = r.merge(back)
    assert both.n == 2 * r.n and len(both.replicates) == 4
    with pytest.raises(ValueError, match="replicates"):
        r.merge(
            jacsens.sensitivity(ishigami, jacsens.uniform(problem, 64, getkey()), progress=False)
        )


def test_one_replicate_has_no_standard_error(getkey):
    r = jacsens.sensitivity(
        ishigami, jacsens.sobol(ISHIGAMI_BOUNDS, 256, getkey(), replicates=1), progress=False
    )
    assert np.all(np.isnan(r.dgsm_se)) and np.all(np.isfinite(r.dgsm))


def test_checkpoint_resume_with_replicates(getkey, tmp_path):
    s = jacsens.sobol(ISHIGAMI_BOUNDS, 1024, getkey(), replicates=4)
    full = jacsens.sensitivity(ishigami, s, chunk_size=128, progress=False)
    ck = tmp_path / "ck.npz"
    # a partial run: the first 3 chunks only, saved as a checkpoint, then resumed
    from jacsens._sensitivity import _run

    real, calls = _run.Run._finish, []

    def stop_after_three(self, *args):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(self, *args)

    _run.Run._finish = stop_after_three
    try:
        with pytest.raises(KeyboardInterrupt):
            jacsens.sensitivity(ishigami, s, chunk_size=128, checkpoint=ck, progress=False)
    finally:
        _run.Run._finish = real
    partial = jacsens.SensitivityResult.load(ck)
    assert partial.n == 384 and len(partial.replicates) == 4
    resumed = jacsens.sensitivity(ishigami, s, chunk_size=128, checkpoint=ck, progress=False)
    assert_close(resumed.dgsm, full.dgsm, 0.0)
    assert_close(resumed.dgsm_se, full.dgsm_se, 0.0)


def test_float32_sobol_sensitivity(getkey):
    nu = ishigami_dgsm()
    s = jacsens.sobol(ISHIGAMI_BOUNDS, 2**12, getkey(), replicates=4, dtype=jnp.float32)
    assert s.rows(0, 4).dtype == np.float32
    r = jacsens.sensitivity(ishigami, s, progress=False)
    assert np.all(np.abs(r.dgsm[0] - nu) < 5 * r.dgsm_se[0] + 1e-5 * nu)


def test_qmc_on_the_device_mesh(getkey):
    devices = jax.devices()
    s = jacsens.sobol(ISHIGAMI_BOUNDS, 512, getkey(), replicates=2)
    one = jacsens.sensitivity(ishigami, s, chunk_size=64, progress=False)
    many = jacsens.sensitivity(ishigami, s, chunk_size=64, devices=devices, progress=False)
    assert_close(many.dgsm, one.dgsm, 1e-13 * one.dgsm.max())
    assert_close(many.dgsm_se, one.dgsm_se, 1e-12 * one.dgsm.max())


def test_sobol_scramble_is_a_linear_scramble_of_scipys_sequence():
    from scipy.stats import qmc

    from jacsens._sensitivity._qmc import _DIGITS, _sobol_points, _sobol_tables

    # with L = I and no shift the tables give scipy's unscrambled points (Gray-code order)
    class Identity:
        def integers(self, low, high, size, dtype):
            return np.zeros(size, dtype)

    tables, shift = _sobol_tables(4, 512, Identity())
    assert shift.tolist() == [0] * 4 and tables.shape == (2, 256, 4)  # 9 index bits
    u = _sobol_points((tables, shift), 0, 512) - 0.5 * 2.0**-_DIGITS
    assert_close(u, qmc.Sobol(4, scramble=False).random(512), 0.0)
    # a scramble keeps the (0, 8, 2)-net property of coordinates 0 and 1: every box of
    # 2^-a by 2^-(8-a) holds exactly one of the first 256 points (and 2 of the first 512)
    u = _sobol_points(_sobol_tables(4, 512, np.random.default_rng(3)), 0, 512)
    assert np.all((u > 0) & (u < 1))
    for a in range(9):
        box = np.floor(u[:, 0] * 2**a) * 2 ** (8 - a) + np.floor(u[:, 1] * 2 ** (8 - a))
        assert np.bincount(box[:256].astype(int), minlength=256).tolist() == [1] * 256
        assert np.bincount(box.astype(int), minlength=256).tolist() == [2] * 256
    # points by index equal points read in pieces
    t = _sobol_tables(4, 512, np.random.default_rng(3))
    assert_close(np.concatenate([_sobol_points(t, 0, 77), _sobol_points(t, 77, 435)]), u, 0.0)


@pytest.mark.parametrize("method", ["sobol", "halton"])
def test_chunks_spanning_replicates_keep_each_replicate_apart(getkey, method):
    # f = Σ x³/3: ∂f/∂x_i = x_i², so each replicate's statistics are those of its rows
    bounds = [[0.0, 1.0], [-2.0, 2.0], [5.0, 6.0]]
    s = getattr(jacsens, method)(bounds, 96, getkey(), replicates=3)
    g = s.rows(0, 96) ** 2
    runs = [
        jacsens.sensitivity(lambda x: jnp.sum(x**3) / 3, s, chunk_size=c, progress=False)
        for c in (7, 32, 64, 96)
    ]
    runs.append(
        jacsens.sensitivity(
            lambda x: jnp.sum(x**3) / 3, s, chunk_size=7, devices=jax.devices(), progress=False
        )
    )
    for r in runs:
        assert r.n == 96 and len(r.replicates) == 3
        for k, rep in enumerate(r.replicates):
            part = g[32 * k : 32 * (k + 1)]
            assert rep.n == 32
            assert_close(rep.mean[0], part.mean(axis=0), 1e-14)
            assert_close(rep.sq_mean[0], (part**2).mean(axis=0), 1e-14)
            assert_close(rep.max_abs[0], np.abs(part).max(axis=0), 1e-15)
        assert_close(r.dgsm[0], (g**2).mean(axis=0), 1e-14)
        reps = np.stack([(g[32 * k : 32 * (k + 1)] ** 2).mean(axis=0) for k in range(3)])
        assert_close(r.dgsm_se[0], reps.std(axis=0, ddof=1) / math.sqrt(3), 1e-12)


def test_replicate_median_and_its_order_statistic_interval(getkey):
    nu = ishigami_dgsm()
    s = jacsens.sobol(ISHIGAMI_BOUNDS, 2**12, getkey(), replicates=8)
    r = jacsens.sensitivity(ishigami, s, progress=False)
    reps = np.sort(np.stack([rep.sq_mean for rep in r.replicates]), axis=0)
    med = r.replicate_median("dgsm")
    assert_close(med.value, (reps[3] + reps[4]) / 2, 0.0)
    # R = 8, level 0.9: k = 2, coverage 1 - 2 (1 + 8) / 256
    assert_close(med.low, reps[1], 0.0) and assert_close(med.high, reps[6], 0.0)
    assert med.coverage == 1 - 18 / 256
    assert np.all((med.low[0] <= nu) & (nu <= med.high[0])), (med, nu)
    assert np.all(np.abs(med.value[0] - nu) < 1e-3 * nu)
    # a looser level takes inner order statistics; R = 4 cannot reach 0.9: k = 1, 7/8
    assert r.replicate_median("dgsm", level=0.5).coverage == 1 - 74 / 256
    means = np.sort(np.stack([rep.mean for rep in r.replicates]), axis=0)
    assert_close(r.replicate_median("mean").value, (means[3] + means[4]) / 2, 0.0)
    r4 = jacsens.sensitivity(
        ishigami, jacsens.sobol(ISHIGAMI_BOUNDS, 256, getkey(), replicates=4), progress=False
    )
    m4 = r4.replicate_median("std")
    stds = np.sort(np.stack([rep.std for rep in r4.replicates]), axis=0)
    assert m4.coverage == 7 / 8
    assert_close(m4.low, stds[0], 0.0) and assert_close(m4.high, stds[3], 0.0)
    with pytest.raises(ValueError, match="statistic"):
        r.replicate_median("max_abs")
    with pytest.raises(ValueError, match="level"):
        r.replicate_median(level=1.0)
    plain = jacsens.sensitivity(
        ishigami, jacsens.uniform(ISHIGAMI_BOUNDS, 64, getkey()), progress=False
    )
    with pytest.raises(ValueError, match="needs replicates"):
        plain.replicate_median()
