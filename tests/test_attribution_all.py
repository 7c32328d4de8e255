"""`target="all"`: every output's attributions in one call, checked against one call per
output (the per-output path is itself checked against closed forms in test_attribution)
and, for integrated gradients, against completeness with closed-form outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacsens import attribution as attr

from helpers import assert_close, random_mlp

DTYPES = [jnp.float32, jnp.float64]
RTOL = {jnp.float32: 2e-5, jnp.float64: 1e-12}
N_OUT = 4


def _per_output(fn, model, X, n_out, **kw):
    return jnp.stack([fn(model, X, target=o, **kw) for o in range(n_out)], axis=1)


METHODS = {
    "saliency": (attr.saliency, {"abs": False}),
    "saliency_abs": (attr.saliency, {}),
    "gradient_x_input": (attr.gradient_x_input, {}),
    "integrated_gradients": (
        attr.integrated_gradients,
        {"return_delta": False, "n_steps": 7, "chunk_size": 3},
    ),
    "ig_riemann": (
        attr.integrated_gradients,
        {"return_delta": False, "n_steps": 5, "method": "riemann_trapezoid", "baseline": 0.5},
    ),
    "smoothgrad": (attr.smoothgrad, {"n_samples": 6, "chunk_size": 3}),
    "smoothgrad_sq": (attr.smoothgrad, {"n_samples": 6, "squared": True}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_all_equals_one_call_per_output(getkey, dtype, name):
    fn, kw = METHODS[name]
    if fn is attr.smoothgrad:
        kw = {**kw, "key": getkey()}
    model = random_mlp(getkey(), 5, (12, 8), N_OUT, "tanh", dtype=dtype)
    X = jax.random.normal(getkey(), (7, 5), dtype)
    got = fn(model, X, target="all", **kw)
    want = _per_output(fn, model, X, N_OUT, **kw)
    assert got.shape == (7, N_OUT, 5) and got.dtype == dtype
    assert_close(got, want, RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_keeps_the_output_and_input_shapes(getkey, dtype):
    """A (2, 3) output of a (2, 4) input: attributions (B, 2, 3, 2, 4), entry [b, o, p]
    the attribution of output o,p, equal to the call with the tuple target (o, p)."""
    A = jax.random.normal(getkey(), (2, 3, 2, 4), dtype)

    def model(x):
        return jnp.tanh(jnp.einsum("opij,ij->op", A, x))

    X = jax.random.normal(getkey(), (5, 2, 4), dtype)
    ig, delta = attr.integrated_gradients(model, X, target="all", n_steps=6)
    assert ig.shape == (5, 2, 3, 2, 4) and delta.shape == (5, 2, 3)
    sal = attr.gradient_x_input(model, X, target="all")
    for o in range(2):
        for p in range(3):
            one, d1 = attr.integrated_gradients(model, X, target=(o, p), n_steps=6)
            assert_close(ig[:, o, p], one, RTOL[dtype])
            # delta is a difference of close numbers: compare it on the scale of the outputs
            # (|y| <= 1 for tanh), not relative to itself
            assert np.max(np.abs(delta[:, o, p] - d1)) <= RTOL[dtype]
            assert_close(sal[:, o, p], attr.gradient_x_input(model, X, target=(o, p)), RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ig_all_completeness_closed_form(getkey, dtype):
    """Quadratic outputs f_o(x) = xᵀ Q_o x + c_o·x: Gauss-Legendre with 2 points is exact
    on the (degree-1) gradient path, so Σ_i IG[o, i] = f_o(x) - f_o(x') to round-off, with
    f computed here in float64 numpy."""
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((3, 4, 4))
    C = rng.standard_normal((3, 4))
    Qd, Cd = jnp.asarray(Q, dtype), jnp.asarray(C, dtype)

    def model(x):
        return jnp.einsum("i,oij,j->o", x, Qd, x) + Cd @ x

    X = np.asarray(jax.random.normal(getkey(), (9, 4), jnp.float64))
    base = np.asarray(jax.random.normal(getkey(), (4,), jnp.float64))
    ig, delta = attr.integrated_gradients(
        model, jnp.asarray(X, dtype), baseline=jnp.asarray(base, dtype), target="all", n_steps=2
    )
    Xr = X.astype(np.dtype(dtype)).astype(np.float64)  # the inputs the model saw
    br = base.astype(np.dtype(dtype)).astype(np.float64)

    def f(x):
        return np.einsum("bi,oij,bj->bo", x, Q, x) + x @ C.T

    gap = f(Xr) - f(np.broadcast_to(br, Xr.shape))
    sums = np.asarray(ig, np.float64).sum(axis=-1)
    tol = 1e-4 if dtype == jnp.float32 else 1e-12
    assert np.max(np.abs(sums - gap)) <= tol * np.max(np.abs(gap))
    assert np.max(np.abs(delta)) <= tol * np.max(np.abs(gap))


def test_ig_all_delta_is_quadrature_error(getkey):
    """On an MLP the completeness error per output shrinks with n_steps (Gauss-Legendre
    converges fast on a smooth path) and matches the per-output delta."""
    model = random_mlp(getkey(), 5, (16,), N_OUT, "tanh")
    X = 2 * jax.random.normal(getkey(), (6, 5))
    errs = []
    for n in (2, 4, 8):
        _, d = attr.integrated_gradients(model, X, target="all", n_steps=n)
        errs.append(float(jnp.max(jnp.abs(d))))
        _, d2 = attr.integrated_gradients(model, X, target=2, n_steps=n)
        assert_close(d[:, 2], d2, 1e-9)
    assert errs[2] < errs[1] < errs[0] and errs[2] < 1e-6


def test_all_rejects_other_strings(getkey):
    model = random_mlp(getkey(), 3, (4,), 2, "tanh")
    X = jnp.ones((2, 3))
    with pytest.raises(TypeError, match="`target`.*'all'"):
        attr.saliency(model, X, target="every")
