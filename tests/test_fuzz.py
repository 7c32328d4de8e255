"""Property-based fuzzing of every public entry point (hypothesis).

Every case draws a model, shapes, dtypes (including bfloat16, float16, int, bool and
complex), batch sizes (including empty batches), NaN/Inf and mismatched arguments, and
must end in one of two ways:

- a result that agrees with plain JAX (`jax.vmap(jax.jacrev(model))`, `jax.grad`,
    `jax.hessian` in float64) or with a closed form, within the tolerance of the result's
    dtype; or
- a `ValueError`/`TypeError` whose message names an argument in backticks ("`X`").

Inputs that are clearly valid must give a result and inputs that are clearly invalid
(non-floating `X`, a shape the model cannot take, a wrong target shape) must raise;
half-precision inputs may do either. Any other exception fails the case. The examples
are derandomised (the same cases on every run); set `JACSENS_FUZZ_EXAMPLES` to run more.
The number of cases run per entry point and outcome is printed at the end of the module
(`pytest -s`).
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import jacsens
from jacsens import attribution, datasets

from helpers import rel_err

EXAMPLES = int(os.environ.get("JACSENS_FUZZ_EXAMPLES", "12"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CASES: collections.Counter[tuple[str, str]] = collections.Counter()
# "`X`", "`validation[0]`", or an argument with its value, "`mode='chain'`"
NAMED = re.compile(r"`[A-Za-z_][A-Za-z0-9_.\[\]]*(=[^`]*)?`")
F64 = jnp.dtype(jnp.float64)
F32 = jnp.dtype(jnp.float32)
HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
FLOATS = (F32, F64)
NON_FLOAT = (jnp.dtype(jnp.int32), jnp.dtype(jnp.bool_), jnp.dtype(jnp.complex64))
TOL = {F64: 1e-9, F32: 2e-4, HALF[0]: 3e-2, HALF[1]: 3e-2}


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(CASES.values())
    lines = [f"fuzz cases run: {total}"]
    for (name, outcome), k in sorted(CASES.items()):
        lines.append(f"  {name:28s} {outcome:7s} {k}")
    print("\n" + "\n".join(lines))


# --------------------------------------------------------------------------- models
# A fixed set of models (built once): jit caches stay warm across examples, so the suite
# spends its time on new shapes and dtypes, not on recompiling identical closures.


def _closure_sin(x):
    return jnp.sin(x) * jnp.sum(x)  # (3,) -> (3,)


_A = np.linspace(-1.0, 1.0, 6).reshape(3, 2)


def _matrix_in(x):
    return jnp.sum(jnp.tanh(x @ jnp.asarray(_A, x.dtype)), axis=0)  # (2, 3) -> (2,)


def _scalar_in(x):
    return jnp.stack([jnp.sin(x), x * x])  # () -> (2,)


def _matrix_out(x):
    return jnp.outer(jnp.tanh(x[:2]), x)  # (3,) -> (2, 3)


class _Quadratic(eqx.Module):
    """`y = tanh(W x) · (W x)`, a module that is not a layer chain."""

    W: jax.Array

    def __call__(self, x):
        z = self.W @ x
        return jnp.tanh(z) * z


def _models(dtype) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """name -> (model, in_shape); parameters in `dtype`."""
    k = jax.random.key(7)
    ks = jax.random.split(k, 4)
    eqx_mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jax.nn.tanh, key=ks[2], dtype=dtype)
    return {
        "mlp_scalar": (jacsens.MLP(3, (4,), "scalar", "tanh", key=ks[0], dtype=dtype), (3,)),
        "mlp_vec": (
            jacsens.MLP(
                3, (5, 2), 2, "softplus", key=ks[1], dtype=dtype, final_activation="sigmoid"
            ),
            (3,),
        ),
        "eqx_mlp": (eqx_mlp, (3,)),
        "module": (_Quadratic(jax.random.normal(ks[3], (2, 3), dtype)), (3,)),
        "closure": (_closure_sin, (3,)),
        "matrix_in": (_matrix_in, (2, 3)),
        "scalar_in": (_scalar_in, ()),
        "matrix_out": (_matrix_out, (3,)),
    }


MODELS = {F32: _models(jnp.float32), F64: _models(jnp.float64)}
CHAINS = ("mlp_scalar", "mlp_vec", "eqx_mlp")  # models with a readable layer chain
MODULES = ("mlp_scalar", "mlp_vec", "eqx_mlp", "module")  # eqx.Modules (weight gradients)


def _f64(model):
    """The model with its floating parameters in float64 (the reference's precision)."""
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)


# --------------------------------------------------------------------------- oracles


def _attempt(name: str, call: Callable[[], Any], *, must: str | None):
    """Run `call`; return its result, or None if it raised an acceptable error.

    `must="raise"`: it must raise ValueError/TypeError naming an argument; `must="pass"`:
    it must return; `None`: either.
    """
    try:
        out = call()
        out = jax.block_until_ready(out)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert NAMED.search(msg), f"{name}: the error names no argument in backticks: {e!r}"
        assert must != "pass", f"{name}: valid arguments were refused: {e!r}"
        CASES[name, "raised"] += 1
        return None
    assert must != "raise", f"{name}: invalid arguments were accepted"
    CASES[name, "ok"] += 1
    return out


