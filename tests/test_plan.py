"""The plan (`jacsens._plan`): one model analysis per call signature, the dtype rule, mode
objects, and the layer chain verified against the model's own forward pass."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens import _plan
from jacsens._program._chain import chain_forward, read_chain

from helpers import assert_close, init_model, random_inputs, random_mlp


@pytest.fixture
def fresh_plans():
    _plan.clear_cache()
    yield
    _plan.clear_cache()


def _analyses(fn):
    before = _plan.analyses
    fn()
    return _plan.analyses - before


def test_one_analysis_per_signature(getkey, fresh_plans):
    m = random_mlp(getkey(), 52, (20, 10), 1, "tanh")
    X = random_inputs(getkey(), 16, (52,))
    assert _analyses(lambda: jacsens.input_jacobian(m, X)) == 1
    # repeated call, new weights of the same structure, new values of X: no analysis
    m2 = random_mlp(getkey(), 52, (20, 10), 1, "tanh")
    assert _analyses(lambda: jacsens.input_jacobian(m, X)) == 0
    assert _analyses(lambda: jacsens.input_jacobian(m2, X + 1.0)) == 0
    # a new batch size or mode is only a new cost-model look-up; a new dtype a new analysis
    assert _analyses(lambda: jacsens.input_jacobian(m, X[:3])) == 0
    assert _analyses(lambda: jacsens.input_jacobian(m, X, mode="fwd")) == 0
    assert _analyses(lambda: jacsens.input_jacobian(m, X.astype(jnp.float32))) == 1


def test_one_analysis_per_sensitivity_and_none_inside_jit(getkey, fresh_plans):
    m = random_mlp(getkey(), 5, (7,), 2, "tanh")
    X = random_inputs(getkey(), 40, (5,))
    n = _analyses(lambda: jacsens.sensitivity(m, X, chunk_size=16, progress=False))
    assert n == 1
    assert _analyses(lambda: jacsens.sensitivity(m, X, chunk_size=16, progress=False)) == 0

    @jax.jit
    def f(X):
        return jacsens.input_jacobian(m, X, mode="rev")

    _plan.clear_cache()
    assert _analyses(lambda: f(X)) == 1
    assert _analyses(lambda: f(X + 1.0)) == 0  # compiled: no Python at all


def test_non_chain_model_analysed_once(getkey, fresh_plans):
    model = init_model(
        lambda k: eqx.nn.Sequential(
            [eqx.nn.Conv1d(1, 3, 3, padding=1, key=k), eqx.nn.Lambda(jnp.tanh)]
        ),
        getkey(),
    )
    X = random_inputs(getkey(), 4, (1, 8))
    assert _analyses(lambda: jacsens.input_jacobian(model, X)) == 1
    assert _analyses(lambda: jacsens.input_jacobian(model, X)) == 0


@pytest.mark.parametrize("fn", ["input_jacobian", "jvp", "vjp", "input_hessian", "saliency"])
def test_dtype_rule_float64_model_float32_inputs(getkey, fn):
    """Derivatives come back in the model's output dtype, computed at its precision."""
    m = random_mlp(getkey(), 4, (6,), 3, "tanh")  # float64 weights
    X64 = random_inputs(getkey(), 5, (4,))
    X32 = X64.astype(jnp.float32)
    x_back = X32.astype(jnp.float64)  # what the model sees
    if fn == "input_jacobian":
        got, want = jacsens.input_jacobian(m, X32), jax.vmap(jax.jacrev(m))(x_back)
    elif fn == "jvp":
        V = X32 * 0.5
        got = jacsens.jvp(m, X32, V)
        want = jax.vmap(lambda x, v: jax.jvp(m, (x,), (v,))[1])(x_back, V.astype(jnp.float64))
    elif fn == "vjp":
        U = random_inputs(getkey(), 5, (3,))
        got = jacsens.vjp(m, X32, U)
        want = jax.vmap(lambda x, u: jax.vjp(m, x)[1](u)[0])(x_back, U)
    elif fn == "input_hessian":
        got, want = jacsens.input_hessian(m, X32), jax.vmap(jax.hessian(m))(x_back)
    else:
        got = jacsens.attribution.saliency(m, X32, target=1, abs=False)
        want = jax.vmap(jax.grad(lambda x: m(x)[1]))(x_back)
    assert got.dtype == jnp.float64
    assert_close(got, want, 1e-12)


