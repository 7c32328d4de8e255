import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens._stats import stats_from_state_dict, stats_stack_merge, stats_state_dict

from helpers import assert_close


def _reference(g):
    """One pass over everything in float64 with numpy."""
    n = g.shape[0]
    mean = g.mean(0)
    d = g - mean
    a = np.abs(g)
    s = g * g
    return dict(
        count=n,
        mean=mean,
        m2=(d**2).sum(0),
        m3=(d**3).sum(0),
        m4=(d**4).sum(0),
        abs_mean=a.mean(0),
        abs_m2=((a - a.mean(0)) ** 2).sum(0),
        sq_mean=s.mean(0),
        sq_m2=((s - s.mean(0)) ** 2).sum(0),
        max_abs=a.max(0),
    )


def _data(seed, n, shape=(3, 4)):
    rng = np.random.default_rng(seed)
    # offset mean and heavy-ish tails so the central moments are not trivial
    return 2.0 + rng.standard_t(5, size=(n, *shape))


def _assert_state(state, ref, rtol=1e-12):
    for k, v in ref.items():
        assert_close(np.asarray(getattr(state, k)), np.asarray(v, np.float64), rtol)


def test_one_pass_matches_numpy():
    g = _data(0, 500)
    state = jacsens.stats_update(jacsens.stats_init((3, 4)), g)
    assert isinstance(state.mean, np.ndarray) and state.mean.dtype == np.float64
    _assert_state(state, _reference(g))
    assert state.n == 500


@pytest.mark.parametrize("split", [1, 137, 250, 499])
def test_merge_two_halves_equals_one_pass(split):
    g = _data(1, 500)
    a = jacsens.stats_update(jacsens.stats_init((3, 4)), g[:split])
    b = jacsens.stats_update(jacsens.stats_init((3, 4)), g[split:])
    whole = jacsens.stats_update(jacsens.stats_init((3, 4)), g)
    merged = jacsens.stats_merge(a, b)
    _assert_state(merged, _reference(g))
    for f in ("mean", "m2", "m3", "m4", "abs_mean", "sq_m2", "max_abs"):
        assert_close(getattr(merged, f), getattr(whole, f), 1e-12)


def test_many_chunks_any_grouping():
    g = _data(2, 1000)
    sizes = [1, 7, 100, 3, 250, 139, 500]
    parts, start = [], 0
    for s in sizes:
        parts.append(jacsens.stats_update(jacsens.stats_init((3, 4)), g[start : start + s]))
        start += s
    left = parts[0]
    for p in parts[1:]:
        left = jacsens.stats_merge(left, p)
    # a balanced tree of merges
    tree = parts
    while len(tree) > 1:
        tree = [
            jacsens.stats_merge(tree[i], tree[i + 1]) if i + 1 < len(tree) else tree[i]
            for i in range(0, len(tree), 2)
        ]
    ref = _reference(g)
    _assert_state(left, ref)
    _assert_state(tree[0], ref)


def test_empty_state_is_identity():
    g = _data(3, 50)
    s = jacsens.stats_update(jacsens.stats_init((3, 4)), g)
    e = jacsens.stats_init((3, 4))
    for merged in (jacsens.stats_merge(e, s), jacsens.stats_merge(s, e)):
        for f in ("count", "mean", "m2", "m4", "max_abs"):
            np.testing.assert_array_equal(getattr(merged, f), getattr(s, f))
    assert jacsens.stats_merge(e, e).count == 0


def test_mask_skips_rows_even_if_nan():
    g = _data(4, 40)
    bad = g.copy()
    bad[[3, 17]] = np.nan
    bad[25, 0, 0] = np.inf
    mask = np.ones(40, bool)
    mask[[3, 17, 25]] = False
    s = jacsens.stats_update(jacsens.stats_init((3, 4)), bad, mask)
    _assert_state(s, _reference(g[mask]))


def test_jax_state_under_jit_matches_host():
    g = _data(5, 300)

    @jax.jit
    def run(g):
        s = jacsens.stats_from_batch(g[:100])
        s = jacsens.stats_update(s, g[100:])
        return s

    s = run(jnp.asarray(g))
    assert isinstance(s.mean, jax.Array)
    _assert_state(jacsens.stats_to_host(s), _reference(g), rtol=1e-11)


def test_derived_standard_errors():
    g = _data(6, 400)
    s = jacsens.stats_update(jacsens.stats_init((3, 4)), g)
    n = 400
    assert_close(s.std, g.std(0, ddof=1), 1e-12)
    assert_close(s.mean_se, g.std(0, ddof=1) / np.sqrt(n), 1e-12)
    assert_close(s.abs_mean_se, np.abs(g).std(0, ddof=1) / np.sqrt(n), 1e-12)
    assert_close(s.sq_mean_se, (g**2).std(0, ddof=1) / np.sqrt(n), 1e-12)


def test_std_se_normal_closed_form():
    # for normal data SE(s) ≈ σ / sqrt(2n)
    rng = np.random.default_rng(7)
    sigma, n = 3.0, 200_000
    g = 1.0 + sigma * rng.standard_normal((n, 2))
    s = jacsens.stats_update(jacsens.stats_init((2,)), g)
    np.testing.assert_allclose(s.std_se, sigma / np.sqrt(2 * n), rtol=0.05)
    # a constant quantity has zero spread and zero standard errors, not NaN
    c = jacsens.stats_update(jacsens.stats_init((2,)), np.full((10, 2), 1.5))
    np.testing.assert_array_equal(c.std_se, 0.0)
    np.testing.assert_array_equal(c.mean_se, 0.0)


