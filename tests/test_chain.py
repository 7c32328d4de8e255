"""Layer-chain reading and the forward pass (`jacsens._program._chain`), the matrix-chain
order (`jacsens._order`) and the chain mode."""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jacsens
from jacsens._order import optimal_order
from jacsens._program._chain import (
    ActStep,
    LinearStep,
    chain_forward,
    read_chain,
    try_read_chain,
)

from helpers import (
    assert_close,
    describe_tree,
    init_model,
    parenthesisations,
    random_inputs,
    random_mlp,
    tree_cost,
)


def _kinds(chain):
    return [
        f"W{s.shape[0]}x{s.shape[1]}" if isinstance(s, LinearStep) else s.activation.name
        for s in chain.steps
    ]


# ---------------------------------------------------------------------------------------
# Reading the chain
# ---------------------------------------------------------------------------------------


def test_read_jacsens_mlp(getkey):
    m = random_mlp(getkey(), 5, (7, 3), 2, "sigmoid", final_activation="tanh")
    chain = read_chain(m)
    assert _kinds(chain) == ["W7x5", "sigmoid", "W3x7", "sigmoid", "W2x3", "tanh"]
    assert chain.in_shape == (5,) and chain.out_shape == (2,)
    assert chain.dims == [5, 7, 3, 2]
    for step, layer in zip(chain.linears, m.layers, strict=True):
        assert step.getter(m) is layer
        np.testing.assert_array_equal(step.weight, layer.weight)


@pytest.mark.parametrize(
    "act, name",
    [
        (jax.nn.tanh, "tanh"),
        (jax.nn.relu, "relu"),
        (jax.nn.sigmoid, "sigmoid"),
        (jax.nn.gelu, "gelu"),
    ],
)
def test_read_eqx_mlp(getkey, act, name):
    m = init_model(lambda k: eqx.nn.MLP(4, 3, 6, 2, activation=act, key=k), getkey())
    assert _kinds(read_chain(m)) == ["W6x4", name, "W6x6", name, "W3x6"]
    m = init_model(
        lambda k: eqx.nn.MLP(4, 3, 6, 1, activation=act, final_activation=jax.nn.sigmoid, key=k),
        getkey(),
    )
    assert _kinds(read_chain(m)) == ["W6x4", name, "W3x6", "sigmoid"]


def test_read_scalar_sizes(getkey):
    m = init_model(lambda k: eqx.nn.MLP("scalar", "scalar", 5, 1, key=k), getkey())
    chain = read_chain(m)
    assert chain.in_shape == () and chain.out_shape == ()
    assert chain.dims == [1, 5, 1]
    m = random_mlp(getkey(), "scalar", (4,), "scalar")
    chain = read_chain(m)
    assert chain.in_shape == () and chain.out_shape == () and chain.dims == [1, 4, 1]


def test_read_sequential(getkey):
    seq = eqx.nn.Sequential(
        [
            eqx.nn.Lambda(jnp.sin),
            eqx.nn.Linear(4, 6, key=getkey()),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Identity(),
            eqx.nn.Linear(6, 2, use_bias=False, key=getkey()),
            eqx.nn.Lambda(jax.nn.softplus),
        ]
    )
    chain = read_chain(seq)
    assert _kinds(chain) == ["sin", "W6x4", "tanh", "W2x6", "softplus"]
    assert chain.in_shape == (4,) and chain.out_shape == (2,)
    assert chain.linears[1].bias is None
    assert chain.linears[1].getter(seq) is seq.layers[4]
    X = random_inputs(getkey(), 3, (4,), dtype=seq.layers[1].weight.dtype)
    y, _ = chain_forward(chain, X)
    assert_close(y, jax.vmap(seq)(X), 1e-6)


def test_read_nested(getkey):
    inner = random_mlp(getkey(), 3, (5,), 4, "silu")
    seq = eqx.nn.Sequential(
        [inner, eqx.nn.Lambda(jax.nn.sigmoid), eqx.nn.Linear(4, 2, key=getkey())]
    )
    chain = read_chain(seq)
    assert _kinds(chain) == ["W5x3", "silu", "W4x5", "sigmoid", "W2x4"]
    assert chain.linears[0].getter(seq) is inner.layers[0]