def _close(name: str, got, want, dtype=None) -> None:
    """Norm-wise relative agreement within the tolerance of `dtype` (default: `got`'s)."""
    dtype = jnp.dtype(got.dtype if dtype is None else dtype)
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    if got.size == 0:
        return
    err = rel_err(got, want)
    assert err <= TOL[jnp.dtype(dtype)], f"{name}: relative error {err:.2e} ({dtype})"


def _inputs(draw, in_shape, dtype, *, batch=None, non_finite=False):
    B = draw(st.integers(0, 4)) if batch is None else batch
    x = draw(
        st.lists(st.floats(-2, 2, width=32), min_size=B * int(np.prod(in_shape, dtype=int))).map(
            lambda v: np.asarray(v, np.float64)
        )
    )[: B * int(np.prod(in_shape, dtype=int))]
    X = x.reshape((B, *in_shape))
    if non_finite and X.size:
        flat = X.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if dtype == jnp.bool_:
        return jnp.asarray(X > 0)
    return jnp.asarray(X.astype(np.float64)).astype(dtype)


def _x_dtypes(mdtype):
    """X's dtype: mostly the model's; sometimes the other float, half, int, bool, complex.
    (Derandomised hypothesis favours the first choices: the common, valid ones.)"""
    other = F32 if mdtype == F64 else F64
    return st.sampled_from([mdtype] * 4 + [other, *HALF, *NON_FLOAT])


@st.composite
def _case(draw, names: tuple[str, ...] | None = None):
    """(model name, model dtype, model, X, X's dtype, shape_ok).

    `shape_ok` is True when `X`'s samples have the model's shape, False when they do not
    and the model has a fixed input shape (a layer chain: must be refused), None when a
    shape-agnostic callable may or may not accept them.
    """
    name = draw(st.sampled_from(names or tuple(MODELS[F32])))
    mdtype = draw(st.sampled_from(FLOATS))
    model, in_shape = MODELS[mdtype][name]
    xdtype = draw(_x_dtypes(mdtype))
    shape_ok: bool | None = draw(st.sampled_from([True] * 5 + [False]))
    shape = in_shape
    if not shape_ok:
        shape = (*in_shape, 2) if len(in_shape) < 2 else (in_shape[0] + 1,)
        shape_ok = False if name in CHAINS else None
    X = _inputs(draw, shape, xdtype)
    if shape_ok and _mixed(name, mdtype, xdtype):
        shape_ok = None
    return name, mdtype, model, X, jnp.dtype(xdtype), shape_ok


def _mixed(name: str, mdtype, xdtype) -> bool:
    """A module with parameters of another floating dtype than `X`: under the suite's strict
    promotion the model itself may refuse such inputs (with an error naming `model`)."""
    xdtype = jnp.dtype(xdtype)
    return name in MODULES and jnp.issubdtype(xdtype, jnp.floating) and xdtype != mdtype


def _expect(xdtype, shape_ok, extra_ok=True) -> str | None:
    """What a case must do: "raise", "pass", or either (None)."""
    if xdtype in NON_FLOAT or shape_ok is False or not extra_ok:
        return "raise"
    return None if xdtype in HALF or shape_ok is None else "pass"


def _out_shape(model, X, dtype):
    return jax.eval_shape(model, jax.ShapeDtypeStruct(X.shape[1:], dtype)).shape


def _check_dtype(name, out, mdtype, xdtype):
    """A module's result is in its parameters' precision or wider (X's, if wider)."""
    assert jnp.issubdtype(out.dtype, jnp.floating), (name, out.dtype)
    if name in MODULES:
        want = F64 if F64 in (mdtype, xdtype) else F32
        assert out.dtype == want, (name, out.dtype, want)


def _jacobian_reference(model, X):
    Xr = jnp.asarray(X, jnp.float64)
    return jax.vmap(jax.jacrev(_f64(model)))(Xr)


# --------------------------------------------------------------------------- Jacobians


@FUZZ
@given(
    case=_case(),
    mode=st.sampled_from(["auto", "rev", "fwd", "chain", "backprop"]),
    chunk=st.sampled_from([None, None, 1, 3]),
)
def test_input_jacobian(case, mode, chunk):
    name, mdtype, model, X, xdtype, shape_ok = case
    needs_chain = mode in ("chain", "backprop") and name not in CHAINS
    must = _expect(xdtype, shape_ok, not needs_chain)
    J = _attempt(
        f"input_jacobian[{mode}]",
        lambda: jacsens.input_jacobian(model, X, mode=mode, chunk_size=chunk),
        must=must,
    )
    if J is not None:
        _check_dtype(name, J, mdtype, xdtype)
        _close("input_jacobian", J, _jacobian_reference(model, X))


