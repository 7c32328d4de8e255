import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens import attribution as attr

from helpers import assert_close, random_mlp

W = np.array([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.0, 2.0]])
B0 = np.array([0.3, -0.7])


def linear(x):
    return jnp.asarray(W, x.dtype) @ x + jnp.asarray(B0, x.dtype)


@pytest.fixture
def net(getkey):
    return random_mlp(getkey(), 4, (8, 6), 3, "tanh")


@pytest.mark.parametrize("method", attr.IG_METHODS)
def test_ig_linear_model_is_exact(getkey, method):
    X = jax.random.normal(getkey(), (7, 4))
    base = jax.random.normal(getkey(), (4,))
    for t in (0, 1):
        ig, delta = attr.integrated_gradients(
            linear, X, baseline=base, target=t, n_steps=5, method=method
        )
        assert_close(ig, (X - base) * W[t], 1e-12)
        assert np.max(np.abs(delta)) < 1e-12


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_ig_delta_shrinks_with_steps(net, getkey, method):
    X = 2 * jax.random.normal(getkey(), (16, 4))
    errs = []
    for n in (2, 4, 8, 16, 32):
        _, delta = attr.integrated_gradients(net, X, target=2, n_steps=n, method=method)
        errs.append(float(jnp.max(jnp.abs(delta))))
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), errs
    # second-order rules: 16x the steps cuts the error ~256x; Gauss-Legendre far more
    assert errs[-1] < 1e-2 * errs[0]


def test_ig_riemann_left_right_first_order(net, getkey):
    X = jax.random.normal(getkey(), (8, 4))
    e = {
        n: float(
            jnp.max(
                jnp.abs(
                    attr.integrated_gradients(net, X, target=0, n_steps=n, method="riemann_left")[1]
                )
            )
        )
        for n in (20, 40)
    }
    # first-order rule: doubling the steps roughly halves the error
    assert 0.35 < e[40] / e[20] < 0.65, e


def test_ig_matches_dense_quadrature_and_options(net, getkey):
    X = jax.random.normal(getkey(), (5, 4))
    base = jax.random.normal(getkey(), (5, 4))
    ig = attr.integrated_gradients(net, X, baseline=base, target=1, n_steps=64, return_delta=False)
    # reference: trapezoid on a fine grid with the full Jacobian
    alphas = np.linspace(0, 1, 4001)
    Js = [np.asarray(jacsens.input_jacobian(net, base + a * (X - base)))[:, 1, :] for a in alphas]
    ref = (np.asarray(X) - np.asarray(base)) * np.trapezoid(np.stack(Js), alphas, axis=0)
    assert_close(ig, ref, 1e-6)
    chunked = attr.integrated_gradients(
        net, X, baseline=base, target=1, n_steps=64, return_delta=False, chunk_size=2
    )
    assert_close(chunked, ig, 1e-13)
    per_row = attr.integrated_gradients(
        net, X, baseline=base, target=jnp.array([1] * 5), n_steps=64, return_delta=False
    )
    assert_close(per_row, ig, 1e-14)


def test_saliency_is_abs_jacobian_row(net, getkey):
    X = jax.random.normal(getkey(), (9, 4))
    J = np.asarray(jacsens.input_jacobian(net, X))
    for t in range(3):
        assert_close(attr.saliency(net, X, target=t), np.abs(J[:, t]), 1e-13)
        assert_close(attr.saliency(net, X, target=t, abs=False), J[:, t], 1e-13)
        assert_close(attr.gradient_x_input(net, X, target=t), J[:, t] * np.asarray(X), 1e-13)
    targets = jnp.array([0, 2, 1, 1, 0, 2, 2, 0, 1])
    rows = J[np.arange(9), np.asarray(targets)]
    assert_close(attr.saliency(net, X, target=targets, chunk_size=4), np.abs(rows), 1e-13)


def test_multidimensional_output_tuple_target(getkey):
    def f(x):
        return jnp.outer(x[:2], x[2:])  # (2, 2)

    X = jax.random.normal(getkey(), (3, 4))
    g = attr.saliency(f, X, target=(1, 0), abs=False)
    expected = np.zeros((3, 4))
    expected[:, 1] = X[:, 2]
    expected[:, 2] = X[:, 1]
    assert_close(g, expected, 1e-14)