def test_stacked_parts_and_state_dict_roundtrip():
    g = _data(8, 120)
    parts = [jacsens.stats_from_batch(jnp.asarray(g[i * 30 : (i + 1) * 30])) for i in range(4)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
    merged = stats_stack_merge(stacked)
    _assert_state(merged, _reference(g))
    back = stats_from_state_dict(stats_state_dict(merged, "x_"), "x_")
    for f in ("count", "mean", "m4", "max_abs"):
        np.testing.assert_array_equal(getattr(back, f), getattr(merged, f))


def test_errors():
    s = jacsens.stats_init((3, 4))
    with pytest.raises(ValueError, match="batch"):
        jacsens.stats_update(s, np.zeros((5, 4, 3)))
    with pytest.raises(ValueError, match="shapes"):
        jacsens.stats_merge(s, jacsens.stats_init((2,)))
    with pytest.raises(TypeError, match="StreamingStats"):
        jacsens.stats_merge(s, 3)
    with pytest.raises(ValueError, match="mask"):
        jacsens.stats_from_batch(jnp.zeros((5, 2)), jnp.ones(4, bool))


@pytest.mark.parametrize("scale", [1e-16, 2e9, 2e19, 1e30])
def test_float32_device_moments_do_not_overflow(scale):
    # g⁴ leaves the float32 range at |g| ≈ 4e9 (and vanishes at 1e-10): the per-element
    # power-of-two scale keeps every moment finite and exact to float32 round-off
    g = _data(9, 300).astype(np.float32)
    ref = _reference(g.astype(np.float64))
    with jax.enable_x64(False):
        gs = jnp.asarray(g * np.float32(scale))
        s = jax.jit(jacsens.stats_from_batch)(gs[:170])
        s = jax.jit(jacsens.stats_update)(s, gs[170:])
        assert s.u_mean.dtype == jnp.float32
        host = jacsens.stats_to_host(s)
    power = {"m2": 2, "m3": 3, "m4": 4, "abs_m2": 2, "sq_mean": 2, "sq_m2": 4}
    for k, v in ref.items():
        if k == "count":
            continue
        got = np.asarray(getattr(host, k)) / scale ** power.get(k, 1)
        assert_close(got, np.asarray(v, np.float64), 1e-4)
    for k in ("std", "mean_se", "sq_mean_se", "std_se"):
        assert np.all(np.isfinite(getattr(host, k))) and np.all(getattr(host, k) > 0), k


def test_merge_states_of_very_different_magnitudes():
    g = _data(10, 400)
    g[:200] *= 1e-150  # float64: the first half's fourth powers underflow if unscaled
    g[200:] *= 1e60
    a = jacsens.stats_update(jacsens.stats_init((3, 4)), g[:200])
    b = jacsens.stats_update(jacsens.stats_init((3, 4)), g[200:])
    m = jacsens.stats_merge(a, b)
    assert_close(m.std, g.std(0, ddof=1), 1e-12)
    unit = g[:200] * 1e150  # the float64 reference, formed where g² does not underflow
    assert_close(a.sq_mean_se, (unit**2).std(0, ddof=1) / np.sqrt(200) * 1e-300, 1e-12)
    assert np.all(a.sq_mean_se > 0)


def test_state_dict_is_validated():
    s = jacsens.stats_update(jacsens.stats_init((3, 4)), _data(11, 20))
    d = stats_state_dict(s)
    stats_from_state_dict(d, shape=(3, 4))
    for key, value, match in [
        ("u_mean", np.zeros((3, 5)), "shape"),
        ("count", np.float64(-1.0), "count"),
        ("count", np.float64(2.5), "count"),
        ("exponent", d["exponent"] + 0.5, "exponent"),
        ("u_m4", -d["u_m4"] - 1, "u_m4"),
        ("u_m2", np.full((3, 4), np.nan), "non-finite"),
        ("u_m3", d["u_m3"].astype(np.float32), "float64"),
    ]:
        with pytest.raises(ValueError, match=match):
            stats_from_state_dict(dict(d, **{key: value}), shape=(3, 4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_std_se_uses_the_fourth_moment_of_skewed_data(dtype):
    # the delta method: Var(s²) ≈ (μ₄ - σ⁴)/n, SE(s) = SE(s²)/(2s). For exponential data
    # μ₄ = 9σ⁴, so the normal-theory σ/sqrt(2n) (μ₄ = 3σ⁴) is half the right value
    rng = np.random.default_rng(11)
    n = 4000
    g = rng.exponential(2.0, (n, 3)).astype(dtype)
    s = jacsens.stats_update(jacsens.stats_init((3,)), g)
    x = g.astype(np.float64)
    var = x.var(0, ddof=1)
    mu4 = np.mean((x - x.mean(0)) ** 4, axis=0)
    want = np.sqrt((mu4 - var**2) / n) / (2 * np.sqrt(var))
    assert_close(s.std_se, want, 1e-6 if dtype == np.float32 else 1e-12)
    assert np.all(s.std_se > 1.5 * np.sqrt(var / (2 * n)))  # far from the normal value
