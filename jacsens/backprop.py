"""The hand-written backpropagation kernel.

Plain `jax.numpy` with the chain rule written out layer by layer: no `jax.grad`, `jvp`,
`vjp` or `jacfwd` anywhere in this module. It is kept as an independent cross-check of
autodiff (see `jacsens.crosscheck`).

For layers `z_l = W_l a_{l-1} + b_l`, `a_l = f(z_l)` (`a_0 = x`), with `g_l = f'(z_l)`:

- input Jacobian: `∂y/∂x = diag(g_L) W_L diag(g_{L-1}) W_{L-1} ··· diag(g_1) W_1`, built
  from the output side by the recursion `G ← (G · diag(g_l)) W_l`;
- parameter gradients of a loss `E(y)`: `δ_L = ∂E/∂a_L ⊙ g_L`,
  `δ_l = (W_{l+1}ᵀ δ_{l+1}) ⊙ g_l`, `∂E/∂W_l = δ_l a_{l-1}ᵀ`, `∂E/∂b_l = δ_l`.

The derivative `g_l` is the activation's closed form (`jacsens.ACTIVATIONS`), a vector:
the Jacobian of an elementwise function is diagonal, never a dense matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._chain import ActStep, Chain, ChainError, LinearStep, read_chain
from ._validate import as_float_array, as_targets, check_choice, check_same_batch, check_targets

__all__ = [
    "Cache",
    "forward",
    "input_jacobian",
    "weight_grads",
    "squared_error_grad",
    "softmax_cross_entropy_grad",
]


class Cache(NamedTuple):
    """What the forward pass keeps for the backward recursion, one entry per layer.

    - `inputs[l]`: `a_{l-1}`, the layer's input, `(B, p_{l-1})`.
    - `pre[l]`: `z_l = W_l a_{l-1} + b_l`, `(B, p_l)`.
    - `derivs[l]`: `g_l`, the derivative of the activations after layer `l`, `(B, p_l)`
      (ones where no activation follows).
    - `input_deriv`: derivative of activations applied to the input itself, `(B, p_0)`.
    """

    inputs: list[Array]
    pre: list[Array]
    derivs: list[Array]
    input_deriv: Array


def _layers(model: Any) -> tuple[Chain, list[LinearStep], list[list[Any]], list[Any]]:
    chain = read_chain(model)
    linears: list[LinearStep] = []
    acts_after: list[list[Any]] = []
    leading: list[Any] = []
    for step in chain.steps:
        if isinstance(step, LinearStep):
            linears.append(step)
            acts_after.append([])
        elif isinstance(step, ActStep):
            (acts_after[-1] if linears else leading).append(step.activation)
    if not linears:
        raise ChainError("model: the hand-written kernel needs at least one linear layer.")
    return chain, linears, acts_after, leading


def _apply_acts(acts: list[Any], z: Array) -> tuple[Array, Array]:
    """Apply activations in turn; return the output and the product of derivatives."""
    g = jnp.ones_like(z)
    for act in acts:
        g = g * act.deriv(z)
        z = act.fn(z)
    return z, g


def _forward_batch(model: Any, X: Array) -> tuple[Array, Cache, Chain]:
    chain, linears, acts_after, leading = _layers(model)
    a = X.reshape(X.shape[0], chain.in_width)  # not -1: B may be 0
    a, g0 = _apply_acts(leading, a)
    inputs, pre, derivs = [], [], []
    for lin, acts in zip(linears, acts_after, strict=True):
        inputs.append(a)
        z = a @ lin.weight.T
        if lin.bias is not None:
            z = z + lin.bias
        pre.append(z)
        a, g = _apply_acts(acts, z)
        derivs.append(g)
    y = a.reshape(X.shape[0], *chain.out_shape)
    return y, Cache(inputs, pre, derivs, g0), chain


def forward(model: Any, x: Float[Array, "*in"]) -> tuple[Float[Array, "*out"], Cache]:
    """Forward pass of one sample, keeping the cache the backward recursion needs.

    **Arguments:**

    - `model`: a model with a readable layer chain (`jacsens.MLP`, `eqx.nn.MLP`,
        `eqx.nn.Sequential` of Linear layers and elementwise activations).
    - `x`: one sample, shape `in_shape`.

    **Returns:**

    `(y, cache)`: the output (shape `out_shape`) and a `Cache` whose arrays carry a
    leading axis of size 1.
    """
    x = as_float_array(x, "x")
    chain = read_chain(model)
    if x.shape != chain.in_shape:
        raise ValueError(f"`x` must have shape {chain.in_shape} (one sample), got {x.shape}.")
    y, cache, _ = _forward_batch(model, x[None])
    return y[0], cache


@eqx.filter_jit
def _jacobian_impl(model, X):
    _, cache, chain = _forward_batch(model, X)
    _, linears, _, _ = _layers(model)
    # G = diag(g_L) W_L, then G <- (G diag(g_l)) W_l for l = L-1 .. 1.
    G = cache.derivs[-1][:, :, None] * linears[-1].weight
    for lin, g in zip(reversed(linears[:-1]), reversed(cache.derivs[:-1]), strict=True):
        G = (G * g[:, None, :]) @ lin.weight
    G = G * cache.input_deriv[:, None, :]
    return G.reshape(X.shape[0], *chain.out_shape, *chain.in_shape)


def input_jacobian(model: Any, X: Float[Array, "batch *in"]) -> Float[Array, "batch *out *in"]:
    """Per-sample input Jacobians by the explicit recursion `G ← (G · diag(f'(z_l))) W_l`.

    **Arguments:**

    - `model`: a model with a readable layer chain.
    - `X`: inputs of shape `(B, *in_shape)`.

    **Returns:**

    `(B, *out_shape, *in_shape)`.

    **Raises:**

    `ChainError` (a `ValueError`) if the model has no readable layer chain; `ValueError` /
    `TypeError` for a mis-shaped or non-floating `X`.
    """
    X = as_float_array(X, "X")
    chain = read_chain(model)
    if X.ndim < 1 or X.shape[1:] != chain.in_shape:
        raise ValueError(
            f"`X` must have shape (batch, *{chain.in_shape}) for this model, got {X.shape}."
        )
    return _jacobian_impl(model, X)


def squared_error_grad(y_pred: Array, y_true: Array) -> Array:
    """`∂E/∂y` of `E = ½‖y_pred − y_true‖²`: `y_pred − y_true`."""
    return y_pred - y_true


def softmax_cross_entropy_grad(logits: Array, y_true: Array) -> Array:
    """`∂E/∂θ` of `E = −Σ y_true log softmax(θ)`: `softmax(θ) − y_true`.

    Exact when `y_true` is a probability vector (one-hot or soft labels summing to 1). An
    integer class label (shape `()`) is one-hot encoded first, as in `cross_entropy`.
    """
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    p = jnp.exp(shifted)
    p = p / jnp.sum(p, axis=-1, keepdims=True)
    if jnp.issubdtype(y_true.dtype, jnp.integer):
        y_true = jax.nn.one_hot(y_true, logits.shape[-1], dtype=p.dtype)
    return p - y_true


@eqx.filter_jit
def _weight_grads_impl(model, loss_grad, X, Y, reduction):
    y, cache, chain = _forward_batch(model, X)
    _, linears, _, _ = _layers(model)
    B = X.shape[0]
    dE_dy = jax.vmap(loss_grad)(y, Y).reshape(B, chain.out_width)
    delta = dE_dy * cache.derivs[-1]
    grads_w, grads_b = [], []
    for idx in reversed(range(len(linears))):
        a_prev = cache.inputs[idx]
        if reduction == "none":
            gw = jnp.einsum("bi,bj->bij", delta, a_prev)
            gb = delta
        else:
            scale = 1.0 / B if reduction == "mean" else 1.0
            gw = scale * (delta.T @ a_prev)
            gb = scale * jnp.sum(delta, axis=0)
        grads_w.append(gw)
        grads_b.append(gb)
        if idx > 0:
            delta = (delta @ linears[idx].weight) * cache.derivs[idx - 1]
    grads_w.reverse()
    grads_b.reverse()
    return _to_model_tree(model, linears, grads_w, grads_b, reduction == "none", B)


def _to_model_tree(model, linears, grads_w, grads_b, batched: bool, B: int):
    """Place per-layer gradients into a pytree shaped like `model` (float leaves only)."""

    def zeros(x):
        return jnp.zeros((B, *x.shape) if batched else x.shape, x.dtype)

    tree = jax.tree.map(zeros, eqx.filter(model, eqx.is_inexact_array))
    for lin, gw, gb in zip(linears, grads_w, grads_b, strict=True):
        layer = lin.getter(model)
        lead = (B,) if batched else ()
        gw = gw.reshape(*lead, *layer.weight.shape)
        tree = eqx.tree_at(lambda t, lin=lin: lin.getter(t).weight, tree, gw)
        if layer.bias is not None:
            gb = gb.reshape(*lead, *layer.bias.shape)
            tree = eqx.tree_at(lambda t, lin=lin: lin.getter(t).bias, tree, gb)
    return tree


def weight_grads(
    model: Any,
    loss_grad: Callable[[Array, Array], Array],
    X: Float[Array, "batch *in"],
    Y: PyTree,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> PyTree:
    """Parameter gradients by the textbook delta recursion.

    **Arguments:**

    - `model`: a model with a readable layer chain.
    - `loss_grad`: `(y_pred, y_true) -> ∂E/∂y_pred` for one sample, written in `jnp` (e.g.
        `squared_error_grad`, `softmax_cross_entropy_grad`).
    - `X`: inputs `(B, *in_shape)`.
    - `Y`: targets `(B, *out_shape)`, or integer class labels `(B, *out_shape[:-1])` in
        `[0, out_shape[-1])`; a target that would broadcast against the output is refused.
    - `reduction`: `"mean"` (matches `jacsens.weight_grad`), `"sum"`, or `"none"` for
        per-sample gradients with a leading batch axis.

    **Returns:**

    A pytree shaped like `eqx.filter(model, eqx.is_inexact_array)`.
    """
    X = as_float_array(X, "X")
    Y = as_targets(Y, "Y")
    chain = read_chain(model)
    if X.ndim < 1 or X.shape[1:] != chain.in_shape:
        raise ValueError(
            f"`X` must have shape (batch, *{chain.in_shape}) for this model, got {X.shape}."
        )
    check_same_batch(X, Y)
    check_targets(loss_grad, Y, chain.out_shape, kernel=True)
    check_choice(reduction, "reduction", ("mean", "sum", "none"))
    if not callable(loss_grad):
        raise TypeError(f"`loss_grad` must be callable, got {type(loss_grad).__name__}.")
    return _weight_grads_impl(model, loss_grad, X, Y, reduction)