def test_mode_objects_and_names(getkey):
    m = random_mlp(getkey(), 6, (2,), 6, "sigmoid")
    X = random_inputs(getkey(), 3, (6,))
    want = jax.vmap(jax.jacrev(m))(X)
    modes = (jacsens.Rev(), jacsens.Fwd(), jacsens.Chain(), jacsens.Backprop(), jacsens.Segments())
    for mode in (*modes, "segments"):
        assert_close(jacsens.input_jacobian(m, X, mode=mode), want, 1e-12)
    with pytest.raises(ValueError, match="Unknown `mode` 'reverse'"):
        jacsens.input_jacobian(m, X, mode="reverse")
    assert _plan.make_plan(m, X, "auto").mode.name in {"rev", "chain", "fwd"}


def test_eqx_mlp_depth0_final_activation_is_not_a_chain(getkey):
    """Equinox ignores `final_activation` at depth 0; a chain that added diag(f') would give
    wrong chain/backprop Jacobians, weight gradients, ghost norms and sensitivities."""
    m = init_model(lambda k: eqx.nn.MLP(4, 3, 5, 0, final_activation=jnp.tanh, key=k), getkey())
    X = random_inputs(getkey(), 6, (4,))
    x = X[0]
    assert_close(m(x), m.layers[0](x), 1e-15)  # Equinox's behaviour, which we must follow
    with pytest.raises(jacsens.ChainError, match="does not compute what the model computes"):
        read_chain(m)
    want = jax.vmap(jax.jacrev(m))(X)
    assert_close(jacsens.input_jacobian(m, X), want, 1e-12)
    for mode in ("chain", "backprop"):
        with pytest.raises(jacsens.ChainError):
            jacsens.input_jacobian(m, X, mode=mode)
    Y = random_inputs(getkey(), 6, (3,))
    norms = jacsens.per_sample_grad_norms(m, "mse", X, Y)
    grads = jacsens.per_sample_grads(m, "mse", X, Y)
    flat = jnp.sqrt(sum(jnp.sum(g.reshape(6, -1) ** 2, 1) for g in jax.tree.leaves(grads)))
    assert_close(norms, flat, 1e-12)


_ACCEPTED = {
    "jacsens-mlp": lambda k: jacsens.MLP(4, (5, 6), 3, activation="gelu", key=k),
    "jacsens-mlp-final": lambda k: jacsens.MLP(
        4, (5,), 3, activation="tanh", final_activation="sigmoid", key=k
    ),
    "jacsens-mlp-depth0": lambda k: jacsens.MLP(
        4, (), 3, activation="tanh", final_activation="sin", key=k
    ),
    "jacsens-mlp-scalar": lambda k: jacsens.MLP("scalar", (5,), "scalar", key=k),
    "eqx-mlp": lambda k: eqx.nn.MLP(4, 3, 5, 2, activation=jax.nn.silu, key=k),
    "eqx-mlp-final": lambda k: eqx.nn.MLP(
        4, 3, 5, 1, activation=jnp.sin, final_activation=jax.nn.softplus, key=k
    ),
    "eqx-mlp-depth0": lambda k: eqx.nn.MLP(4, 3, 5, 0, key=k),
    "eqx-mlp-nobias": lambda k: eqx.nn.MLP(4, 3, 5, 2, use_bias=False, key=k),
    "sequential": lambda k: eqx.nn.Sequential(
        [
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Linear(4, 6, key=jax.random.fold_in(k, 0)),
            eqx.nn.Lambda(jax.nn.elu),
            eqx.nn.Lambda(jax.nn.sigmoid),
            eqx.nn.Identity(),
            eqx.nn.Linear(6, 3, use_bias=False, key=jax.random.fold_in(k, 1)),
            jacsens.ACTIVATIONS["leaky_relu"],
        ]
    ),
    "linear": lambda k: eqx.nn.Linear(4, 3, key=k),
}


