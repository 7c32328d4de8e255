"""Helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jacsens

RTOL = {jnp.dtype(jnp.float32): 1e-4, jnp.dtype(jnp.float64): 1e-10}


def rel_err(a, b) -> float:
    """max|a − b| / max(|a|, |b|) — the norm-wise relative error used throughout."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
    err = np.max(np.abs(a - b), initial=0.0)
    return float(err / scale) if scale > 0 else float(err)


def assert_close(a, b, rtol: float) -> None:
    assert np.shape(a) == np.shape(b), (np.shape(a), np.shape(b))
    err = rel_err(a, b)
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.1e}"


def tree_allclose(a, b, rtol: float) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b) or len(la) != len(lb):
        return False
    return all(
        np.shape(x) == np.shape(y) and rel_err(x, y) <= rtol for x, y in zip(la, lb, strict=True)
    )


def random_mlp(
    key,
    in_size,
    widths: Sequence[int],
    out_size,
    activation: str = "tanh",
    dtype=jnp.float64,
    final_activation=None,
) -> jacsens.MLP:
    return jacsens.MLP(
        in_size,
        widths,
        out_size,
        activation,
        key=key,
        dtype=dtype,
        final_activation=final_activation,
    )


def random_inputs(key, batch: int, in_shape, dtype=jnp.float64) -> jax.Array:
    return jax.random.normal(key, (batch, *in_shape), dtype=dtype)


def _is_linear(x) -> bool:
    return isinstance(x, eqx.nn.Linear)


def _biases(model) -> list:
    return [
        x.bias
        for x in jax.tree.leaves(model, is_leaf=_is_linear)
        if _is_linear(x) and x.bias is not None
    ]


def perturb_biases(model, key, scale: float = 0.5):
    """Give every `eqx.nn.Linear` bias a random value (equinox initialises them small)."""
    biases = _biases(model)
    keys = jax.random.split(key, max(len(biases), 1))
    new = [
        b + scale * jax.random.normal(k, b.shape, b.dtype)
        for b, k in zip(biases, keys, strict=False)
    ]
    return eqx.tree_at(_biases, model, new)


# Modes of `jacsens.input_jacobian`: the autodiff ones work on any callable; the others
# need a readable layer chain.
AUTODIFF_MODES = ("rev", "fwd")
CHAIN_MODES = ("chain", "backprop")
ALL_MODES = ("rev", "fwd", "chain", "backprop", "auto")
# Activations with a kink (non-differentiable point): finite differences are only compared
# for the smooth ones.
KINKED = frozenset({"relu", "leaky_relu", "elu"})


def to_f64(tree):
    """Cast every floating array leaf of a pytree (a model) to float64."""
    return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree)


def all_jacobians(model, X, modes=ALL_MODES, **kwargs) -> dict:
    """`{mode: jacsens.input_jacobian(model, X, mode=mode)}` for each mode."""
    return {m: jacsens.input_jacobian(model, X, mode=m, **kwargs) for m in modes}


def parenthesisations(i: int, j: int) -> list:
    """Every parenthesisation of the product `W_j ··· W_i`, as nested tuples
    `(left, right, k)` meaning `(W_j ··· W_{k+1}) · (W_k ··· W_i)`; a leaf is the int `i`."""
    if i == j:
        return [i]
    return [
        (left, right, k)
        for k in range(i, j)
        for left in parenthesisations(k + 1, j)
        for right in parenthesisations(i, k)
    ]


def _span(tree) -> tuple[int, int]:
    if isinstance(tree, int):
        return tree, tree
    left, right, _ = tree
    return _span(right)[0], _span(left)[1]


def tree_cost(tree, dims, has_diag) -> int:
    """Multiply-adds of one parenthesisation under the cost model of
    `jacsens._chain.optimal_order`: `p_j p_k p_{i-1}` per product, plus scaling the smaller
    neighbour by a per-sample diagonal where one sits at the split."""
    if isinstance(tree, int):
        return 0
    left, right, k = tree
    i, j = _span(tree)
    c = tree_cost(left, dims, has_diag) + tree_cost(right, dims, has_diag)
    c += dims[j] * dims[k] * dims[i - 1]
    if has_diag[k]:
        c += min(dims[j], dims[i - 1]) * dims[k]
    return c


def describe_tree(tree) -> str:
    """Write a parenthesisation as `ChainOrder.describe` does, e.g. `(W4 · W3) · (W2 · W1)`."""
    if isinstance(tree, int):
        return f"W{tree}"
    left, right, _ = tree
    lw, rw = describe_tree(left), describe_tree(right)
    lw = lw if isinstance(left, int) else f"({lw})"
    rw = rw if isinstance(right, int) else f"({rw})"
    return f"{lw} · {rw}"
