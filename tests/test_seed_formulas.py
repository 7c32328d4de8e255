"""The closed forms of /work/shared/seed-formulas.md (S1–S4).

Each is written out with `jnp` (derivatives of σ and tanh by hand, never from
`jacsens.ACTIVATIONS`) and compared with autodiff in every mode and with the hand-written
kernel, in float64, on random weights and inputs, to 1e-12 relative.
"""

import jax
import jax.numpy as jnp
import pytest

import jacsens
from jacsens import backprop
from jacsens._losses import cross_entropy

from helpers import (
    ALL_MODES,
    assert_close,
    init_model,
    perturb_biases,
    random_inputs,
    random_probabilities,
    random_uniform,
    rel_err,
)

RTOL = 1e-12


def sigma(z):
    return 1 / (1 + jnp.exp(-z))


# f and f' written out by hand
SMOOTH = {
    "tanh": (jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2),
    "sigmoid": (sigma, lambda z: sigma(z) * (1 - sigma(z))),
}


# ---------------------------------------------------------------------------------------
# S1: input gradient of a two-hidden-layer regression net
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_s1_input_gradient(getkey, act):
    f, df = SMOOTH[act]
    model = init_model(lambda k: jacsens.MLP(52, (20, 10), "scalar", act, key=k), getkey())
    model = perturb_biases(model, getkey())
    (W1, b1), (W2, b2) = ((layer.weight, layer.bias) for layer in model.layers[:2])
    w_out, b_out = model.layers[2].weight[0], model.layers[2].bias[0]
    assert W1.shape == (20, 52) and W2.shape == (10, 20) and w_out.shape == (10,)
    X = random_inputs(getkey(), 4, (52,))

    expected = []
    for x in X:
        z1 = W1 @ x + b1
        z2 = W2 @ f(z1) + b2
        assert_close(model(x), w_out @ f(z2) + b_out, 1e-14)
        # ∂y/∂x_k = Σ_i w_out_i f'(z2)_i Σ_j W2_ij f'(z1)_j W1_jk
        by_sums = jnp.einsum("i,i,ij,j,jk->k", w_out, df(z2), W2, df(z1), W1)
        # w_outᵀ diag(f'(z2)) W2 diag(f'(z1)) W1
        by_matrices = w_out @ jnp.diag(df(z2)) @ W2 @ jnp.diag(df(z1)) @ W1
        assert_close(by_sums, by_matrices, 1e-13)
        expected.append(by_matrices)
    expected = jnp.stack(expected)

    for mode in ALL_MODES:
        assert_close(jacsens.input_jacobian(model, X, mode=mode), expected, RTOL)
    assert_close(jax.vmap(jax.grad(model))(X), expected, RTOL)
    assert_close(backprop.input_jacobian(model, X), expected, RTOL)
    # The classic mistake: f'(z1) as a dense (outer-product) matrix instead of diag(f'(z1)).
    x = X[0]
    z1 = W1 @ x + b1
    z2 = W2 @ f(z1) + b2
    wrong = w_out @ jnp.diag(df(z2)) @ W2 @ jnp.outer(df(z1), jnp.ones(20)) @ W1
    assert rel_err(wrong, expected[0]) > 0.1


# ---------------------------------------------------------------------------------------
# S2: weight gradient of one logistic layer with squared error
# ---------------------------------------------------------------------------------------


def test_s2_logistic_layer(getkey):
    model = init_model(
        lambda k: jacsens.MLP(4, (), 5, "tanh", key=k, final_activation="sigmoid", use_bias=False),
        getkey(),
    )
    W = model.layers[0].weight
    assert W.shape == (5, 4) and model.layers[0].bias is None
    B = 3
    X = random_inputs(getkey(), B, (4,))
    Y = random_uniform(getkey(), (B, 5))

    per_sample = []
    for x, y in zip(X, Y, strict=True):
        s = sigma(W @ x)
        S = jnp.diag(s)
        by_matrices = jnp.outer((S - S @ S) @ (s - y), x)  # (S − S²)(s − y) xᵀ
        by_vectors = jnp.outer((s - y) * s * (1 - s), x)
        assert_close(by_matrices, by_vectors, 1e-14)
        per_sample.append(by_vectors)
    per_sample = jnp.stack(per_sample)

    loss = "half_squared_error"
    g_auto = jacsens.per_sample_grads(model, loss, X, Y).layers[0].weight
    g_kern = (
        backprop.weight_grads(model, backprop.squared_error_grad, X, Y, reduction="none")
        .layers[0]
        .weight
    )
    assert_close(g_auto, per_sample, RTOL)
    assert_close(g_kern, per_sample, RTOL)
    # one sample at a time, and the mean over the batch
    g_one = jacsens.weight_grad(model, loss, X[:1], Y[:1]).layers[0].weight
    assert_close(g_one, per_sample[0], RTOL)
    assert_close(jacsens.weight_grad(model, loss, X, Y).layers[0].weight, per_sample.mean(0), RTOL)
    g_mean = backprop.weight_grads(model, backprop.squared_error_grad, X, Y).layers[0].weight
    assert_close(g_mean, per_sample.mean(0), RTOL)