def test_smoothgrad(getkey):
    c = jnp.array([1.0, -0.5, 2.0])

    def f(x):
        return jnp.sum(c * x**2)

    X = jax.random.normal(getkey(), (4, 3))
    plain = attr.smoothgrad(f, X, key=getkey(), stdev=0.0, n_samples=8)
    assert_close(plain, 2 * c * X, 1e-14)
    sigma, n = 0.3, 4000
    sg = attr.smoothgrad(f, X, key=getkey(), stdev=sigma, n_samples=n)
    # E[2c(x+ε)] = 2cx, standard error 2|c|σ/√n per entry
    assert np.all(np.abs(sg - 2 * c * X) < 5 * 2 * np.abs(c) * sigma / np.sqrt(n))
    sq = attr.smoothgrad(f, X, key=getkey(), stdev=sigma, n_samples=n, squared=True)
    # E[(2c(x+ε))²] = 4c²(x² + σ²); Var[(x+ε)²] = 4x²σ² + 2σ⁴
    se = 4 * c**2 * np.sqrt(4 * X**2 * sigma**2 + 2 * sigma**4) / np.sqrt(n)
    assert np.all(np.abs(sq - 4 * c**2 * (X**2 + sigma**2)) < 5 * se)
    k = getkey()
    a = attr.smoothgrad(f, X, key=k, stdev=sigma, n_samples=8)
    b = attr.smoothgrad(f, X, key=k, stdev=sigma, n_samples=8, chunk_size=1)
    assert_close(a, b, 1e-14)


def test_float32_jitted(getkey):
    net32 = random_mlp(getkey(), 4, (8,), "scalar", "tanh", dtype=jnp.float32)
    X = jax.random.normal(getkey(), (6, 4), jnp.float32)
    ig, delta = attr.integrated_gradients(net32, X, n_steps=16)
    assert ig.dtype == jnp.float32 and delta.shape == (6,)
    assert float(jnp.max(jnp.abs(delta))) < 1e-4


def test_errors(net, getkey):
    X = jax.random.normal(getkey(), (3, 4))
    with pytest.raises(ValueError, match="`target` is required.*\\(3,\\)"):
        attr.saliency(net, X)
    with pytest.raises(ValueError, match="`target` must be in \\[0, 3\\)"):
        attr.saliency(net, X, target=3)
    with pytest.raises(ValueError, match="`target`"):
        attr.saliency(net, X, target=jnp.array([0, 1]))
    with pytest.raises(ValueError, match="`target`"):
        attr.saliency(net, X, target=jnp.array([0, 1, 5]))
    with pytest.raises(TypeError, match="`target`"):
        attr.saliency(net, X, target="y0")
    with pytest.raises(ValueError, match="`n_steps`"):
        attr.integrated_gradients(net, X, target=0, n_steps=0)
    with pytest.raises(ValueError, match="`n_steps`.*riemann_trapezoid"):
        attr.integrated_gradients(net, X, target=0, n_steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="`method`"):
        attr.integrated_gradients(net, X, target=0, method="simpson")
    with pytest.raises(ValueError, match="`baseline`"):
        attr.integrated_gradients(net, X, target=0, baseline=jnp.zeros(5))
    with pytest.raises(ValueError, match="`stdev`"):
        attr.smoothgrad(net, X, target=0, key=getkey(), stdev=-0.1)
    with pytest.raises(ValueError, match="`n_samples`"):
        attr.smoothgrad(net, X, target=0, key=getkey(), n_samples=0)
    with pytest.raises(TypeError, match="`key`"):
        attr.smoothgrad(net, X, target=0, key=0)
    with pytest.raises(ValueError, match="X"):
        attr.saliency(net, jnp.zeros((3, 5)), target=0)


def test_target_array_out_of_range_is_never_clamped(net, getkey):
    X = jax.random.normal(getkey(), (2, 4))
    J = np.asarray(jax.vmap(jax.jacrev(net))(X))  # (2, 3, 4)
    # concrete arrays: checked before anything runs
    with pytest.raises(ValueError, match=r"`target` entries must be in \[0, 3\).*\[7, 7\]"):
        attr.saliency(net, X, target=np.array([7, 7]))
    with pytest.raises(ValueError, match=r"`target` entries must be in \[0, 3\)"):
        attr.gradient_x_input(net, X, target=jnp.array([0, -1]))
    # traced under jit: in-range targets are still exact, out-of-range ones raise at run
    # time instead of silently returning the gradient of output 2 (a clamped gather)
    jitted = jax.jit(lambda X, t: attr.saliency(net, X, target=t, abs=False))
    assert_close(jitted(X, jnp.array([2, 1])), np.stack([J[0, 2], J[1, 1]]), 1e-12)
    with pytest.raises(Exception, match=r"`target` entries must be in \[0, 3\)"):
        jax.block_until_ready(jitted(X, jnp.array([7, 7])))
    ig = jax.jit(lambda X, t: attr.integrated_gradients(net, X, target=t, return_delta=False))
    with pytest.raises(Exception, match=r"`target` entries must be in \[0, 3\)"):
        jax.block_until_ready(ig(X, jnp.array([0, -1])))
    # the selected scalar itself (what EQX_ON_ERROR=nan would reach): NaN value and
    # gradient out of range, exact in range
    f = attr._selected(net)
    for t in (3, 7, -1):
        assert np.isnan(float(f(X[0], t)))
        assert np.all(np.isnan(np.asarray(jax.grad(f)(X[0], t))))
    assert_close(jax.grad(f)(X[0], 2), J[0, 2], 1e-12)
    assert float(f(X[0], 1)) == float(net(X[0])[1])