def test_custom_activation_is_read(getkey):
    act = jacsens.Activation("cube", lambda z: z**3, lambda z: 3 * z**2)
    seq = eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=getkey()), eqx.nn.Lambda(act)])
    chain = read_chain(seq)
    assert isinstance(chain.steps[1], ActStep) and chain.steps[1].activation is act


@pytest.mark.parametrize(
    "build",
    [
        lambda k: lambda x: jnp.sin(x) * x.sum(),
        lambda k: eqx.nn.MLP(3, 2, 4, 1, key=k, scan=True),
        lambda k: eqx.nn.MLP(3, 2, 4, 1, activation=lambda z: z**2, key=k),
        lambda k: eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=k), eqx.nn.Lambda(jax.nn.softmax)]),
        lambda k: eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=k), eqx.nn.Linear(5, 2, key=k)]),
        lambda k: eqx.nn.Sequential([eqx.nn.Lambda(jnp.tanh)]),
        lambda k: eqx.nn.Conv1d(1, 1, 3, key=k),
    ],
    ids=["callable", "scan", "unknown-act", "softmax", "width-mismatch", "no-linear", "conv"],
)
def test_unreadable_chain(getkey, build):
    model = init_model(build, getkey())
    with pytest.raises(jacsens.ChainError, match="model"):
        read_chain(model)
    assert try_read_chain(model) is None
    assert issubclass(jacsens.ChainError, ValueError)
    # a batch size alone does not give the input shape of a model without a chain
    with pytest.raises(ValueError, match="`batch_size`.*example batch"):
        jacsens.jacobian_cost(model)
    with pytest.raises(ValueError, match="`batch_size`.*example batch"):
        jacsens.explain(model, file=False)


# ---------------------------------------------------------------------------------------
# Forward pass and the chain Jacobian
# ---------------------------------------------------------------------------------------


def test_chain_forward(getkey):
    m = random_mlp(getkey(), 4, (5, 3), 2, "tanh", final_activation="sigmoid")
    X = random_inputs(getkey(), 6, (4,))
    chain = read_chain(m)
    y, cache = chain_forward(chain, X)
    assert_close(y, jax.vmap(m)(X), 1e-14)
    # derivative vectors after W1, W2 and W3; ones at the input (no activation there)
    assert chain.spec.flags == (False, True, True, True)
    assert_close(cache.input_deriv, jnp.ones_like(X), 0)
    z1 = X @ m.layers[0].weight.T + m.layers[0].bias
    z2 = jnp.tanh(z1) @ m.layers[1].weight.T + m.layers[1].bias
    z3 = jnp.tanh(z2) @ m.layers[2].weight.T + m.layers[2].bias
    for got, want in zip(cache.pre, (z1, z2, z3), strict=True):
        assert_close(got, want, 1e-14)
    assert_close(cache.inputs[1], jnp.tanh(z1), 1e-14)
    assert_close(cache.derivs[0], 1 - jnp.tanh(z1) ** 2, 1e-14)
    assert_close(cache.derivs[1], 1 - jnp.tanh(z2) ** 2, 1e-14)
    assert_close(cache.derivs[2], jax.nn.sigmoid(z3) * (1 - jax.nn.sigmoid(z3)), 1e-14)


def test_consecutive_activations_multiply_their_derivatives(getkey):
    """Two elementwise functions in a row: the diagonal factor is `g'(f(z)) · f'(z)`, each
    derivative at its own input (a bug that kept only the last one differed from rev by 40%)."""
    seq = init_model(
        lambda k: eqx.nn.Sequential(
            [
                eqx.nn.Linear(4, 6, key=jax.random.fold_in(k, 0)),
                eqx.nn.Lambda(jnp.tanh),
                eqx.nn.Lambda(jax.nn.sigmoid),
                eqx.nn.Linear(6, 3, key=jax.random.fold_in(k, 1)),
                eqx.nn.Lambda(jnp.sin),
                eqx.nn.Lambda(jnp.tanh),
            ]
        ),
        getkey(),
    )
    X = random_inputs(getkey(), 5, (4,))
    chain = read_chain(seq)
    _, cache = chain_forward(chain, X)
    z1 = X @ seq.layers[0].weight.T + seq.layers[0].bias
    s = jax.nn.sigmoid(jnp.tanh(z1))
    assert_close(cache.derivs[0], s * (1 - s) * (1 - jnp.tanh(z1) ** 2), 1e-14)
    z2 = s @ seq.layers[3].weight.T + seq.layers[3].bias
    assert_close(cache.derivs[1], (1 - jnp.tanh(jnp.sin(z2)) ** 2) * jnp.cos(z2), 1e-14)
    J_rev = jax.vmap(jax.jacrev(seq))(X)
    for mode in ("chain", "backprop", "auto"):
        assert_close(jacsens.input_jacobian(seq, X, mode=mode), J_rev, 1e-12)


