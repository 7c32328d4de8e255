"""`jacsens.input_jacobian` in every mode, `jvp`, `vjp`, `input_hessian` (`jacsens._jacobian`).

Every mode is compared with every other and with float64 central differences. The
reference for float32 runs is the float64 Jacobian of the same (cast) model.
"""

import itertools

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jacsens
import jacsens._jacobian as jac_module

from helpers import (
    ALL_MODES,
    KINKED,
    all_jacobians,
    assert_close,
    init_model,
    perturb_biases,
    random_inputs,
    random_mlp,
    rel_err,
    to_f64,
)

FD_RTOL = 1e-7  # float64 central differences, step ε^(1/3)


def check_all_modes(model, X, *, modes=ALL_MODES, rtol=1e-10, fd=True):
    """Every mode against every other, and (float64 only) against central differences.

    For float32 inputs the reference is the float64 `rev` Jacobian of the cast model."""
    Js = all_jacobians(model, X, modes)
    shapes = {J.shape for J in Js.values()}
    assert len(shapes) == 1, shapes
    for a, b in itertools.combinations(modes, 2):
        err = rel_err(Js[a], Js[b])
        assert err <= rtol, f"{a} vs {b}: relative error {err:.2e} > {rtol:.0e}"
    if X.dtype == jnp.float32:
        ref = jacsens.input_jacobian(to_f64(model), X.astype(jnp.float64), mode="rev")
        for m, J in Js.items():
            assert J.dtype == jnp.float32
            err = rel_err(J, ref)
            assert err <= rtol, f"{m} (float32) vs float64: relative error {err:.2e}"
    elif fd:
        fdJ = jacsens.finite_difference_jacobian(model, X)
        for m, J in Js.items():
            err = rel_err(J, fdJ)
            assert err <= FD_RTOL, f"{m} vs fd: relative error {err:.2e}"
    return Js


@pytest.fixture
def record_modes(monkeypatch):
    """Record the mode each `input_jacobian` call resolves to."""
    seen = []
    original = jac_module._jacobian_impl

    def spy(model, X, plan, chunk_size):
        seen.append(plan.mode.name)
        return original(model, X, plan, chunk_size)

    monkeypatch.setattr(jac_module, "_jacobian_impl", spy)
    return seen


# ---------------------------------------------------------------------------------------
# jacsens.MLP: activations, depths, widths, batch sizes, dtypes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", sorted(jacsens.ACTIVATIONS))
def test_every_activation(getkey, act):
    m = perturb_biases(random_mlp(getkey(), 5, (6, 4), 3, act), getkey())
    X = random_inputs(getkey(), 3, (5,))
    check_all_modes(m, X, fd=act not in KINKED)


@pytest.mark.parametrize("depth, act", [(0, "sigmoid"), (1, "relu"), (2, "sigmoid"), (3, "relu")])
def test_depths(getkey, depth, act):
    m = random_mlp(getkey(), 4, (5,) * depth, 3, act)
    X = random_inputs(getkey(), 2, (4,))
    Js = check_all_modes(m, X, fd=act not in KINKED)
    assert Js["rev"].shape == (2, 3, 4)
    if depth == 0:  # affine: the Jacobian is the weight, for every sample
        for b in range(2):
            assert_close(Js["chain"][b], m.layers[0].weight, 1e-15)


SHAPES = {
    "tall": (30, (8,), 2, 4),
    "wide": (2, (8,), 30, 1),
    "square": (6, (6, 6), 6, 3),
    "bottleneck": (12, (16, 2, 16), 12, 1),
    "scalar-out": (5, (4,), "scalar", 4),
    "scalar-in": ("scalar", (4, 3), 3, 1),
    "scalar-both": ("scalar", (4,), "scalar", 5),
}


SHAPE_CASES = [pytest.param(s, jnp.float64, id=f"{s}-f64") for s in SHAPES] + [
    pytest.param(s, jnp.float32, id=f"{s}-f32") for s in ("tall", "wide", "bottleneck", "scalar-in")
]


