"""The hand-written backpropagation recursions (plain `jax.numpy`, no autodiff).

For layers `z_l = W_l a_{l-1} + b_l`, `a_l = f(z_l)` (`a_0 = x`), with `g_l = f'(z_l)`
taken from the one chain forward pass (`_program._chain.chain_forward`):

- input Jacobian: `∂y/∂x = diag(g_L) W_L diag(g_{L-1}) W_{L-1} ··· diag(g_1) W_1`, built
  from the output side by the recursion `G ← (G · diag(g_l)) W_l`;
- parameter gradients of a loss `E(y)`: `δ_L = ∂E/∂a_L ⊙ g_L`,
  `δ_l = (W_{l+1}ᵀ δ_{l+1}) ⊙ g_l`, `∂E/∂W_l = δ_l a_{l-1}ᵀ`, `∂E/∂b_l = δ_l`.

`jacsens.backprop` is the public face of these recursions; the `backprop` Jacobian mode
runs the first one.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from ._program._chain import Cache, Chain, ChainError


def check_kernel_chain(chain: Chain) -> None:
    """The recursions need at least one dense layer."""
    if not chain.linears:
        raise ChainError("model: the hand-written kernel needs at least one linear layer.")


def jacobian_recursion(chain: Chain, cache: Cache) -> Array:
    """`(B, out_width, in_width)`: `G = diag(g_L) W_L`, then `G ← (G diag(g_l)) W_l` for
    `l = L-1 .. 1`, then the input-side scaling."""
    linears = chain.linears
    G = cache.derivs[-1][:, :, None] * linears[-1].weight
    for lin, g in zip(reversed(linears[:-1]), reversed(cache.derivs[:-1]), strict=True):
        G = (G * g[:, None, :]) @ lin.weight
    return G * cache.input_deriv[:, None, :]


def delta_recursion(
    chain: Chain, cache: Cache, dE_dy: Array, reduction: str
) -> tuple[list[Array], list[Array]]:
    """Weight and bias gradients of every dense layer, first layer first.

    `dE_dy` is `(B, out_width)`; `reduction` is `"mean"`, `"sum"` or `"none"` (per-sample
    gradients `(B, out, in)` and `(B, out)`).
    """
    linears = chain.linears
    B = dE_dy.shape[0]
    delta = dE_dy * cache.derivs[-1]
    grads_w, grads_b = [], []
    for idx in reversed(range(len(linears))):
        a_prev = cache.inputs[idx]
        if reduction == "none":
            gw = jnp.einsum("bi,bj->bij", delta, a_prev)
            gb = delta
        else:
            # B may be 0 (an empty batch): the mean of nothing is 0, not 0/0.
            scale = 1.0 / max(B, 1) if reduction == "mean" else 1.0
            gw = scale * (delta.T @ a_prev)
            gb = scale * jnp.sum(delta, axis=0)
        grads_w.append(gw)
        grads_b.append(gb)
        if idx > 0:
            delta = (delta @ linears[idx].weight) * cache.derivs[idx - 1]
    grads_w.reverse()
    grads_b.reverse()
    return grads_w, grads_b