def test_chain_jacobian_affine_is_weight_product(getkey):
    """Without activations the Jacobian is the (unbatched) product of the weights."""
    seq = init_model(
        lambda k: eqx.nn.Sequential(
            [
                eqx.nn.Linear(5, 9, key=jax.random.fold_in(k, 0)),
                eqx.nn.Linear(9, 2, key=jax.random.fold_in(k, 1)),
                eqx.nn.Linear(2, 7, key=jax.random.fold_in(k, 2)),
            ]
        ),
        getkey(),
    )
    X = random_inputs(getkey(), 3, (5,))
    J = jacsens.input_jacobian(seq, X, mode="chain")
    W = seq.layers[2].weight @ seq.layers[1].weight @ seq.layers[0].weight
    assert J.shape == (3, 7, 5)
    for b in range(3):
        assert_close(J[b], W, 1e-13)


# ---------------------------------------------------------------------------------------
# The matrix-chain order
# ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    dims=st.lists(st.integers(1, 60), min_size=2, max_size=7),
    diag_bits=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_optimal_order_brute_force(dims, diag_bits):
    n = len(dims) - 1
    has_diag = tuple(diag_bits[: n + 1])
    order = optimal_order(tuple(dims), has_diag)
    trees = parenthesisations(1, n)
    costs = {describe_tree(t): tree_cost(t, dims, has_diag) for t in trees}
    assert len(costs) == len(trees)  # descriptions are unambiguous
    assert order.cost == min(costs.values())
    # the order it reports is one of the parenthesisations, and has the cost it claims
    assert costs[order.describe()] == order.cost


def test_optimal_order_counts():
    # Catalan numbers: every parenthesisation of 5 factors is enumerated
    assert len(parenthesisations(1, 5)) == 14
    assert optimal_order((3,), (False,)).cost == 0
    # a single product, p_2 * p_1 * p_0
    assert optimal_order((2, 3, 4), (False, False, False)).cost == 24
    # ... plus the scaling of the smaller neighbour (min(4, 2) * 3)
    assert optimal_order((2, 3, 4), (False, True, False)).cost == 30


def test_bottleneck_splits_at_narrow_layer(getkey):
    m = random_mlp(getkey(), 784, (1024, 16, 1024), 784, "tanh", dtype=jnp.float32)
    cost = jacsens.jacobian_cost(m, 64)
    # chain splits at the narrow layer; so does the segment plan, which auto weighs on
    # layer chains too and runs here (estimated >10% faster on the chain's footing)
    assert cost.order == "(W4 · W3) · (W2 · W1)"
    assert cost.best == "segments" and cost.bracketing == "fwd(S2) · rev(S1)"
    assert "segment plan: fwd(S2) · rev(S1)" in str(cost)
    for structured in ("chain", "segments"):
        assert cost.flops[structured] * 5 < cost.flops["rev"]
        assert cost.flops[structured] * 5 < cost.flops["fwd"]
    assert cost.batch_size == 64
    modes = {"rev", "fwd", "chain", "backprop", "segments"}
    assert set(cost.flops) == set(cost.bytes) == modes
    assert "<- auto" in str(cost) and "chain" in str(cost)


def test_bottleneck_chain_jacobian_matches_rev(getkey):
    m = random_mlp(getkey(), 48, (64, 3, 64), 48, "tanh")
    X = random_inputs(getkey(), 2, (48,))
    assert jacsens.jacobian_cost(m).order == "(W4 · W3) · (W2 · W1)"
    J_chain = jacsens.input_jacobian(m, X, mode="chain")
    J_rev = jacsens.input_jacobian(m, X, mode="rev")
    assert_close(J_chain, J_rev, 1e-12)
    # the Jacobian factors through the 3-wide layer: rank at most 3
    assert int(np.linalg.matrix_rank(np.asarray(J_chain[0]), tol=1e-10)) == 3


