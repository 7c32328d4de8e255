"""Small non-MLP models for the save/load and command-line tests: a conv net, a residual
LayerNorm block and a `lax.scan` over stacked layers. Each `*_factory(key)` builds one;
`jacsens explain --skeleton tests/_skeletons.py:conv_factory` imports this file by path.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

CONV_INPUT = (1, 8, 8)  # channels, height, width of one sample
RESIDUAL_INPUT = (6,)
SCAN_INPUT = (5,)


class ConvNet(eqx.Module):
    """Conv2d → tanh → average pooling → flatten → Linear (3 outputs)."""

    conv: eqx.nn.Conv2d
    pool: eqx.nn.AvgPool2d
    head: eqx.nn.Linear

    def __init__(self, key: PRNGKeyArray, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 2, 3, padding=1, key=k1, dtype=dtype)
        self.pool = eqx.nn.AvgPool2d(2, stride=2)
        self.head = eqx.nn.Linear(2 * 4 * 4, 3, key=k2, dtype=dtype)

    def __call__(self, x: Float[Array, "1 8 8"]) -> Float[Array, "3"]:
        return self.head(self.pool(jnp.tanh(self.conv(x))).reshape(-1))


class Residual(eqx.Module):
    """x + W2 · gelu(W1 · LayerNorm(x)), then a scalar read-out."""

    norm: eqx.nn.LayerNorm
    inner: eqx.nn.Linear
    outer: eqx.nn.Linear
    readout: eqx.nn.Linear

    def __init__(self, key: PRNGKeyArray, dtype=jnp.float32):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm = eqx.nn.LayerNorm(6, dtype=dtype)
        self.inner = eqx.nn.Linear(6, 10, key=k1, dtype=dtype)
        self.outer = eqx.nn.Linear(10, 6, key=k2, dtype=dtype)
        self.readout = eqx.nn.Linear(6, "scalar", key=k3, dtype=dtype)

    def __call__(self, x: Float[Array, "6"]) -> Float[Array, ""]:
        return self.readout(x + self.outer(jax.nn.gelu(self.inner(self.norm(x)))))


class Scanned(eqx.Module):
    """Four tanh layers of width 5 with stacked weights, applied by `lax.scan`."""

    weights: Float[Array, "4 5 5"]
    biases: Float[Array, "4 5"]
    depth: int = eqx.field(static=True)

    def __init__(self, key: PRNGKeyArray, dtype=jnp.float32, depth: int = 4):
        kw, kb = jax.random.split(key)
        self.depth = depth
        self.weights = jax.random.normal(kw, (depth, 5, 5), dtype) / jnp.sqrt(
            jnp.asarray(5.0, dtype)
        )
        self.biases = 0.1 * jax.random.normal(kb, (depth, 5), dtype)

    def __call__(self, x: Float[Array, "5"]) -> Float[Array, "5"]:
        def step(h, wb):
            w, b = wb
            return jnp.tanh(w @ h + b), None

        h, _ = jax.lax.scan(step, x, (self.weights, self.biases))
        return h


def conv_factory(key: PRNGKeyArray) -> ConvNet:
    return ConvNet(key)


def conv_factory64(key: PRNGKeyArray) -> ConvNet:
    return ConvNet(key, jnp.float64)


def residual_factory(key: PRNGKeyArray) -> Residual:
    return Residual(key)


def scan_factory(key: PRNGKeyArray) -> Scanned:
    return Scanned(key)


def no_arguments() -> ConvNet:
    """Not a factory: takes no key (the command line must say so)."""
    return ConvNet(jax.random.key(0))
