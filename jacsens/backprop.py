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
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._kernel import check_kernel_chain, delta_recursion
from ._losses import (
    softmax_cross_entropy_grad as softmax_cross_entropy_grad,
    squared_error_grad as squared_error_grad,
)
from ._plan import make_plan
from ._program._chain import Cache, Chain, chain_forward, read_chain
from ._validate import as_float_array, as_targets, check_choice, check_same_batch, check_targets

__all__ = [
    "Cache",
    "forward",
    "input_jacobian",
    "weight_grads",
    "squared_error_grad",
    "softmax_cross_entropy_grad",
]


def _forward_batch(model: Any, X: Array) -> tuple[Array, Cache, Chain]:
    chain = read_chain(model)
    check_kernel_chain(chain)
    y, cache = chain_forward(chain, X)
    return y, cache, chain


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
    from ._jacobian import input_jacobian as _input_jacobian

    return _input_jacobian(model, X, mode="backprop")


@eqx.filter_jit
def _weight_grads_impl(model, loss_grad, X, Y, reduction):
    y, cache, chain = _forward_batch(model, X)
    dE_dy = jax.vmap(loss_grad)(y, Y).reshape(X.shape[0], chain.out_width)
    grads_w, grads_b = delta_recursion(chain, cache, dE_dy, reduction)
    return _to_model_tree(model, chain.linears, grads_w, grads_b, reduction == "none", X.shape[0])


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
    plan = make_plan(model, X, "backprop")  # ChainError if the kernel cannot run it
    check_same_batch(X, Y)
    Y = check_targets(loss_grad, Y, plan.out_shape, kernel=True, out_dtype=plan.out_dtype)
    check_choice(reduction, "reduction", ("mean", "sum", "none"))
    if not callable(loss_grad):
        raise TypeError(f"`loss_grad` must be callable, got {type(loss_grad).__name__}.")
    X = X.astype(plan.dtype)
    y_struct = jax.ShapeDtypeStruct(plan.out_shape, plan.out_dtype)
    try:
        g = jax.eval_shape(loss_grad, y_struct, jax.ShapeDtypeStruct(Y.shape[1:], Y.dtype))
    except Exception as e:
        raise ValueError(
            f"`loss_grad` cannot be evaluated on one output (shape {plan.out_shape}) and one "
            f"target of `Y` (shape {Y.shape[1:]}): {type(e).__name__}: {e}"
        ) from e
    if getattr(g, "shape", None) != plan.out_shape:
        raise ValueError(
            f"`loss_grad` must return ∂E/∂y with the output's shape {plan.out_shape}, got "
            f"{getattr(g, 'shape', type(g).__name__)}."
        )
    return _weight_grads_impl(model, loss_grad, X, Y, reduction)