# ---------------------------------------------------------------------------------------
# S3: all parameter gradients of sigmoid nets
# ---------------------------------------------------------------------------------------


def _s3_by_hand(model, x, y):
    """The delta recursion written out: returns [(∂J/∂W_l, ∂J/∂b_l)] for l = 1..L."""
    Ws = [layer.weight for layer in model.layers]
    bs = [layer.bias for layer in model.layers]
    a = [x]
    for W, b in zip(Ws, bs, strict=True):
        a.append(sigma(W @ a[-1] + b))  # a⁽ⁱ⁾ = σ(z⁽ⁱ⁾)
    L = len(Ws)
    # δ_L = ∂J/∂a_L ⊙ σ'(z_L) with σ' = a(1 − a)
    delta = (a[L] - y) * a[L] * (1 - a[L])
    grads = [None] * L
    for i in reversed(range(L)):
        grads[i] = (jnp.outer(delta, a[i]), delta)  # layer i + 1: δ a⁽ⁱ⁾ᵀ, δ
        if i > 0:
            delta = (Ws[i].T @ delta) * a[i] * (1 - a[i])
    return grads


def _layer_grads(tree):
    return [(layer.weight, layer.bias) for layer in tree.layers]


@pytest.mark.parametrize("widths", [(6,), (7, 5, 4)], ids=["one-hidden", "L=4"])
def test_s3_parameter_gradients(getkey, widths):
    model = init_model(
        lambda k: jacsens.MLP(3, widths, 2, "sigmoid", key=k, final_activation="sigmoid"), getkey()
    )
    model = perturb_biases(model, getkey())
    B = 4
    X = random_inputs(getkey(), B, (3,))
    Y = random_uniform(getkey(), (B, 2))
    by_hand = [_s3_by_hand(model, x, y) for x, y in zip(X, Y, strict=True)]

    if len(widths) == 1:  # the one-hidden-layer formulas, literally
        W2 = model.layers[1].weight
        for (x, y), grads in zip(zip(X, Y, strict=True), by_hand, strict=True):
            a1 = sigma(model.layers[0].weight @ x + model.layers[0].bias)
            yhat = sigma(W2 @ a1 + model.layers[1].bias)
            d2 = (yhat - y) * yhat * (1 - yhat)
            d1 = (W2.T @ d2) * a1 * (1 - a1)
            expected = [(jnp.outer(d1, x), d1), (jnp.outer(d2, a1), d2)]
            for (gw, gb), (ew, eb) in zip(grads, expected, strict=True):
                assert_close(gw, ew, 1e-14)
                assert_close(gb, eb, 1e-14)

    auto = _layer_grads(jacsens.per_sample_grads(model, "half_squared_error", X, Y))
    kern = _layer_grads(
        backprop.weight_grads(model, backprop.squared_error_grad, X, Y, reduction="none")
    )
    summed_auto = _layer_grads(jacsens.weight_grad(model, "half_squared_error", X, Y))
    summed_kern = _layer_grads(
        backprop.weight_grads(model, backprop.squared_error_grad, X, Y, reduction="sum")
    )
    for layer in range(len(widths) + 1):
        for p in (0, 1):  # weight, bias
            expected = jnp.stack([g[layer][p] for g in by_hand])
            assert_close(auto[layer][p], expected, RTOL)
            assert_close(kern[layer][p], expected, RTOL)
            # over the batch the summed-loss gradient is the sum of the outer products
            assert_close(summed_auto[layer][p] * B, expected.sum(0), RTOL)
            assert_close(summed_kern[layer][p], expected.sum(0), RTOL)
    # ∂J/∂W_1 of the batch as one matrix product: Σ_b δ1_b x_bᵀ = Δ1ᵀ X
    D1 = jnp.stack([g[0][1] for g in by_hand])
    assert_close(summed_kern[0][0], D1.T @ X, RTOL)


# ---------------------------------------------------------------------------------------
# S4: input gradient through sigmoid hidden layer, softmax, cross-entropy
# ---------------------------------------------------------------------------------------