@pytest.mark.parametrize(
    "in_size, widths, out_size, expected",
    [
        (100, (50, 50), 1, "rev"),  # tall: one reverse pass
        (1, (50, 50), 100, "fwd"),  # wide: one forward pass
    ],
)
def test_cost_model_picks_rev_fwd(getkey, in_size, widths, out_size, expected):
    """For a single output (input) the left-to-right (right-to-left) order is optimal, and
    rev (fwd) is no more expensive than chain."""
    m = random_mlp(getkey(), in_size, widths, out_size, "tanh", dtype=jnp.float32)
    cost = jacsens.jacobian_cost(m, 8)
    # equal FLOPs up to the identity-seed product (2 · 1 · 50, once per batch)
    assert cost.flops[expected] <= cost.flops["chain"] + 2 * 50
    order = "(W3 · W2) · W1" if expected == "rev" else "W3 · (W2 · W1)"
    assert cost.order == order


# ---------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------


def test_explain(getkey, capsys):
    m = random_mlp(getkey(), 12, (16, 2, 16), 12, "sigmoid", final_activation="tanh")
    text = jacsens.explain(m, 4)
    assert capsys.readouterr().out == text
    expected_product = (
        "∂y/∂x = diag(tanh'(z4)) · W4 · diag(sigmoid'(z3)) · W3 · diag(sigmoid'(z2)) · W2 "
        "· diag(sigmoid'(z1)) · W1"
    )
    assert expected_product in text
    lines = text.splitlines()

    def row(name):
        (line,) = [ln for ln in lines if ln.strip().startswith(name + " ")]
        return line

    for name, shape in [("W1", "16×12"), ("W2", "2×16"), ("W3", "16×2"), ("W4", "12×16")]:
        assert shape in row(name) and row(name).rstrip().endswith("dense")
    for name, shape in [
        ("diag(sigmoid'(z1))", "16×16"),
        ("diag(sigmoid'(z2))", "2×2"),
        ("diag(sigmoid'(z3))", "16×16"),
        ("diag(tanh'(z4))", "12×12"),
    ]:
        assert shape in row(name) and "diagonal" in row(name)
    assert "Optimal order of the dense factors: (W4 · W3) · (W2 · W1)" in text
    assert "batch size 4" in text
    # file=False: nothing printed, text still returned
    assert jacsens.explain(m, file=False) != "" and capsys.readouterr().out == ""


class _ScaledMLP(jacsens.MLP):
    """Overrides the forward pass: its layer chain no longer describes it."""

    def __call__(self, x, *, key=None):
        return 2.0 * super().__call__(x) + jnp.sum(x**2)


def test_subclass_overriding_call_is_not_read_as_a_chain():
    model = _ScaledMLP(6, (8, 2, 8), 6, key=jax.random.key(0), dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(1), (3, 6), jnp.float64)
    with pytest.raises(jacsens.ChainError, match="overrides MLP.__call__"):
        jacsens.read_chain(model)
    with pytest.raises(jacsens.ChainError, match="overrides"):
        jacsens.input_jacobian(model, X, mode="chain")
    # auto falls back to autodiff, which sees the subclass's own __call__
    J_ref = jax.vmap(jax.jacrev(model))(X)
    assert jnp.allclose(jacsens.input_jacobian(model, X), J_ref, rtol=1e-12, atol=0)
    assert float(jnp.max(jnp.abs(J_ref))) > 0


def test_subclass_keeping_call_is_still_a_chain():
    class Tagged(jacsens.MLP):
        pass

    model = Tagged(5, (4,), 3, key=jax.random.key(0), dtype=jnp.float64)
    assert len(jacsens.read_chain(model).linears) == 2


def test_cached_cost_cannot_be_changed_through_a_result():
    model = jacsens.MLP(6, (4,), 3, key=jax.random.key(0))
    first = jacsens.jacobian_cost(model, 8)
    expected = dict(first.flops)
    first.flops["rev"] = -1.0
    first.bytes.clear()
    again = jacsens.jacobian_cost(model, 8)
    assert again.flops == expected and set(again.bytes) == set(expected)