@FUZZ
@given(case=_case(), data=st.data(), wrong=st.booleans())
def test_jvp_and_vjp(case, data, wrong):
    name, mdtype, model, X, xdtype, shape_ok = case
    in_shape = X.shape[1:]
    try:
        out_shape = _out_shape(model, X, mdtype)
    except Exception:  # the model cannot take these samples: any tangent will do
        out_shape = (1,)
    # tangents in X's dtype (the model's for a non-floating X, which is refused anyway)
    tdtype = X.dtype if jnp.issubdtype(X.dtype, jnp.floating) else mdtype
    V = _inputs(data.draw, (*in_shape, 2) if wrong else in_shape, tdtype, batch=X.shape[0])
    U = _inputs(data.draw, (*out_shape, 2) if wrong else out_shape, tdtype, batch=X.shape[0])
    must = _expect(xdtype, shape_ok, not wrong)
    jv = _attempt("jvp", lambda: jacsens.jvp(model, X, V), must=must)
    vj = _attempt("vjp", lambda: jacsens.vjp(model, X, U), must=must)
    if jv is None or vj is None:
        return
    B = X.shape[0]
    n_in, n_out = int(np.prod(in_shape, dtype=int)), int(np.prod(out_shape, dtype=int))
    Jm = np.asarray(_jacobian_reference(model, X)).reshape(B, n_out, n_in)
    Vm = np.asarray(V, np.float64).reshape(B, n_in)
    Um = np.asarray(U, np.float64).reshape(B, n_out)
    _close("jvp", jv, np.einsum("boi,bi->bo", Jm, Vm).reshape(B, *out_shape))
    _close("vjp", vj, np.einsum("boi,bo->bi", Jm, Um).reshape(B, *in_shape))


@FUZZ
@given(case=_case(), chunk=st.sampled_from([None, 2]))
def test_input_hessian(case, chunk):
    name, mdtype, model, X, xdtype, shape_ok = case
    H = _attempt(
        "input_hessian",
        lambda: jacsens.input_hessian(model, X, chunk_size=chunk),
        must=_expect(xdtype, shape_ok),
    )
    if H is not None:
        ref = jax.vmap(jax.hessian(_f64(model)))(jnp.asarray(X, jnp.float64))
        _check_dtype(name, H, mdtype, xdtype)
        _close("input_hessian", H, ref)


# --------------------------------------------------------------------------- gradients


@st.composite
def _grad_case(draw):
    name = draw(st.sampled_from(MODULES))
    mdtype = draw(st.sampled_from(FLOATS))
    model, in_shape = MODELS[mdtype][name]
    out_shape = jax.eval_shape(model, jax.ShapeDtypeStruct(in_shape, mdtype)).shape
    loss = draw(
        st.sampled_from(["mse", "half_squared_error", "binary_cross_entropy", "cross_entropy"])
    )
    xdtype = jnp.dtype(draw(_x_dtypes(mdtype)))
    X = _inputs(draw, in_shape, xdtype, batch=draw(st.integers(1, 4)))
    B = X.shape[0]
    labels = loss == "cross_entropy" and out_shape != () and draw(st.booleans())
    wrong = draw(st.sampled_from([False] * 4 + [True]))
    if labels:
        y_shape = out_shape[:-1]
        Y = jnp.asarray(
            draw(st.lists(st.integers(0, out_shape[-1] - 1), min_size=B, max_size=B)), jnp.int32
        )
        Y = Y.reshape((B, *y_shape))
        if wrong:
            Y = jnp.concatenate([Y, Y])  # wrong batch size
    else:
        y_shape = (*out_shape, 2) if wrong else out_shape
        lo = 0.05 if loss == "binary_cross_entropy" else -1.0
        Y = jnp.asarray(
            np.asarray(
                draw(
                    st.lists(
                        st.floats(lo, 0.95),
                        min_size=B * max(1, int(np.prod(y_shape, dtype=int))),
                        max_size=B * max(1, int(np.prod(y_shape, dtype=int))),
                    )
                )
            )[: B * int(np.prod(y_shape, dtype=int))].reshape((B, *y_shape)),
            mdtype,
        )
    # cross-entropy needs a class axis: a scalar-output model has none and must be refused
    ok = not wrong and not (loss == "cross_entropy" and out_shape == ())
    return name, mdtype, model, loss, X, Y, xdtype, ok


def _per_sample_reference(model, loss, X, Y):
    fn = jacsens.LOSSES[loss]
    m64 = _f64(model)
    params, static = eqx.partition(m64, eqx.is_inexact_array)
    Y64 = Y if jnp.issubdtype(Y.dtype, jnp.integer) else jnp.asarray(Y, jnp.float64)

    def one(p, x, y):
        return fn(eqx.combine(p, static)(x), y)

    return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, jnp.asarray(X, jnp.float64), Y64)