@pytest.mark.parametrize("shape, dtype", SHAPE_CASES)
def test_shapes_and_dtypes(getkey, shape, dtype):
    in_size, widths, out_size, batch = SHAPES[shape]
    m = random_mlp(getkey(), in_size, widths, out_size, "tanh", dtype=dtype)
    X = random_inputs(getkey(), batch, m.in_shape, dtype=dtype)
    Js = check_all_modes(m, X, rtol=1e-4 if dtype == jnp.float32 else 1e-10)
    assert Js["auto"].shape == (batch, *m.out_shape, *m.in_shape)


@pytest.mark.parametrize("use_bias", [True, False])
def test_final_activation_and_bias(getkey, use_bias):
    m = init_model(
        lambda k: jacsens.MLP(
            4, (5, 3), 3, "softplus", key=k, final_activation="sigmoid", use_bias=use_bias
        ),
        getkey(),
    )
    X = random_inputs(getkey(), 3, (4,))
    Js = check_all_modes(m, X, fd=False)  # the closed form below is the reference
    # closed form: diag(σ'(z3)) W3 diag(softplus'(z2)) W2 diag(softplus'(z1)) W1
    W1, W2, W3 = (layer.weight for layer in m.layers)
    b1, b2, b3 = ((0.0 if layer.bias is None else layer.bias) for layer in m.layers)
    for b in range(3):
        z1 = W1 @ X[b] + b1
        z2 = W2 @ jax.nn.softplus(z1) + b2
        z3 = W3 @ jax.nn.softplus(z2) + b3
        s = jax.nn.sigmoid(z3)
        J = (s * (1 - s))[:, None] * W3 @ (jax.nn.sigmoid(z2)[:, None] * W2)
        J = J @ (jax.nn.sigmoid(z1)[:, None] * W1)
        assert_close(Js["backprop"][b], J, 1e-13)


# ---------------------------------------------------------------------------------------
# Equinox models and plain callables
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "act, final",
    [
        (jax.nn.tanh, None),
        (jax.nn.relu, None),
        (jax.nn.sigmoid, None),
        (jax.nn.gelu, None),
        (jax.nn.tanh, jax.nn.sigmoid),
    ],
    ids=["tanh", "relu", "sigmoid", "gelu", "tanh+sigmoid"],
)
def test_eqx_mlp(getkey, act, final):
    kwargs = {} if final is None else {"final_activation": final}
    m = init_model(
        lambda k: eqx.nn.MLP(5, 3, 7, 2, activation=act, key=k, scan=False, **kwargs), getkey()
    )
    X = random_inputs(getkey(), 3, (5,))
    # exact modes only: the same activations are compared with differences elsewhere
    check_all_modes(m, X, fd=False)


def test_eqx_mlp_scalar(getkey):
    m = init_model(
        lambda k: eqx.nn.MLP("scalar", "scalar", 6, 2, activation=jax.nn.sigmoid, key=k), getkey()
    )
    X = random_inputs(getkey(), 4, ())
    Js = check_all_modes(m, X)
    assert Js["chain"].shape == (4,)


def test_eqx_sequential(getkey):
    seq = init_model(
        lambda k: eqx.nn.Sequential(
            [
                eqx.nn.Linear(5, 8, key=jax.random.fold_in(k, 0)),
                eqx.nn.Lambda(jnp.tanh),
                eqx.nn.Linear(8, 6, key=jax.random.fold_in(k, 1)),
                eqx.nn.Lambda(jax.nn.sigmoid),
                eqx.nn.Linear(6, 3, key=jax.random.fold_in(k, 2)),
            ]
        ),
        getkey(),
    )
    check_all_modes(seq, random_inputs(getkey(), 3, (5,)))


def _softmax_model(key):
    k1, k2 = jax.random.split(key)
    return eqx.nn.Sequential(
        [
            eqx.nn.Linear(6, 5, key=k1),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Linear(5, 3, key=k2),
            eqx.nn.Lambda(jax.nn.softmax),  # not elementwise: no chain
        ]
    )


