"""Bad input: every public function refuses it at trace time, naming the argument, what was
expected and what was given (`jacsens._validate` and the checks of each function)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, random_inputs, random_mlp

import jacsens


@pytest.fixture
def model(getkey):
    return random_mlp(getkey(), 4, (5,), 2, "tanh")


@pytest.fixture
def X(getkey):
    return random_inputs(getkey(), 3, (4,))


# Every function taking (model, X), with the other arguments filled in correctly.
def _call(name, model, X):
    B = np.shape(X)[0] if np.ndim(X) else 1
    Y = jnp.zeros((B, 2))
    return {
        "input_jacobian": lambda: jacsens.input_jacobian(model, X),
        "input_jacobian-chain": lambda: jacsens.input_jacobian(model, X, mode="chain"),
        "jvp": lambda: jacsens.jvp(model, X, jnp.zeros((B, 4))),
        "vjp": lambda: jacsens.vjp(model, X, jnp.zeros((B, 2))),
        "input_hessian": lambda: jacsens.input_hessian(model, X),
        "finite_difference_jacobian": lambda: jacsens.finite_difference_jacobian(model, X),
        "crosscheck": lambda: jacsens.crosscheck(model, X),
        "weight_grad": lambda: jacsens.weight_grad(model, "mse", X, Y),
        "per_sample_grads": lambda: jacsens.per_sample_grads(model, "mse", X, Y),
        "per_sample_grad_norms": lambda: jacsens.per_sample_grad_norms(model, "mse", X, Y),
        "backprop.input_jacobian": lambda: jacsens.backprop.input_jacobian(model, X),
    }[name]()


FUNCTIONS = [
    "input_jacobian",
    "input_jacobian-chain",
    "jvp",
    "vjp",
    "input_hessian",
    "finite_difference_jacobian",
    "crosscheck",
    "weight_grad",
    "per_sample_grads",
    "per_sample_grad_norms",
    "backprop.input_jacobian",
]


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (
            np.zeros((3, 5)),
            ValueError,
            r"`X` must have shape \(batch, \*?\(?4,?\)?\).*got \(3, 5\)",
        ),
        (np.zeros(4), ValueError, r"`X` must have shape \(batch, \*?\(?4,?\)?\).*got \(4,\)"),
        (np.zeros((3, 1, 4)), ValueError, r"`X` must have shape .*got \(3, 1, 4\)"),
        (
            np.zeros(()),
            ValueError,
            r"`X` must have (a leading batch axis|shape).*got (shape )?\(\)",
        ),
        (np.zeros((3, 4), np.int32), TypeError, "`X` must have a floating dtype, got dtype int32"),
        (jnp.zeros((3, 4), bool), TypeError, "`X` must have a floating dtype, got dtype bool"),
        ([[1, 2, 3, 4]], TypeError, "`X` must be floating point, got integer values"),
        ("abc", TypeError, "`X` must be an array, got str"),
    ],
    ids=["wrong-width", "no-batch-axis", "extra-axis", "0-d", "int", "bool", "int-list", "str"],
)
def test_bad_X(model, fn, bad, exc, match):
    with pytest.raises(exc, match=match):
        _call(fn, model, bad)


def test_float_lists_are_accepted(model, X):
    J = jacsens.input_jacobian(model, X.tolist())
    assert_close(J, jacsens.input_jacobian(model, X), 1e-15)
    assert_close(jacsens.input_jacobian(model, np.asarray(X)), J, 1e-15)


def test_scalar_in_model_shapes(getkey):
    m = random_mlp(getkey(), "scalar", (3,), 2)
    assert jacsens.input_jacobian(m, jnp.ones(4)).shape == (4, 2)
    with pytest.raises(ValueError, match=r"`X` must have shape \(batch, \) .*got \(4, 1\)"):
        jacsens.input_jacobian(m, jnp.ones((4, 1)))


def test_callable_that_fails_on_sample_shape(X):
    W = jnp.ones((2, 5))
    f = lambda x: W @ x  # noqa: E731  expects samples of shape (5,)
    for call in (
        lambda: jacsens.input_jacobian(f, X),
        lambda: jacsens.jvp(f, X, X),
        lambda: jacsens.input_hessian(f, X),
        lambda: jacsens.weight_grad(f, "mse", X, jnp.zeros((3, 2))),
    ):
        with pytest.raises(
            ValueError,
            match=r"`model` cannot be applied to one sample of `X` \(shape \(4,\), from `X` of "
            r"shape \(3, 4\)\): TypeError: .*\(5,\) and \(4,\)",
        ):
            call()


def test_bad_models(X):
    with pytest.raises(TypeError, match="`model` must be callable, got int"):
        jacsens.input_jacobian(3, X)
    with pytest.raises(TypeError, match="`model` must return a single array, got PyTreeDef"):
        jacsens.input_jacobian(lambda x: (x, x), X)
    with pytest.raises(TypeError, match="`model` must return a floating array, got dtype int"):
        jacsens.input_jacobian(lambda x: jnp.round(x).astype(jnp.int32), X)


@pytest.mark.parametrize("mode", ["reverse", "Rev", None, "ghost"])
def test_unknown_mode(model, X, mode):
    with pytest.raises(ValueError, match=rf"Unknown `mode` {mode!r}; expected one of \('auto', "):
        jacsens.input_jacobian(model, X, mode=mode)


@pytest.mark.parametrize("chunk", [0, -2, 2.5, True, "2", 2.0])
def test_bad_chunk_size(model, X, chunk):
    match = rf"`chunk_size` must be a positive int or None, got {chunk!r}"
    for call in (
        lambda: jacsens.input_jacobian(model, X, chunk_size=chunk),
        lambda: jacsens.jvp(model, X, X, chunk_size=chunk),
        lambda: jacsens.vjp(model, X, jnp.zeros((3, 2)), chunk_size=chunk),
        lambda: jacsens.input_hessian(model, X, chunk_size=chunk),
        lambda: jacsens.per_sample_grads(model, "mse", X, jnp.zeros((3, 2)), chunk_size=chunk),
        lambda: jacsens.per_sample_grad_norms(model, "mse", X, jnp.zeros((3, 2)), chunk_size=chunk),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_numpy_int_chunk_size(model, X):
    J = jacsens.input_jacobian(model, X, chunk_size=np.int64(2))
    assert_close(J, jacsens.input_jacobian(model, X), 1e-15)


@pytest.mark.parametrize("mode", ["chain", "backprop"])
def test_chain_modes_need_a_chain(X, mode):
    f = lambda x: jnp.sin(x)  # noqa: E731
    with pytest.raises(jacsens.ChainError, match="cannot read a layer chain from function"):
        jacsens.input_jacobian(f, X, mode=mode)
    scan = eqx.nn.MLP(4, 2, 5, 1, key=jax.random.key(0), scan=True)
    with pytest.raises(ValueError, match=r"eqx.nn.MLP\(scan=True\) has no readable layer chain"):
        jacsens.input_jacobian(scan, X, mode=mode)


def test_jvp_vjp_shapes(model, X):
    """Tangents and cotangents must match exactly: never a silent broadcast."""
    for V, shape in (
        (jnp.zeros(4), "(4,)"),
        (jnp.zeros((1, 4)), "(1, 4)"),
        (jnp.zeros((3, 2)), "(3, 2)"),
    ):
        with pytest.raises(
            ValueError, match=rf"`V` must have shape \(3, 4\) .*got {re.escape(shape)}"
        ):
            jacsens.jvp(model, X, V)
    for U, shape in (
        (jnp.zeros(2), "(2,)"),
        (jnp.zeros((3, 4)), "(3, 4)"),
        (jnp.zeros((3, 1)), "(3, 1)"),
    ):
        with pytest.raises(
            ValueError, match=rf"`U` must have shape \(3, 2\) .*got {re.escape(shape)}"
        ):
            jacsens.vjp(model, X, U)
    with pytest.raises(TypeError, match="`V` must have a floating dtype, got dtype int"):
        jacsens.jvp(model, X, jnp.zeros((3, 4), jnp.int32))
    with pytest.raises(TypeError, match="`U` must be floating point"):
        jacsens.vjp(model, X, [[0, 1]] * 3)


def test_jvp_vjp_dtypes(model, X):
    """Tangents must have X's dtype and cotangents the output's: a TypeError naming the
    argument, not JAX's internal one."""
    with pytest.raises(TypeError, match=r"`V` must have the dtype of `X`, float64; got float32"):
        jacsens.jvp(model, X, X.astype(jnp.float32))
    with pytest.raises(
        TypeError, match=r"`U` must have the dtype of the model's output, float64; got float32"
    ):
        jacsens.vjp(model, X, jnp.zeros((3, 2), jnp.float32))
    # float32 inputs to a float64 model: the output (and so the cotangent) is float64
    X32 = X.astype(jnp.float32)
    assert jacsens.vjp(model, X32, jnp.ones((3, 2))).shape == (3, 4)
    with pytest.raises(TypeError, match="`U` must have the dtype of the model's output, float64"):
        jacsens.vjp(model, X32, jnp.ones((3, 2), jnp.float32))