@FUZZ
@given(
    case=_grad_case(),
    chunk=st.sampled_from([None, 2]),
    method=st.sampled_from(["auto", "materialise", "ghost"]),
)
def test_weight_gradients(case, chunk, method):
    name, mdtype, model, loss, X, Y, xdtype, ok = case
    must = _expect(xdtype, None if _mixed(name, mdtype, xdtype) else True, ok)
    g = _attempt("weight_grad", lambda: jacsens.weight_grad(model, loss, X, Y), must=must)
    gs = _attempt(
        "per_sample_grads",
        lambda: jacsens.per_sample_grads(model, loss, X, Y, chunk_size=chunk),
        must=must,
    )
    ghost_ok = method != "ghost" or name in CHAINS
    norms = _attempt(
        f"per_sample_grad_norms[{method}]",
        lambda: jacsens.per_sample_grad_norms(model, loss, X, Y, chunk_size=chunk, method=method),
        must=must if ghost_ok or must == "raise" else "raise",
    )
    if g is None or gs is None:
        return
    ref = _per_sample_reference(model, loss, X, Y)
    ref_leaves = jax.tree.leaves(ref)
    got_ps = jax.tree.leaves(eqx.filter(gs, eqx.is_array))
    got_mean = jax.tree.leaves(eqx.filter(g, eqx.is_array))
    assert len(got_ps) == len(ref_leaves) == len(got_mean)
    for a, b, m in zip(got_ps, ref_leaves, got_mean, strict=True):
        _close("per_sample_grads", a, b)
        _close("weight_grad", m, np.mean(np.asarray(b), axis=0))
    if norms is not None:
        sq = sum(np.sum(np.asarray(b).reshape(b.shape[0], -1) ** 2, axis=1) for b in ref_leaves)
        _close("per_sample_grad_norms", norms, np.sqrt(sq))


# --------------------------------------------------------------------------- attribution


@st.composite
def _attr_case(draw):
    name, mdtype, model, X, xdtype, shape_ok = draw(_case())
    try:
        out_shape = _out_shape(model, X, mdtype)
    except Exception:  # the model cannot take these samples: it must be refused anyway
        out_shape, shape_ok = (1,), False
    n_out = int(np.prod(out_shape, dtype=int))
    kind = draw(st.sampled_from(["int", "array", "tuple", "none", "bad_int", "bad_array"]))
    B = X.shape[0]
    if kind == "none":
        target, flat, ok = None, np.zeros(B, int), n_out == 1
    elif kind == "int":
        t = draw(st.integers(-n_out, n_out - 1))
        target, flat, ok = t, np.full(B, t % n_out), True
    elif kind == "tuple":
        idx = tuple(draw(st.integers(0, s - 1)) for s in out_shape)
        target, ok = idx, True
        flat = np.full(B, np.ravel_multi_index(idx, out_shape) if out_shape else 0)
    elif kind == "array":
        flat = np.asarray(draw(st.lists(st.integers(0, n_out - 1), min_size=B, max_size=B)), int)
        target, ok = jnp.asarray(flat, jnp.int32), True
    elif kind == "bad_int":
        target, flat, ok = draw(st.sampled_from([n_out, -n_out - 1, 2**31])), None, False
    else:
        target, flat, ok = jnp.asarray(np.full(B + 1, 0), jnp.int32), None, False
    return name, mdtype, model, X, xdtype, (shape_ok if ok else False), target, flat


def _selected_jacobian(model, X, flat):
    B = X.shape[0]
    if B == 0:
        return np.zeros(X.shape)
    J = np.asarray(_jacobian_reference(model, X)).reshape(B, -1, *X.shape[1:])
    return J[np.arange(B), flat]


@FUZZ
@given(case=_attr_case(), chunk=st.sampled_from([None, 1, 4096]))
def test_saliency_and_gradient_x_input(case, chunk):
    name, mdtype, model, X, xdtype, ok, target, flat = case
    must = _expect(xdtype, ok)
    s = _attempt(
        "saliency",
        lambda: attribution.saliency(model, X, target=target, abs=False, chunk_size=chunk),
        must=must,
    )
    gx = _attempt(
        "gradient_x_input",
        lambda: attribution.gradient_x_input(model, X, target=target, chunk_size=chunk),
        must=must,
    )
    if s is None or gx is None:
        return
    ref = _selected_jacobian(model, X, flat)
    _close("saliency", s, ref)
    _close("gradient_x_input", gx, ref * np.asarray(X, np.float64))


