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


def perturb_biases(model, key, scale: float = 0.5):
    """Give every bias a random value (equinox initialises them small)."""
    leaves = [x for x in jax.tree.leaves(model) if eqx.is_inexact_array(x) and x.ndim == 1]
    keys = jax.random.split(key, max(len(leaves), 1))
    new = [
        x + scale * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=False)
    ]
    return eqx.tree_at(
        lambda m: [x for x in jax.tree.leaves(m) if eqx.is_inexact_array(x) and x.ndim == 1],
        model,
        new,
    )