def test_targets(model, X):
    Y = jnp.zeros((3, 2))
    for fn in (jacsens.weight_grad, jacsens.per_sample_grads, jacsens.per_sample_grad_norms):
        with pytest.raises(
            ValueError, match=r"same batch size; got X of shape \(3, 4\) and Y of shape \(2, 2\)"
        ):
            fn(model, "mse", X, Y[:2])
        with pytest.raises(ValueError, match="same batch size"):
            fn(model, "mse", X, jnp.zeros(()))
        # one target per output: a (3,) Y for a (2,) output would broadcast silently
        with pytest.raises(
            ValueError, match=r"`Y` must have shape \(batch, \*\(2,\)\) for loss 'mse'.*got \(3,\)"
        ):
            fn(model, "mse", X, jnp.zeros(3))
        with pytest.raises(
            ValueError, match=r"`Y` must have shape \(batch, \*\(\)\) for loss 'cross_entropy'"
        ):
            fn(model, "cross_entropy", X, jnp.zeros((3, 1), jnp.int32))
        with pytest.raises(
            ValueError, match=r"Unknown `loss` 'l2'; expected one of \['binary_cross_entropy'"
        ):
            fn(model, "l2", X, Y)
        with pytest.raises(TypeError, match="`loss` must be a name or a callable, got int"):
            fn(model, 3, X, Y)
    with pytest.raises(ValueError, match=r"Unknown `method` 'exact'"):
        jacsens.per_sample_grad_norms(model, "mse", X, Y, method="exact")
    # targets of the right shape, integer labels for cross-entropy: accepted
    jacsens.weight_grad(model, "cross_entropy", X, jnp.array([0, 1, 1]))
    jacsens.weight_grad(model, lambda y, t: jnp.sum((y - t) ** 2), X, jnp.zeros(3))


@pytest.mark.parametrize("step", [0.0, -1e-3, float("nan"), "1e-3", True])
def test_bad_finite_difference_step(model, X, step):
    with pytest.raises(ValueError, match=r"`step` must be a positive number or None, got"):
        jacsens.finite_difference_jacobian(model, X, step=step)


def test_cost_and_explain_arguments(model):
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ValueError, match=rf"`batch_size` must be a positive int, got {bad!r}"):
            jacsens.jacobian_cost(model, bad)
    with pytest.raises(jacsens.ChainError):
        jacsens.explain(lambda x: x, file=False)


def test_errors_raised_at_trace_time(model, X):
    """Under jit the checks run while tracing: the same errors, before any computation."""
    with pytest.raises(ValueError, match=r"`X` must have shape \(batch, 4\)"):
        jax.jit(lambda X: jacsens.input_jacobian(model, X, mode="chain"))(jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"`V` must have shape \(3, 4\)"):
        jax.jit(lambda X, V: jacsens.jvp(model, X, V))(X, jnp.zeros(4))
    with pytest.raises(ValueError, match="same batch size"):
        jax.jit(lambda X, Y: jacsens.weight_grad(model, "mse", X, Y))(X, jnp.zeros((2, 2)))