@FUZZ
@given(
    case=_attr_case(),
    method=st.sampled_from(attribution.IG_METHODS),
    n_steps=st.sampled_from([3, 1, 6, 2, 0]),
    baseline=st.sampled_from(["zero", "sample", "row", "bad"]),
)
def test_integrated_gradients(case, method, n_steps, baseline):
    name, mdtype, model, X, xdtype, ok, target, flat = case
    shape = X.shape[1:]
    base = {
        "zero": 0.0,
        "sample": jnp.full(shape, 0.5, mdtype),
        "row": jnp.full(X.shape, -0.25, mdtype),
        "bad": jnp.zeros((*shape, 3), mdtype),
    }[baseline]
    min_steps = 2 if method == "riemann_trapezoid" else 1
    out = _attempt(
        "integrated_gradients",
        lambda: attribution.integrated_gradients(
            model, X, baseline=base, target=target, n_steps=n_steps, method=method
        ),
        must=_expect(xdtype, ok, baseline != "bad" and n_steps >= min_steps),
    )
    if out is None:
        return
    ig, delta = out
    assert ig.shape == X.shape and delta.shape == X.shape[:1]
    if X.shape[0] == 0:
        return
    rd = jnp.dtype(ig.dtype)
    # the same quadrature written out with plain JAX: Σ_k w_k ∂y_t/∂x(b + α_k (x - b))
    if method == "gausslegendre":
        a, w = np.polynomial.legendre.leggauss(n_steps)
        alphas, weights = (a + 1) / 2, w / 2
    elif method == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, n_steps)
        weights = np.full(n_steps, 1.0 / (n_steps - 1))
        weights[[0, -1]] /= 2
    else:
        off = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        alphas, weights = (np.arange(n_steps) + off) / n_steps, np.full(n_steps, 1.0 / n_steps)
    X64 = np.asarray(X, np.float64)
    b64 = np.broadcast_to(np.asarray(base, np.float64), X64.shape)
    grads = sum(
        w * _selected_jacobian(model, jnp.asarray(b64 + a * (X64 - b64)), flat)
        for a, w in zip(alphas, weights, strict=True)
    )
    ref = (X64 - b64) * grads
    _close("integrated_gradients", ig, ref)
    f = _f64(model)
    yx = np.asarray(jax.vmap(lambda x: jnp.ravel(f(x)))(jnp.asarray(X64))).reshape(X64.shape[0], -1)
    yb = np.asarray(jax.vmap(lambda x: jnp.ravel(f(x)))(jnp.asarray(b64))).reshape(X64.shape[0], -1)
    B = X64.shape[0]
    completeness = ref.reshape(B, -1).sum(axis=1) - (
        yx[np.arange(B), flat] - yb[np.arange(B), flat]
    )
    scale = max(1.0, float(np.max(np.abs(yx), initial=0.0)), float(np.max(np.abs(yb), initial=0.0)))
    assert (
        np.max(np.abs(np.asarray(delta, np.float64) - completeness), initial=0.0)
        <= 10 * TOL[rd] * scale
    )


@FUZZ
@given(
    case=_attr_case(),
    stdev=st.sampled_from([0.0, 0.1, 0.0, -1.0, float("nan")]),
    n_samples=st.sampled_from([2, 1, 3, 0]),
    squared=st.booleans(),
)
def test_smoothgrad(case, stdev, n_samples, squared):
    name, mdtype, model, X, xdtype, ok, target, flat = case
    valid = n_samples >= 1 and stdev >= 0  # NaN compares False
    out = _attempt(
        "smoothgrad",
        lambda: attribution.smoothgrad(
            model,
            X,
            key=jax.random.key(0),
            target=target,
            n_samples=n_samples,
            stdev=stdev,
            squared=squared,
        ),
        must=_expect(xdtype, ok, valid),
    )
    if out is None:
        return
    assert out.shape == X.shape
    if stdev == 0.0:  # no noise: the plain gradient (or its square)
        ref = _selected_jacobian(model, X, flat)
        _close("smoothgrad", out, ref * ref if squared else ref)
    else:
        assert bool(jnp.all(jnp.isfinite(out)))


# --------------------------------------------------------------------------- sensitivity


@st.composite
def _sens_case(draw):
    name = draw(
        st.sampled_from(["mlp_scalar", "mlp_vec", "module", "closure", "matrix_in", "scalar_in"])
    )
    mdtype = draw(st.sampled_from(FLOATS))
    model, in_shape = MODELS[mdtype][name]
    xdtype = jnp.dtype(draw(_x_dtypes(mdtype)))
    non_finite = draw(st.sampled_from([False] * 4 + [True]))
    B = draw(st.sampled_from([5, 1, 9, 0]))
    X = _inputs(draw, in_shape, xdtype, batch=B, non_finite=non_finite)
    container = draw(st.sampled_from(["numpy", "jax", "batches"]))
    return name, mdtype, model, in_shape, X, xdtype, non_finite, container