CALLABLES = {
    # (model factory, in_shape, out_shape, modes auto may pick): one sweep (no cut to
    # exploit); at these tiny sizes kernel overheads decide between rev and fwd, except
    # where one side is much narrower
    "sin-sum": (lambda k: lambda x: jnp.sin(x) * x.sum(), (4,), (4,), ("rev", "fwd")),
    "softmax": (_softmax_model, (6,), (3,), ("rev", "fwd")),
    "wide": (lambda k: lambda x: jnp.outer(jnp.arange(8.0), jnp.cos(x)), (2,), (8, 2), ("fwd",)),
    "matrix-in": (lambda k: lambda x: jnp.tanh(x @ x.T).sum(0), (3, 2), (3,), ("rev", "fwd")),
    "scan-mlp": (lambda k: eqx.nn.MLP(4, 9, 5, 2, key=k, scan=True), (4,), (9,), ("fwd",)),
}


@pytest.mark.parametrize("name", list(CALLABLES), ids=list(CALLABLES))
def test_callables_autodiff_modes(getkey, record_modes, name):
    build, in_shape, out_shape, expected_auto = CALLABLES[name]
    model = init_model(build, getkey())
    X = random_inputs(getkey(), 3, in_shape)
    Js = check_all_modes(model, X, modes=("rev", "fwd", "auto"))
    assert Js["rev"].shape == (3, *out_shape, *in_shape)
    assert record_modes[:2] == ["rev", "fwd"] and record_modes[2] in expected_auto
    # no layer chain: chain / backprop / the cost model refuse, naming the model
    for mode in ("chain", "backprop"):
        with pytest.raises(jacsens.ChainError, match="cannot read a layer chain|no readable"):
            jacsens.input_jacobian(model, X, mode=mode)
    with pytest.raises(ValueError, match="`batch_size`.*example batch"):
        jacsens.jacobian_cost(model)


def test_callable_closed_form(getkey):
    """`x ↦ sin(x) · Σx` has Jacobian `diag(cos(x) Σx) + sin(x) 1ᵀ`."""
    X = random_inputs(getkey(), 2, (4,))
    Js = all_jacobians(lambda x: jnp.sin(x) * x.sum(), X, ("rev", "fwd", "auto"))
    for b in range(2):
        x = X[b]
        J = jnp.diag(jnp.cos(x) * x.sum()) + jnp.sin(x)[:, None] * jnp.ones((1, 4))
        for Jm in Js.values():
            assert_close(Jm[b], J, 1e-14)


@pytest.mark.parametrize("shape", ["tall", "wide", "bottleneck", "square"])
def test_auto_follows_cost_model(getkey, record_modes, shape):
    in_size, widths, out_size, batch = SHAPES[shape]
    m = random_mlp(getkey(), in_size, widths, out_size, "tanh")
    X = random_inputs(getkey(), batch, m.in_shape)
    J = jacsens.input_jacobian(m, X)
    best = jacsens.jacobian_cost(m, batch, dtype=jnp.float64).best
    assert record_modes == [best]
    assert best in ("rev", "fwd", "chain")
    assert_close(J, jacsens.input_jacobian(m, X, mode="rev"), 1e-10)


# ---------------------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_chunked_equals_unchunked(getkey, mode):
    m = random_mlp(getkey(), 4, (5, 5), 3, "gelu")
    X = random_inputs(getkey(), 6, (4,))
    full = jacsens.input_jacobian(m, X, mode=mode)
    for chunk in (3, 4, 8):  # dividing B, not dividing B, larger than B
        chunked = jacsens.input_jacobian(m, X, mode=mode, chunk_size=chunk)
        assert chunked.shape == full.shape
        assert_close(chunked, full, 1e-14)


# ---------------------------------------------------------------------------------------
# jvp / vjp / input_hessian
# ---------------------------------------------------------------------------------------


PRODUCT_MODELS = {
    "mlp": (lambda k: random_mlp(k, 5, (6,), 3, "sin"), (5,), (3,)),
    "scalar-in": (lambda k: random_mlp(k, "scalar", (6,), 3, "tanh"), (), (3,)),
    "scalar-out": (lambda k: random_mlp(k, 5, (6,), "scalar", "tanh"), (5,), ()),
    "callable": (lambda k: lambda x: jnp.sin(x) * x.sum(), (4,), (4,)),
}


