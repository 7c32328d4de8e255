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


def _rng(key) -> np.random.Generator:
    """A numpy generator seeded by a JAX key (typed or raw uint32)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


def init_model(build, key):
    """`build(key)` (a function returning an Equinox model), with the parameters drawn by
    numpy instead of the model's own initialiser.

    The structure comes from `eqx.filter_eval_shape`, so no JAX random op runs: building
    a model of a new shape costs no compilation. Each `eqx.nn.Linear` gets the default
    Equinox distribution, weight and bias `U(−1/√fan_in, 1/√fan_in)`; any other floating
    leaf gets `N(0, 1)`.
    """
    if isinstance(key, jax.core.Tracer):  # nested inside another init_model's eval_shape
        return build(key)
    rng = _rng(key)
    skeleton = eqx.filter_eval_shape(build, key)

    def fill_linear(x):
        if not _is_linear(x):
            return x
        lim = 1.0 / np.sqrt(x.weight.shape[1])
        new = [x.weight] + ([] if x.bias is None else [x.bias])
        values = [jnp.asarray(rng.uniform(-lim, lim, a.shape).astype(a.dtype)) for a in new]
        return eqx.tree_at(
            lambda lin: [lin.weight] + ([] if lin.bias is None else [lin.bias]), x, values
        )

    model = jax.tree.map(fill_linear, skeleton, is_leaf=_is_linear)
    return jax.tree.map(
        lambda a: (
            jnp.asarray(rng.standard_normal(a.shape).astype(a.dtype))
            if isinstance(a, jax.ShapeDtypeStruct)
            else a
        ),
        model,
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
    """A `jacsens.MLP` with Equinox's default weight distribution (see `init_model`)."""
    return init_model(
        lambda k: jacsens.MLP(
            in_size,
            widths,
            out_size,
            activation,
            key=k,
            dtype=dtype,
            final_activation=final_activation,
        ),
        key,
    )


def random_inputs(key, batch: int, in_shape, dtype=jnp.float64) -> jax.Array:
    """Standard normal inputs `(batch, *in_shape)`, drawn by numpy (no compilation)."""
    x = _rng(key).standard_normal((batch, *in_shape))
    return jnp.asarray(x.astype(jnp.dtype(dtype)))


def random_uniform(key, shape, dtype=jnp.float64) -> jax.Array:
    """`U(0, 1)` samples of `shape`, drawn by numpy."""
    return jnp.asarray(_rng(key).uniform(size=shape).astype(jnp.dtype(dtype)))


def random_probabilities(key, shape, n: int, dtype=jnp.float64) -> jax.Array:
    """Probability vectors `(*shape, n)` (flat Dirichlet), drawn by numpy."""
    return jnp.asarray(_rng(key).dirichlet(np.ones(n), size=shape).astype(jnp.dtype(dtype)))


def random_labels(key, shape, n: int) -> jax.Array:
    """Integer class labels in `[0, n)` of `shape`, drawn by numpy."""
    return jnp.asarray(_rng(key).integers(0, n, size=shape).astype(np.int32))


def _is_linear(x) -> bool:
    return isinstance(x, eqx.nn.Linear)


def _biases(model) -> list:
    return [
        x.bias
        for x in jax.tree.leaves(model, is_leaf=_is_linear)
        if _is_linear(x) and x.bias is not None
    ]


def perturb_biases(model, key, scale: float = 0.5):
    """Add `N(0, scale²)` noise to every `eqx.nn.Linear` bias (Equinox initialises them
    small), drawn by numpy."""
    rng = _rng(key)
    new = [
        b + jnp.asarray(scale * rng.standard_normal(b.shape).astype(b.dtype))
        for b in _biases(model)
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