@FUZZ
@given(
    case=_sens_case(),
    chunk=st.sampled_from([1, 4, 64]),
    nan_policy=st.sampled_from(["raise", "omit"]),
)
def test_sensitivity(case, chunk, nan_policy):
    name, mdtype, model, in_shape, X, xdtype, non_finite, container = case
    B = X.shape[0]
    if container == "numpy":
        data = np.asarray(X)
    elif container == "jax":
        data = X
    else:
        data = iter([X[i : i + 3] for i in range(0, B, 3)])
    X64 = np.asarray(X, np.float64)
    finite_rows = np.all(np.isfinite(X64.reshape(B, -1)), axis=1) if B else np.zeros(0, bool)
    n_good = int(finite_rows.sum())
    valid = n_good > 0 and (nan_policy == "omit" or n_good == B)
    res = _attempt(
        "sensitivity",
        lambda: jacsens.sensitivity(
            model, data, chunk_size=chunk, mode="rev", progress=False, nan_policy=nan_policy
        ),
        must=_expect(xdtype, None if valid and _mixed(name, mdtype, xdtype) else valid),
    )
    if res is None:
        return
    assert res.n == n_good and res.n_omitted == B - n_good
    J = np.asarray(_jacobian_reference(model, jnp.asarray(X64[finite_rows])))
    J = J.reshape(n_good, -1, int(np.prod(in_shape, dtype=int)))
    # the derivatives are computed in the model's precision (a closure's: X's)
    rd = (F64 if F64 in (mdtype, xdtype) else F32) if name in MODULES else xdtype
    _close("sensitivity.mean", res.mean, J.mean(axis=0), rd)
    _close("sensitivity.mean_abs", res.mean_abs, np.abs(J).mean(axis=0), rd)
    _close("sensitivity.dgsm", res.dgsm, (J**2).mean(axis=0), rd)
    _close("sensitivity.max_abs", res.max_abs, np.abs(J).max(axis=0), rd)


@FUZZ
@given(
    kind=st.sampled_from(["uniform", "normal"]),
    d=st.integers(1, 3),
    n=st.sampled_from([300, 60, 1, 0, -1]),
    bad=st.sampled_from([None] * 6 + ["nan", "order", "shape"]),
    dtype=st.sampled_from([None, jnp.float32, jnp.float64, jnp.int32]),
    data=st.data(),
)
def test_samplers(kind, d, n, bad, dtype, data):
    """A sampler's rows have the documented distribution: `sensitivity` of f = Σ x²/2
    (∂f/∂x_i = x_i) estimates E[x_i] and E[x_i²] from them."""
    lo = np.asarray(data.draw(st.lists(st.floats(-3, 1), min_size=d, max_size=d)))
    width = np.asarray(data.draw(st.lists(st.floats(0.5, 2), min_size=d, max_size=d)))
    if kind == "uniform":
        p = np.stack([lo, lo + width], axis=1)
        if bad == "nan":
            p[0, 1] = np.nan
        elif bad == "order":
            p = p[:, ::-1]
        elif bad == "shape":
            p = p[:, :1]
        make = lambda: jacsens.uniform(p, n, jax.random.key(1), dtype=dtype)  # noqa: E731
        hi = lo + width
        mean, second, var = (lo + hi) / 2, (lo**2 + lo * hi + hi**2) / 3, width**2 / 12
    else:
        std = width.copy()
        if bad == "nan":
            std[0] = np.nan
        elif bad == "order":
            std[0] = -1.0
        elif bad == "shape":
            std = std[:, None]
        make = lambda: jacsens.normal(lo, std, n, jax.random.key(1), dtype=dtype)  # noqa: E731
        mean, second, var = lo, lo**2 + width**2, width**2
    valid = bad is None and n >= 1 and dtype != jnp.int32
    sampler = _attempt(f"{kind}", make, must="pass" if valid else "raise")
    if sampler is None:
        return
    rows = np.asarray(sampler.rows(0, n), np.float64)
    assert rows.shape == (n, d)
    if kind == "uniform":
        assert np.all((rows >= lo - 1e-6) & (rows <= lo + width + 1e-6))
    res = _attempt(
        "sensitivity[sampler]",
        lambda: jacsens.sensitivity(
            lambda x: 0.5 * jnp.sum(x * x), sampler, chunk_size=64, progress=False
        ),
        must="pass",
    )
    np.testing.assert_allclose(res.mean[0], rows.mean(axis=0), rtol=1e-5, atol=1e-6)
    if n >= 50:  # Monte Carlo: within 6 standard errors of the exact moments
        se = np.sqrt(var / n)
        assert np.all(np.abs(rows.mean(axis=0) - mean) < 6 * se + 1e-6)
        assert np.all(
            np.abs((rows**2).mean(axis=0) - second)
            < 6 * np.sqrt(np.var(rows**2, axis=0) / n) + 1e-3
        )


# --------------------------------------------------------------------------- crosscheck


@FUZZ
@given(case=_case(names=("mlp_scalar", "mlp_vec", "eqx_mlp", "module", "closure", "matrix_in")))
def test_crosscheck(case):
    name, mdtype, model, X, xdtype, shape_ok = case
    must = _expect(xdtype, shape_ok, X.shape[0] > 0)  # an empty batch is refused
    report = _attempt("crosscheck", lambda: jacsens.crosscheck(model, X), must=must)
    if report is not None:
        assert report.passed, report
        assert report.max_rel < 1e-5


# --------------------------------------------------------------------------- fit