@pytest.mark.parametrize("name", list(PRODUCT_MODELS), ids=list(PRODUCT_MODELS))
def test_jvp_vjp_match_jacobian(getkey, name):
    build, in_shape, out_shape = PRODUCT_MODELS[name]
    model = build(getkey())
    B = 5
    X = random_inputs(getkey(), B, in_shape)
    V = random_inputs(getkey(), B, in_shape)
    U = random_inputs(getkey(), B, out_shape)
    J = jacsens.input_jacobian(model, X, mode="rev")
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    Jf = J.reshape(B, n_out, n_in)
    JV = jnp.einsum("boi,bi->bo", Jf, V.reshape(B, n_in)).reshape(B, *out_shape)
    UJ = jnp.einsum("bo,boi->bi", U.reshape(B, n_out), Jf).reshape(B, *in_shape)
    assert_close(jacsens.jvp(model, X, V), JV, 1e-13)
    assert_close(jacsens.vjp(model, X, U), UJ, 1e-13)
    for chunk in (1, 2, 8):  # dividing B = 5, not dividing, larger than B
        assert_close(jacsens.jvp(model, X, V, chunk_size=chunk), JV, 1e-13)
        assert_close(jacsens.vjp(model, X, U, chunk_size=chunk), UJ, 1e-13)


def test_hessian_closed_form(getkey):
    """y = w2·tanh(W1 x + b1) + b2 has Hessian W1ᵀ diag(w2 ⊙ tanh''(z)) W1."""
    m = perturb_biases(random_mlp(getkey(), 4, (6,), "scalar", "tanh"), getkey())
    X = random_inputs(getkey(), 3, (4,))
    H = jacsens.input_hessian(m, X)
    assert H.shape == (3, 4, 4)
    W1, b1, w2 = m.layers[0].weight, m.layers[0].bias, m.layers[1].weight[0]
    for b in range(3):
        t = jnp.tanh(W1 @ X[b] + b1)
        tanh2 = -2 * t * (1 - t**2)
        assert_close(H[b], W1.T @ ((w2 * tanh2)[:, None] * W1), 1e-13)
        assert_close(H[b], H[b].T, 1e-15)
    assert_close(jacsens.input_hessian(m, X, chunk_size=2), H, 1e-14)


def test_hessian_vector_output_vs_differences(getkey):
    """Central differences of the (exact) Jacobian give the Hessian to O(h²)."""
    m = random_mlp(getkey(), 3, (5,), 2, "sigmoid", final_activation="tanh")
    X = random_inputs(getkey(), 2, (3,))
    H = jacsens.input_hessian(m, X)
    assert H.shape == (2, 2, 3, 3)
    h = 1e-5
    cols = []
    for k in range(3):
        e = h * jnp.eye(3)[k]
        Jp = jacsens.input_jacobian(m, X + e, mode="chain")
        Jm = jacsens.input_jacobian(m, X - e, mode="chain")
        cols.append((Jp - Jm) / (2 * h))
    H_fd = jnp.stack(cols, axis=-1)  # (B, out, in, in)
    assert_close(H, H_fd, 1e-8)
    assert_close(jacsens.input_hessian(m, X, chunk_size=1), H, 1e-14)


# ---------------------------------------------------------------------------------------
# Under jax.jit
# ---------------------------------------------------------------------------------------


def test_traces_under_jit(getkey):
    m = random_mlp(getkey(), 4, (5, 3), 2, "tanh")
    X = random_inputs(getkey(), 3, (4,))
    V = random_inputs(getkey(), 3, (4,))
    U = random_inputs(getkey(), 3, (2,))

    @jax.jit
    def everything(X, V, U):
        Js = {mode: jacsens.input_jacobian(m, X, mode=mode, chunk_size=2) for mode in ALL_MODES}
        return Js, jacsens.jvp(m, X, V), jacsens.vjp(m, X, U), jacsens.input_hessian(m, X)

    Js, jv, vj, H = everything(X, V, U)
    ref = jacsens.input_jacobian(m, X, mode="rev")
    for J in Js.values():
        assert_close(J, ref, 1e-12)
    assert_close(jv, jnp.einsum("boi,bi->bo", ref, V), 1e-12)
    assert_close(vj, jnp.einsum("bo,boi->bi", U, ref), 1e-12)
    assert_close(H, jacsens.input_hessian(m, X), 1e-12)
    # and jit of the model itself through an eqx.filter_jit boundary
    f = eqx.filter_jit(lambda model, X: jacsens.input_jacobian(model, X, mode="chain"))
    assert_close(f(m, X), ref, 1e-12)


