"""Weight gradients, per-sample weight gradients and their norms."""

from __future__ import annotations

import math
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._batching import map_chunks, run_chunked
from ._losses import LossFn, get_loss
from ._plan import Plan, make_plan
from ._program._chain import chain_forward, read_chain
from ._validate import (
    as_float_array,
    as_targets,
    check_chunk_size,
    check_same_batch,
    check_targets,
)


def _check(model, loss, X, Y, chunk_size=None) -> tuple[LossFn, Array, Array, int | None, Plan]:
    X = as_float_array(X, "X")
    Y = as_targets(Y, "Y")
    plan = make_plan(model, X, None)
    if not jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)):
        raise TypeError(
            f"`model` has no trainable parameters: {type(model).__name__} holds no floating "
            "array leaves (a plain function closing over its weights hides them from "
            "differentiation); pass an eqx.Module whose weights are fields."
        )
    check_same_batch(X, Y)
    chunk_size = check_chunk_size(chunk_size)
    loss_fn = get_loss(loss)
    Y = check_targets(loss, Y, plan.out_shape, out_dtype=plan.out_dtype)
    if X.dtype != plan.dtype:  # the package's dtype rule: at the model's precision
        X = X.astype(plan.dtype)
    return loss_fn, X, Y, chunk_size, plan


def _sample_loss(model, x, y, loss):
    return loss(model(x), y)


@eqx.filter_jit
def _weight_grad_impl(model, loss, X, Y):
    def mean_loss(m):
        return jnp.mean(jax.vmap(lambda x, y: _sample_loss(m, x, y, loss))(X, Y))

    return eqx.filter_grad(mean_loss)(model)


def weight_grad(model: Any, loss: str | LossFn, X: Float[Array, "batch *in"], Y: Array) -> PyTree:
    """Gradient of the mean loss over the batch with respect to the model's parameters.

    **Arguments:**

    - `model`: an `eqx.Module` acting on one sample.
    - `loss`: `loss(y_pred, y_true) -> scalar` for one sample (optax losses work; an
        elementwise loss is summed over its elements), or a name: `"mse"`,
        `"half_squared_error"`, `"cross_entropy"`, `"binary_cross_entropy"`.
    - `X`: inputs `(B, *in_shape)`.
    - `Y`: targets with leading axis `B`. For a named loss they must have the model's
        output shape, `(B, *out_shape)`, or for `"cross_entropy"` may be integer class
        labels `(B, *out_shape[:-1])` in `[0, out_shape[-1])`; a target that would
        broadcast is refused. The targets of a callable loss are not checked (only the loss
        knows what it expects).

    **Returns:**

    A pytree shaped like the model: `∂/∂θ (1/B) Σ_b loss(model(X[b]), Y[b])` at the
    floating-point array leaves, `None` elsewhere.
    """
    loss, X, Y, _, _ = _check(model, loss, X, Y)
    return _weight_grad_impl(model, loss, X, Y)


@eqx.filter_jit
def _per_sample_impl(model, loss, X, Y, chunk_size):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def grad_one(x, y):
        return jax.grad(lambda p: _sample_loss(eqx.combine(p, static), x, y, loss))(params)

    return map_chunks(jax.vmap(grad_one), X, Y, chunk_size=chunk_size)


def per_sample_grads(
    model: Any,
    loss: str | LossFn,
    X: Float[Array, "batch *in"],
    Y: Array,
    *,
    chunk_size: int | Literal["auto"] | None = None,
) -> PyTree:
    """Gradient of each sample's loss with respect to the parameters.

    **Arguments:**

    - `model`, `loss`, `X`, `Y`: as in `weight_grad`.
    - `chunk_size`: optional chunking over the batch to bound memory (rows, or `"auto"`:
        the largest chunk that fits the device's free memory).

    **Returns:**

    A pytree shaped like the model whose leaves have a leading batch axis `B`:
    leaf `[b]` is `∂ loss(model(X[b]), Y[b]) / ∂θ`. Their mean over `b` is `weight_grad`.
    """
    loss, X, Y, chunk_size, plan = _check(model, loss, X, Y, chunk_size)

    def call(chunk):
        return _per_sample_impl(model, loss, X, Y, chunk)

    return run_chunked(call, chunk_size, X.shape[0], _grad_bytes(model, plan), traced=_traced(X))