@st.composite
def _fit_case(draw):
    mdtype = jnp.dtype(draw(st.sampled_from(FLOATS)))
    out = draw(st.sampled_from(["scalar", 2]))
    model = jacsens.MLP(
        3, (4,), out, "tanh", key=jax.random.key(draw(st.integers(0, 3))), dtype=mdtype
    )
    B = draw(st.sampled_from([4, 1, 6, 0]))
    xdtype = jnp.dtype(draw(_x_dtypes(mdtype)))
    X = _inputs(draw, (3,), xdtype, batch=B, non_finite=draw(st.sampled_from([False] * 3 + [True])))
    y_shape = () if out == "scalar" else (2,)
    wrong = draw(st.sampled_from([None] * 5 + ["batch", "shape"]))
    if wrong == "shape":
        y_shape = (*y_shape, 3)
    Y = _inputs(
        draw,
        y_shape,
        mdtype,
        batch=B + (wrong == "batch"),
        non_finite=draw(st.sampled_from([False] * 4 + [True])),
    )
    return model, X, Y, xdtype, wrong


@FUZZ
@given(case=_fit_case(), lr=st.sampled_from([0.0, 0.1]))
def test_fit(case, lr):
    """One full-batch SGD epoch equals one plain-JAX gradient step."""
    model, X, Y, xdtype, wrong = case
    mdtype = jnp.dtype(model.layers[0].weight.dtype)
    finite = bool(jnp.all(jnp.isfinite(jnp.asarray(X, jnp.float64)))) if X.size else True
    finite &= bool(jnp.all(jnp.isfinite(Y))) if Y.size else True
    valid = wrong is None and X.shape[0] > 0 and finite
    B = max(X.shape[0], 1)
    out = _attempt(
        "fit",
        lambda: jacsens.fit(
            model,
            X,
            Y,
            optimizer=optax.sgd(lr),
            epochs=1,
            batch_size=B,
            key=jax.random.key(0),
            progress=False,
        ),
        must=_expect(xdtype, None if valid and _mixed("mlp_scalar", mdtype, xdtype) else valid),
    )
    if out is None:
        return
    fitted, hist = out
    m64 = _f64(model)
    X64, Y64 = jnp.asarray(X, jnp.float64), jnp.asarray(Y, jnp.float64)
    mse = jacsens.LOSSES["mse"]
    loss, g = eqx.filter_value_and_grad(
        lambda m: jnp.mean(jax.vmap(lambda x, y: mse(m(x), y))(X64, Y64))
    )(m64)
    expected = eqx.apply_updates(m64, jax.tree.map(lambda a: -lr * a, g))
    dt = jnp.dtype(model.layers[0].weight.dtype)
    for a, b in zip(jax.tree.leaves(fitted), jax.tree.leaves(expected), strict=True):
        assert a.dtype == dt
        _close("fit", a, b, dt)
    assert hist.train_loss[0] == pytest.approx(float(loss), rel=TOL[dt], abs=TOL[dt])


# --------------------------------------------------------------------------- save / load


@FUZZ
@given(
    widths=st.sampled_from([(), (2,), (3, 1)]),
    in_size=st.sampled_from(["scalar", 1, 3]),
    out_size=st.sampled_from(["scalar", 1, 2]),
    activation=st.sampled_from(sorted(jacsens.ACTIVATIONS)),
    final=st.sampled_from([None, "sigmoid", "identity"]),
    use_bias=st.booleans(),
    dtype=st.sampled_from([jnp.float32, jnp.float64, jnp.float16, jnp.bfloat16]),
)
def test_save_load_round_trip(
    tmp_path_factory, widths, in_size, out_size, activation, final, use_bias, dtype
):
    path = tmp_path_factory.mktemp("io") / "m.jsns"
    model = jacsens.MLP(
        in_size,
        widths,
        out_size,
        activation,
        key=jax.random.key(3),
        final_activation=final,
        use_bias=use_bias,
        dtype=dtype,
    )
    half = jnp.dtype(dtype) in HALF
    if (
        _attempt("save", lambda: jacsens.save(path, model), must=None if half else "pass") is None
        and half
    ):
        return
    loaded = _attempt("load", lambda: jacsens.load(path), must="pass")
    assert type(loaded) is type(model)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(model), strict=True):
        assert a.dtype == b.dtype and np.array_equal(
            np.asarray(a, np.float64), np.asarray(b, np.float64)
        )
    x = jnp.linspace(-1, 1, 3 if in_size == 3 else 1, dtype=dtype)
    x = x[0] if in_size == "scalar" else x
    np.testing.assert_array_equal(
        np.asarray(loaded(x), np.float64), np.asarray(model(x), np.float64)
    )


# --------------------------------------------------------------------------- datasets