# ---------------------------------------------------------------------------------------
# Random shapes
# ---------------------------------------------------------------------------------------


@settings(max_examples=4, deadline=None)
@given(
    in_size=st.integers(1, 7),
    widths=st.lists(st.integers(1, 7), min_size=0, max_size=3),
    out_size=st.integers(1, 7),
    batch=st.integers(1, 4),
    act=st.sampled_from(["tanh", "sigmoid", "softplus", "sin"]),
    seed=st.integers(0, 2**16),
)
def test_modes_agree_random_shapes(in_size, widths, out_size, batch, act, seed):
    key = jax.random.key(seed)
    m = random_mlp(key, in_size, widths, out_size, act)
    X = random_inputs(jax.random.fold_in(key, 1), batch, (in_size,))
    check_all_modes(m, X, fd=False)


def test_empty_batch(getkey):
    """A batch of zero samples gives empty results in every mode (no reshape(0, -1))."""
    m = random_mlp(getkey(), 4, (5,), 3, "tanh")
    X = jnp.zeros((0, 4))
    for mode in ALL_MODES:
        assert jacsens.input_jacobian(m, X, mode=mode).shape == (0, 3, 4)
        assert jacsens.input_jacobian(m, X, mode=mode, chunk_size=2).shape == (0, 3, 4)
    assert jacsens.backprop.input_jacobian(m, X).shape == (0, 3, 4)
    assert jacsens.jvp(m, X, X).shape == (0, 3)
    assert jacsens.vjp(m, X, jnp.zeros((0, 3))).shape == (0, 4)
    assert jacsens.input_hessian(m, X).shape == (0, 3, 4, 4)
    Y = jnp.zeros((0, 3))
    ps = jacsens.per_sample_grads(m, "mse", X, Y)
    assert ps.layers[0].weight.shape == (0, 5, 4)
    kern = jacsens.backprop.weight_grads(
        m, jacsens.backprop.squared_error_grad, X, Y, reduction="none"
    )
    assert kern.layers[1].weight.shape == (0, 3, 5)
    for method in ("ghost", "materialise"):
        assert jacsens.per_sample_grad_norms(m, "mse", X, Y, method=method).shape == (0,)


def test_mixed_dtypes_follow_model_output(getkey):
    """float32 inputs to a float64 model: every mode returns the output's dtype (float64),
    with the same numbers as float64 inputs holding the same values."""
    m = random_mlp(getkey(), 4, (5,), 3, "tanh")
    X32 = random_inputs(getkey(), 2, (4,), dtype=jnp.float32)
    ref = jacsens.input_jacobian(m, X32.astype(jnp.float64), mode="rev")
    for mode in ALL_MODES:
        J = jacsens.input_jacobian(m, X32, mode=mode)
        assert J.dtype == jnp.float64, mode
        assert_close(J, ref, 1e-12)


def test_input_hessian_float32_inputs_to_float64_model_keep_float64():
    """Like input_jacobian, the Hessian is computed and returned in the model's precision."""
    model = jacsens.MLP(4, (6,), 2, "tanh", key=jax.random.key(0), dtype=jnp.float64)
    X64 = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64).astype(jnp.float32)
    H32 = jacsens.input_hessian(model, X64)
    H64 = jacsens.input_hessian(model, X64.astype(jnp.float64))
    assert H32.dtype == jnp.float64
    assert float(jnp.max(jnp.abs(H32 - H64))) <= 1e-14 * float(jnp.max(jnp.abs(H64)))