def _ghost_sq_norms(model, loss, X, Y):
    """Squared per-sample gradient norms of a Linear/elementwise chain, never forming the
    per-sample gradients: for a Linear layer `z = W a + b` seeing one vector per sample,
    `‖∂ℓ/∂W‖² = ‖a‖² ‖δ‖²` and `‖∂ℓ/∂b‖² = ‖δ‖²` with `δ = ∂ℓ/∂z`."""
    chain = read_chain(model)
    B = X.shape[0]
    linears = chain.linears

    def run(eps):
        y, cache = chain_forward(chain, X, perturb=eps)
        return jnp.sum(jax.vmap(loss)(y, Y)), cache.inputs

    eps = [jnp.zeros((B, s.shape[0]), X.dtype) for s in linears]
    # δ_l of each sample is the gradient of the *summed* loss w.r.t. a zero perturbation
    # of that sample's pre-activation: samples do not interact.
    deltas, inputs = jax.grad(run, has_aux=True)(eps)
    total = jnp.zeros((B,), X.dtype)
    for step, a, d in zip(linears, inputs, deltas, strict=True):
        a_sq = jnp.sum(a**2, axis=1)
        if step.bias is not None:
            a_sq = a_sq + 1
        total = total + a_sq * jnp.sum(d**2, axis=1)
    return total


@eqx.filter_jit
def _norms_impl(model, loss, X, Y, chunk_size, method):
    if method == "ghost":
        ghost = map_chunks(
            lambda x, y: _ghost_sq_norms(model, loss, x, y), X, Y, chunk_size=chunk_size
        )
        return jnp.sqrt(ghost)

    def norms(x, y):
        g = _per_sample_impl(model, loss, x, y, None)
        return jnp.sqrt(
            sum(
                jnp.sum(leaf.reshape(x.shape[0], math.prod(leaf.shape[1:])) ** 2, 1)
                for leaf in jax.tree.leaves(g)
            )
        )

    return map_chunks(norms, X, Y, chunk_size=chunk_size)


def per_sample_grad_norms(
    model: Any,
    loss: str | LossFn,
    X: Float[Array, "batch *in"],
    Y: Array,
    *,
    chunk_size: int | Literal["auto"] | None = None,
    method: str = "auto",
) -> Float[Array, " batch"]:
    """L2 norm of each sample's parameter gradient (all parameters together).

    For models with a readable layer chain (Linear layers and elementwise activations) the
    norms are computed without materialising per-sample gradients ("ghost norms"): one
    backward pass gives `δ_l = ∂ℓ_b/∂z_l` for every layer, and
    `‖g_b‖² = Σ_l ‖δ_l‖² (‖a_{l-1}‖² + 1)` (the `+ 1` for the bias). Other models fall back
    to materialising `per_sample_grads`.

    **Arguments:**

    - `model`, `loss`, `X`, `Y`: as in `weight_grad`.
    - `chunk_size`: optional chunking over the batch (rows, or `"auto"`).
    - `method`: `"auto"` (ghost where possible), `"ghost"` or `"materialise"`.

    **Returns:**

    `(B,)` norms.
    """
    loss, X, Y, chunk_size, plan = _check(model, loss, X, Y, chunk_size)
    if method not in ("auto", "ghost", "materialise"):
        raise ValueError(f"Unknown `method` {method!r}; expected 'auto', 'ghost' or 'materialise'.")
    if method == "ghost" and plan.chain is None:
        raise ValueError(
            "`method='ghost'` needs a model with a readable layer chain (Linear layers and "
            f"elementwise activations); got {type(model).__name__} ({plan.chain_error})."
        )
    if method == "auto":
        method = "ghost" if plan.chain is not None else "materialise"

    def call(chunk):
        return _norms_impl(model, loss, X, Y, chunk, method)

    return run_chunked(call, chunk_size, X.shape[0], _grad_bytes(model, plan), traced=_traced(X))


def _traced(X) -> bool:
    return isinstance(X, jax.core.Tracer)


def _grad_bytes(model, plan: Plan) -> float:
    """Peak bytes per row of per-sample gradients: every parameter, twice (the gradient
    and its cotangent), plus the activations of a forward and backward pass."""
    n_params = sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    itemsize = jnp.dtype(plan.dtype).itemsize
    return itemsize * (2.0 * n_params + 8.0 * (plan.n_in + plan.n_out))
