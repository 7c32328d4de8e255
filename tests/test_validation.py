"""Bad input: every public function refuses it at trace time, naming the argument, what was
expected and what was given (`jacsens._validate` and the checks of each function)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens

from helpers import assert_close, random_inputs, random_mlp


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
    match = rf"`chunk_size` must be a positive int, \"auto\" or None, got {chunk!r}"
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
            ValueError, match=r"`Y` must have shape \(batch, 2\) for loss 'mse'.*got \(3,\)"
        ):
            fn(model, "mse", X, jnp.zeros(3))
        with pytest.raises(
            ValueError,
            match=r"`Y` must have shape \(batch,\) \(integer class labels; cast one-hot",
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
        with pytest.raises(ValueError, match=rf"`batch_size` must be a positive int.*got {bad!r}"):
            jacsens.jacobian_cost(model, bad)
    # a batch size alone gives no input shape for a model without a layer chain
    with pytest.raises(ValueError, match="`batch_size`.*example batch"):
        jacsens.explain(lambda x: x, file=False)


def test_errors_raised_at_trace_time(model, X):
    """Under jit the checks run while tracing: the same errors, before any computation."""
    with pytest.raises(ValueError, match=r"`X` must have shape \(batch, 4\)"):
        jax.jit(lambda X: jacsens.input_jacobian(model, X, mode="chain"))(jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"`V` must have shape \(3, 4\)"):
        jax.jit(lambda X, V: jacsens.jvp(model, X, V))(X, jnp.zeros(4))
    with pytest.raises(ValueError, match="same batch size"):
        jax.jit(lambda X, Y: jacsens.weight_grad(model, "mse", X, Y))(X, jnp.zeros((2, 2)))


# --- targets: one shared check (`_validate.check_targets`) for weight_grad & co., fit and
# the kernel; model output (3,), 6 rows.


@pytest.fixture
def model3(getkey):
    return random_mlp(getkey(), 4, (5,), 3, "tanh")


@pytest.fixture
def X6(getkey):
    return random_inputs(getkey(), 6, (4,))


def _target_users(model, X, key):
    """Every public entry point that takes targets, as `f(loss, Y)`."""

    def fit(loss, Y):
        return jacsens.fit(model, X, Y, loss=loss, epochs=1, key=key, progress=False)

    def kernel(loss, Y):
        grad = {
            "cross_entropy": jacsens.backprop.softmax_cross_entropy_grad,
        }.get(loss, jacsens.backprop.squared_error_grad)
        return jacsens.backprop.weight_grads(model, grad, X, Y)

    return {
        "weight_grad": lambda loss, Y: jacsens.weight_grad(model, loss, X, Y),
        "per_sample_grads": lambda loss, Y: jacsens.per_sample_grads(model, loss, X, Y),
        "per_sample_grad_norms": lambda loss, Y: jacsens.per_sample_grad_norms(model, loss, X, Y),
        "fit": fit,
        "kernel": kernel,
    }


@pytest.mark.parametrize(
    "name", ["weight_grad", "per_sample_grads", "per_sample_grad_norms", "fit", "kernel"]
)
def test_targets_never_broadcast(model3, X6, getkey, name):
    f = _target_users(model3, X6, getkey())[name]
    bad = [
        ("mse", jnp.zeros(6, jnp.int32)),  # integer targets: still one per output
        ("mse", jnp.zeros(6)),
        ("mse", jnp.zeros((6, 1))),
        ("half_squared_error", jnp.zeros((6, 3, 1))),
        ("binary_cross_entropy", jnp.zeros(6)),
        ("binary_cross_entropy", jnp.zeros((6, 3), jnp.int32)[:, :1]),
        ("cross_entropy", jnp.zeros((6, 3), jnp.int32)),  # integer one-hot: ambiguous
        ("cross_entropy", jnp.zeros((6, 1))),
    ]
    for loss, Y in bad:
        if name == "kernel" and (jnp.issubdtype(Y.dtype, jnp.integer) and Y.shape == (6, 3)):
            continue  # the kernel takes integer targets of the output's shape
        if name == "kernel" and jnp.issubdtype(Y.dtype, jnp.integer) and Y.shape == (6,):
            continue  # ... and integer labels (checked below)
        labels = loss == "cross_entropy" and jnp.issubdtype(Y.dtype, jnp.integer)
        expected = "(batch,)" if labels else "(batch, 3)"
        pattern = f"`Y` must have shape {re.escape(expected)}.*got {re.escape(str(Y.shape))}"
        with pytest.raises(ValueError, match=pattern):
            f(loss, Y)
    # the right shapes are accepted: float targets, integer labels for cross-entropy
    f("mse", jnp.zeros((6, 3)))
    f("mse", jnp.zeros((6, 3), jnp.int32))
    f("cross_entropy", jnp.array([0, 1, 2, 2, 1, 0]))
    f("binary_cross_entropy", jnp.ones((6, 3)))


def test_validation_targets_are_checked_in_fit(model3, X6, getkey):
    fit = _target_users(model3, X6, getkey())["fit"]
    with pytest.raises(ValueError, match=r"`validation\[1\]` must have shape \(batch, 3\)"):
        jacsens.fit(
            model3, X6, jnp.zeros((6, 3)), epochs=1, key=getkey(), validation=(X6, jnp.zeros(6))
        )
    # a callable loss cannot be checked: its own (scalar-per-sample) targets are accepted
    fit(lambda y, t: jnp.sum((y - t) ** 2), jnp.zeros(6))


@pytest.mark.parametrize(
    "name", ["weight_grad", "per_sample_grads", "per_sample_grad_norms", "fit", "kernel"]
)
@pytest.mark.parametrize("label", [3, 5, -1])
def test_class_labels_out_of_range(model3, X6, getkey, name, label):
    f = _target_users(model3, X6, getkey())[name]
    Y = jnp.array([0, 1, 2, label, 1, 0])
    with pytest.raises(
        ValueError,
        match=rf"`Y` must hold class labels in \[0, 3\) for a model output with 3 classes, "
        rf"got {label} at index 3",
    ):
        f("cross_entropy", Y)


def test_class_labels_range_check_numbers(model3, X6):
    # in range: the gradient is finite and equals the one-hot float targets' gradient
    labels = jnp.array([0, 1, 2, 2, 1, 0])
    onehot = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    g_int = jacsens.weight_grad(model3, "cross_entropy", X6, labels)
    g_hot = jacsens.weight_grad(model3, "cross_entropy", X6, onehot)
    assert_close(g_int.layers[0].weight, g_hot.layers[0].weight, 1e-12)
    k_int = jacsens.backprop.weight_grads(
        model3, jacsens.backprop.softmax_cross_entropy_grad, X6, labels
    )
    assert_close(k_int.layers[0].weight, g_hot.layers[0].weight, 1e-12)
    # labels under jit are not concrete: not range-checked there, but shapes still are
    from jacsens._validate import check_targets

    jax.jit(lambda Y: check_targets("cross_entropy", Y, (3,)))(labels + 5)
    with pytest.raises(ValueError, match=r"no class axis"):
        check_targets("cross_entropy", jnp.zeros(6, jnp.int32), ())
    # the named function itself is recognised as the named loss
    with pytest.raises(ValueError, match=r"for loss 'mse'"):
        check_targets(jacsens.LOSSES["mse"], jnp.zeros(6), (3,))


def test_kernel_takes_integer_labels_only_for_cross_entropy():
    """`squared_error_grad` computes y_pred − y_true: integer labels would broadcast."""
    model = jacsens.MLP(4, (5,), 3, key=jax.random.key(0), dtype=jnp.float64)
    X = jnp.ones((6, 4), jnp.float64)
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=r"`Y` must have shape \(batch, 3\)"):
        jacsens.backprop.weight_grads(model, jacsens.backprop.squared_error_grad, X, labels)
    g_labels = jacsens.backprop.weight_grads(
        model, jacsens.backprop.softmax_cross_entropy_grad, X, labels
    )
    g_onehot = jacsens.backprop.weight_grads(
        model, jacsens.backprop.softmax_cross_entropy_grad, X, jax.nn.one_hot(labels, 3)
    )
    for a, b in zip(jax.tree.leaves(g_labels), jax.tree.leaves(g_onehot), strict=True):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-14