@pytest.mark.parametrize("name", list(_ACCEPTED))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_read_chain_computes_what_the_model_computes(getkey, name, dtype):
    model = init_model(_ACCEPTED[name], getkey())
    model = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)
    chain = read_chain(model)
    X = random_inputs(getkey(), 5, chain.in_shape, dtype=dtype)
    y, _ = chain_forward(chain, X)
    tol = 1e-5 if dtype == jnp.float32 else 1e-13
    assert_close(y, jax.vmap(model)(X), tol)
    J = jacsens.input_jacobian(model, X, mode="chain")
    assert J.dtype == dtype
    assert_close(J, jax.vmap(jax.jacrev(model))(X), tol)


def test_plan_is_cached_and_hashable(getkey, fresh_plans):
    m = random_mlp(getkey(), 3, (4,), 2, "tanh")
    X = random_inputs(getkey(), 2, (3,))
    p1 = _plan.make_plan(m, X, "rev")
    p2 = _plan.make_plan(m, np.asarray(X), "rev")
    assert p1 is p2 and hash(p1) == hash(p2)
    assert _plan.make_plan(m, X, "fwd") is not p1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_peak_bytes_counts_the_seeds_each_mode_carries(getkey, fresh_plans, dtype):
    # fwd pushes n_in tangents through the widest layer, rev pulls n_out cotangents: the
    # two estimates differ by exactly (n_in - n_out) seeds of the widest width per row
    n_in, width, n_out, B = 40, 24, 3, 8
    m = random_mlp(getkey(), n_in, (width,), n_out, "tanh", dtype=dtype)
    X = random_inputs(getkey(), B, (n_in,), dtype=dtype)
    fwd = _plan.make_plan(m, X, "fwd").peak_bytes(B)
    rev = _plan.make_plan(m, X, "rev").peak_bytes(B)
    widest = max(n_in, width, n_out)
    assert fwd - rev == jnp.dtype(dtype).itemsize * B * (n_in - n_out) * widest
    # the result and its copy are in every estimate, and it is linear in the batch
    assert rev >= 2 * jnp.dtype(dtype).itemsize * B * n_in * n_out
    assert _plan.make_plan(m, X, "rev").peak_bytes(2 * B) == 2 * rev


def test_plan_is_made_for_the_chunk_it_runs_in(getkey, fresh_plans):
    m = random_mlp(getkey(), 5, (7,), 2, "tanh")
    X = random_inputs(getkey(), 64, (5,))
    plan = _plan.make_plan(m, X, "auto", chunk_size=4)
    assert plan.batch_size == 4 and plan.cost().batch_size == 4
    assert plan.mode == _plan.make_plan(m, X[:4], "auto").mode
    # a chunk larger than the batch is the batch
    assert _plan.make_plan(m, X, "auto", chunk_size=1000).batch_size == 64
    assert _plan.make_plan(m, X, "auto").batch_size == 64