@FUZZ
@given(
    n=st.sampled_from([-1, 0, 1, 2, 7, 40]),  # each new n compiles: a few distinct ones
    noise=st.sampled_from([0.0, 0.0, 0.5, -1.0, float("nan"), float("inf")]),
    frac=st.sampled_from([0.2, 0.5, 0.0, 1.0, 0.99]),
)
def test_friedman1_and_split(n, noise, frac):
    ok = n >= 1 and noise >= 0 and np.isfinite(noise)
    data = _attempt(
        "friedman1",
        lambda: datasets.friedman1(n, jax.random.key(2), noise=noise),
        must="pass" if ok else "raise",
    )
    if data is None:
        return
    X, y = np.asarray(data.X, np.float64), np.asarray(data.y, np.float64)
    assert X.shape == (n, 10) and y.shape == (n,) and np.all((X >= 0) & (X <= 1))
    exact = (
        10 * np.sin(np.pi * X[:, 0] * X[:, 1])
        + 20 * (X[:, 2] - 0.5) ** 2
        + 10 * X[:, 3]
        + 5 * X[:, 4]
    )
    if noise == 0.0:
        np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-4)
    parts = _attempt(
        "train_test_split",
        lambda: datasets.train_test_split(data, frac, key=jax.random.key(3)),
        must=None if 0 < frac < 1 else "raise",
    )
    if parts is None:
        return
    train, test = parts
    rows = np.concatenate([np.asarray(train.X), np.asarray(test.X)])
    assert len(train.X) >= 1 and len(test.X) >= 1
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, np.asarray(data.X).tolist()))


# --------------------------------------------------------------------------- model kinds


def _bad_models():
    return {
        "int": 5,
        "string": "model",
        "array": jnp.ones(3),
        "returns_tuple": lambda x: (x, x),
        "returns_int": lambda x: 1,
        "returns_int_array": lambda x: jnp.sum(x).astype(jnp.int32),
        "returns_complex": lambda x: x.astype(jnp.complex64),
        "returns_none": lambda x: None,
        "raises": lambda x: x @ jnp.ones((7, 7)),
        "two_args": lambda x, y: x + y,
    }


def _entry_points(X, Y):
    key = jax.random.key(0)
    return {
        "input_jacobian": lambda m: jacsens.input_jacobian(m, X),
        "input_jacobian[fwd]": lambda m: jacsens.input_jacobian(m, X, mode="fwd"),
        "jvp": lambda m: jacsens.jvp(m, X, X),
        "vjp": lambda m: jacsens.vjp(m, X, X),
        "input_hessian": lambda m: jacsens.input_hessian(m, X),
        "weight_grad": lambda m: jacsens.weight_grad(m, "mse", X, Y),
        "per_sample_grads": lambda m: jacsens.per_sample_grads(m, "mse", X, Y),
        "per_sample_grad_norms": lambda m: jacsens.per_sample_grad_norms(m, "mse", X, Y),
        "saliency": lambda m: attribution.saliency(m, X, target=0),
        "gradient_x_input": lambda m: attribution.gradient_x_input(m, X, target=0),
        "integrated_gradients": lambda m: attribution.integrated_gradients(m, X, target=0),
        "smoothgrad": lambda m: attribution.smoothgrad(m, X, key=key, target=0),
        "sensitivity": lambda m: jacsens.sensitivity(m, np.asarray(X), progress=False),
        "crosscheck": lambda m: jacsens.crosscheck(m, X),
        "fit": lambda m: jacsens.fit(m, X, Y, epochs=1, key=key, progress=False),
        "save": lambda m: jacsens.save(os.devnull, m),
    }


@pytest.mark.parametrize("entry", sorted(_entry_points(jnp.ones((2, 3)), jnp.ones((2, 3)))))
@pytest.mark.parametrize("kind", sorted(_bad_models()))
def test_wrong_model_kinds_are_refused_naming_model(entry, kind):
    X = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    call = _entry_points(X, X)[entry]
    model = _bad_models()[kind]
    try:
        call(model)
    except (ValueError, TypeError) as e:
        assert "`model`" in str(e), f"{entry}({kind}): the error does not name `model`: {e!r}"
        CASES["wrong model kinds", "raised"] += 1
        return
    pytest.fail(f"{entry} accepted a model that {kind.replace('_', ' ')}")


# --------------------------------------------------------------------------- found by fuzzing
# Minimal reproductions of failures the fuzzing found (unclear errors, now fixed), kept as
# regression tests.


@pytest.mark.parametrize("fn", ["weight_grad", "per_sample_grads", "per_sample_grad_norms"])
def test_cross_entropy_on_a_scalar_output_is_refused(fn):
    model = jacsens.MLP(3, (4,), "scalar", key=jax.random.key(0), dtype=jnp.float32)
    X, Y = jnp.ones((1, 3), jnp.float32), jnp.zeros((1,), jnp.float32)
    with pytest.raises(ValueError, match=NAMED.pattern):
        getattr(jacsens, fn)(model, "cross_entropy", X, Y)


def test_crosscheck_on_an_empty_batch_is_refused():
    model = jacsens.MLP(3, (4,), "scalar", key=jax.random.key(0), dtype=jnp.float32)
    with pytest.raises(ValueError, match="`X` must hold at least one sample"):
        jacsens.crosscheck(model, jnp.zeros((0, 3), jnp.float32))