# Closed forms of each rule applied to ∫₀¹ α³ dα = 1/4 with n points (Euler-Maclaurin is
# exact on a cubic): left Σ k³/n⁴, right Σ (k+1)³/n⁴, midpoint 1/4 - 1/(8n²), trapezoid on
# n-1 intervals 1/4 + 1/(4(n-1)²), Gauss-Legendre exact from 2 points.
def _cubic_rule(method: str, n: int) -> float:
    return {
        "riemann_left": (n - 1) ** 2 / (4 * n**2),
        "riemann_right": (n + 1) ** 2 / (4 * n**2),
        "riemann_middle": 0.25 - 1 / (8 * n**2),
        "riemann_trapezoid": 0.25 + 1 / (4 * (n - 1) ** 2),
        "gausslegendre": 0.25,
    }[method]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("n", [2, 4, 7])
@pytest.mark.parametrize("method", attr.IG_METHODS)
def test_ig_each_rule_on_a_quartic_matches_its_closed_form(getkey, method, n, dtype):
    """On f(x) = Σ c_i x_i⁴ from baseline 0 the path gradient is 4 c_i α³ x_i³, so
    IG_i = 4 c_i x_i⁴ · Q where Q is the rule's value of ∫ α³: every rule (left, right,
    midpoint, trapezoid, Gauss) gives its own number, unlike on a linear model."""
    c = np.array([1.0, -0.5, 2.0])

    def f(x):
        return jnp.sum(jnp.asarray(c, x.dtype) * x**4)

    X = jax.random.normal(getkey(), (5, 3), dtype)
    ig, delta = attr.integrated_gradients(f, X, n_steps=n, method=method)
    assert ig.dtype == dtype and delta.dtype == dtype
    q = _cubic_rule(method, n)
    x = np.asarray(X, np.float64)
    rtol = 1e-12 if dtype == jnp.float64 else 2e-6
    assert_close(ig, 4 * c * x**4 * q, rtol)
    # completeness error: Σ IG - f(x) = Σ c x⁴ (4Q - 1), zero only for an exact rule; a
    # difference of two terms, so its round-off is relative to the terms
    fx = np.sum(c * x**4, axis=1)
    expected = fx * (4 * q - 1)
    assert np.max(np.abs(np.asarray(delta, np.float64) - expected)) <= 10 * rtol * np.max(
        np.abs(4 * c * x**4)
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_smoothgrad_draws_independent_noise_for_every_row(getkey, dtype):
    """Identical rows must get different noise: on f = Σ c x³ the mean of n noisy
    gradients 3c(x+ε)² has standard error 3|c|√(4x²σ² + 2σ⁴)/√n, which is what the rows
    spread by. Reusing one noise draw for every row would give identical rows."""
    c = np.array([1.0, -2.0])

    def f(x):
        return jnp.sum(jnp.asarray(c, x.dtype) * x**3)

    x0 = np.array([0.5, -1.0])
    B, n, sigma = 96, 64, 0.4
    X = jnp.asarray(np.tile(x0, (B, 1)), dtype)
    sg = np.asarray(attr.smoothgrad(f, X, key=getkey(), n_samples=n, stdev=sigma), np.float64)
    mean = 3 * c * (x0**2 + sigma**2)
    se = 3 * np.abs(c) * np.sqrt(4 * x0**2 * sigma**2 + 2 * sigma**4) / np.sqrt(n)
    spread = sg.std(axis=0, ddof=1)
    # the spread of B rows estimates se to ~1/√(2(B-1)) = 7%: ±35% is 5 standard errors
    assert np.all(np.abs(spread / se - 1) < 0.35), (spread, se)
    assert np.all(np.abs(sg.mean(axis=0) - mean) < 5 * se / np.sqrt(B))
    # rows are independent: the sample correlation of consecutive rows' errors is ~0
    err = (sg - mean) / se
    r = np.mean(err[1:] * err[:-1], axis=0)
    assert np.all(np.abs(r) < 5 / np.sqrt(B)), r