@pytest.mark.parametrize("n_in, n_out, expected", [(6, 2, "rev"), (2, 6, "fwd"), (3, 3, "rev")])
def test_auto_without_any_estimate_falls_back_by_shape(
    getkey, fresh_plans, monkeypatch, n_in, n_out, expected
):
    # no layer chain and a program that cannot be traced: the cost model has nothing to
    # go on, and auto takes one sweep per output (rev) unless the output is wider
    def untraceable(*args, **kwargs):
        raise ValueError("program: cannot be traced")

    monkeypatch.setattr(_plan, "trace_program", untraceable)
    W = random_inputs(getkey(), n_out, (n_in,))

    def model(x):
        return jnp.tanh(W @ x)

    X = random_inputs(getkey(), 3, (n_in,))
    plan = _plan.make_plan(model, X, "auto")
    assert plan.chain is None and plan.program is None
    assert plan.mode.name == expected
    assert_close(jacsens.input_jacobian(model, X), jax.vmap(jax.jacrev(model))(X), 1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_numpy_evaluator_matches_jax(getkey, dtype):
    """The chain check evaluates traced programs with NumPy; it must compute what JAX does,
    and refuse (`Unsupported`) what it does not cover."""
    from jacsens._program._numpy_eval import Unsupported, evaluate

    X = random_inputs(getkey(), 3, (5,), dtype=dtype)
    W = random_inputs(getkey(), 4, (5,), dtype=dtype)
    fns = [
        lambda x: jax.nn.gelu(W @ x) + jax.nn.relu(x[:4]) * jax.nn.sigmoid(x[1:]),
        lambda x: jnp.tanh(jnp.einsum("ij,j->i", W, x)) ** 3 - jnp.sum(jnp.exp(-x)),
        lambda x: jax.nn.softplus(x).reshape(5, 1) * jax.nn.silu(W.T @ x[:4]),
        lambda x: jnp.where(x > 0, x, 0.01 * x).max() + jax.nn.elu(x).min(),
    ]
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    for fn in fns:
        (got,) = evaluate(fn, X[0])
        assert_close(got, fn(X[0]), tol)
    conv = eqx.nn.Conv1d(1, 2, 3, key=getkey())
    with pytest.raises(Unsupported):
        evaluate(conv, jnp.ones((1, 6)))


class _Scaled(eqx.Module):
    """`s · tanh(W x)`: an array leaf and a non-array leaf (static under jit)."""

    W: jax.Array
    s: float

    def __call__(self, x):
        return self.s * jnp.tanh(self.W @ x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_compiled_dispatch_sees_new_weights_and_static_leaves(getkey, fresh_plans, dtype):
    """`input_jacobian` reuses one compiled function per model structure and plan (and the
    last call's model, weakly): new weights, a new static leaf, and the same model again
    after another must each give their own Jacobian, never a stale one."""
    import gc

    from jacsens import _jacobian

    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    X = random_inputs(getkey(), 4, (5,), dtype=dtype)
    m1 = random_mlp(getkey(), 5, (7,), 3, dtype=dtype)
    m2 = jax.tree.map(lambda a: 1.5 * a if eqx.is_inexact_array(a) else a, m1)
    W = random_inputs(getkey(), 3, (5,), dtype=dtype)
    s2, s3 = _Scaled(W, 2.0), _Scaled(W, 3.0)
    for model in (m1, m2, m1, m1, s2, s3, s2):
        J = jacsens.input_jacobian(model, X)
        assert J.dtype == jnp.dtype(dtype)
        assert_close(J, jax.vmap(jax.jacrev(model))(X), tol)
    # m1 and m2 share a structure and a plan: one compiled function for both
    J3 = jacsens.input_jacobian(s3, X)
    assert_close(J3, 1.5 * jacsens.input_jacobian(s2, X), tol)
    # the last call's model is held weakly: collected, its entry (and arrays) go with it
    assert _jacobian._last_call
    del s2, model
    gc.collect()
    assert not _jacobian._last_call
    # under an outer jit the model's arrays are tracers: nothing is kept, and the result
    # is the Jacobian of the weights passed in
    f = jax.jit(lambda m, X: jacsens.input_jacobian(m, X))
    assert_close(f(m2, X), jax.vmap(jax.jacrev(m2))(X), tol)
    assert_close(f(m1, X), jax.vmap(jax.jacrev(m1))(X), tol)
    assert not _jacobian._last_call