def _s4_setup(getkey):
    model = init_model(lambda k: jacsens.MLP(7, (9,), 4, "sigmoid", key=k), getkey())
    model = perturb_biases(model, getkey())
    x = random_inputs(getkey(), 1, (7,))[0]
    return model, x


def _s4_closed_form(model, x, y):
    W1, b1 = model.layers[0].weight, model.layers[0].bias
    W2, b2 = model.layers[1].weight, model.layers[1].bias
    h = sigma(W1 @ x + b1)
    theta = W2 @ h + b2
    yhat = jnp.exp(theta) / jnp.sum(jnp.exp(theta))
    column = W1.T @ ((W2.T @ (yhat - y)) * h * (1 - h))
    row = (yhat - y) @ W2 @ jnp.diag(h * (1 - h)) @ W1  # row-vector convention
    assert_close(column, row, 1e-14)
    return column, yhat


@pytest.mark.parametrize("label", ["one-hot", "soft"])
def test_s4_input_gradient(getkey, label):
    model, x = _s4_setup(getkey)
    if label == "one-hot":
        y = jax.nn.one_hot(2, 4, dtype=jnp.float64)
    else:
        y = random_probabilities(getkey(), (), 4)
    assert_close(jnp.sum(y), jnp.ones(()), 1e-15)
    expected, yhat = _s4_closed_form(model, x, y)

    # ∂J/∂θ = ŷ − y for a probability vector y
    dtheta = jax.grad(cross_entropy)(model(x), y)
    assert_close(dtheta, yhat - y, RTOL)
    assert_close(backprop.softmax_cross_entropy_grad(model(x), y), yhat - y, RTOL)

    # autodiff of the loss with respect to the input
    auto = jax.grad(lambda x: cross_entropy(model(x), y))(x)
    assert_close(auto, expected, RTOL)
    # the kernel pieces: the logits' input Jacobian (hand-written), times (ŷ − y)
    J_logits = backprop.input_jacobian(model, x[None])[0]
    kernel = backprop.softmax_cross_entropy_grad(model(x), y) @ J_logits
    assert_close(kernel, expected, RTOL)
    # ... and the same with every mode's Jacobian and with vjp
    for mode in ALL_MODES:
        J = jacsens.input_jacobian(model, x[None], mode=mode)[0]
        assert_close((yhat - y) @ J, expected, RTOL)
    assert_close(jacsens.vjp(model, x[None], (yhat - y)[None])[0], expected, RTOL)


def test_s4_needs_probability_vector(getkey):
    """For y not summing to 1, ∂J/∂θ = ŷ Σy − y, and the shortcut ŷ − y is wrong."""
    model, x = _s4_setup(getkey)
    y = jnp.array([0.5, 0.9, 0.0, 0.3])  # sums to 1.7
    theta = model(x)
    yhat = jax.nn.softmax(theta)
    dtheta = jax.grad(cross_entropy)(theta, y)
    assert_close(dtheta, yhat * jnp.sum(y) - y, RTOL)
    assert rel_err(dtheta, yhat - y) > 0.1
    auto = jax.grad(lambda x: cross_entropy(model(x), y))(x)
    shortcut, _ = _s4_closed_form(model, x, y)
    assert rel_err(auto, shortcut) > 0.1
    J_logits = backprop.input_jacobian(model, x[None])[0]
    assert_close(auto, dtheta @ J_logits, RTOL)


def test_s4_weight_gradients(getkey):
    """Cross-entropy parameter gradients: autodiff vs the kernel, one-hot and soft labels."""
    model = init_model(lambda k: jacsens.MLP(7, (9,), 4, "sigmoid", key=k), getkey())
    model = perturb_biases(model, getkey())
    X = random_inputs(getkey(), 5, (7,))
    for Y in (
        jax.nn.one_hot(jnp.array([0, 3, 1, 1, 2]), 4, dtype=jnp.float64),
        random_probabilities(getkey(), (5,), 4),
    ):
        auto = _layer_grads(jacsens.per_sample_grads(model, "cross_entropy", X, Y))
        kern = _layer_grads(
            backprop.weight_grads(
                model, backprop.softmax_cross_entropy_grad, X, Y, reduction="none"
            )
        )
        for (aw, ab), (kw, kb) in zip(auto, kern, strict=True):
            assert_close(aw, kw, RTOL)
            assert_close(ab, kb, RTOL)
        # ∂J/∂W2 = (ŷ − y) hᵀ, per sample
        H = jax.vmap(lambda x: sigma(model.layers[0].weight @ x + model.layers[0].bias))(X)
        P = jax.nn.softmax(jax.vmap(model)(X))
        assert_close(auto[1][0], jnp.einsum("bi,bj->bij", P - Y, H), RTOL)
