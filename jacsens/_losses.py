"""Per-sample losses `loss(y_pred, y_true) -> scalar`, by name or as callables."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

LossFn = Callable[[Array, Array], Array]


def mse(y_pred: Array, y_true: Array) -> Array:
    """Mean squared error of one sample, `mean((y_pred − y_true)²)`."""
    return jnp.mean((y_pred - y_true) ** 2)


def half_squared_error(y_pred: Array, y_true: Array) -> Array:
    """`½‖y_pred − y_true‖²` of one sample (the textbook `E` of backprop derivations)."""
    return 0.5 * jnp.sum((y_pred - y_true) ** 2)


def cross_entropy(logits: Array, y_true: Array) -> Array:
    """Softmax cross-entropy of one sample.

    `y_true` is an integer class label (shape `()`, in `[0, logits.shape[-1])`; checked when
    it is concrete, i.e. outside `jit`/`vmap`) or a probability vector (one-hot or soft
    labels, the shape of `logits`).
    """
    y_true = jnp.asarray(y_true)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if jnp.issubdtype(y_true.dtype, jnp.integer):
        if not isinstance(y_true, jax.core.Tracer):  # concrete labels: check the range
            n = logits.shape[-1]
            labels = np.asarray(y_true)
            if labels.size and (labels.min() < 0 or labels.max() >= n):
                bad = labels.min() if labels.min() < 0 else labels.max()
                raise ValueError(
                    f"`y_true` must be a class label in [0, {n}) for {n} logits, got {bad}."
                )
        return -jnp.take_along_axis(logp, y_true[..., None], axis=-1)[..., 0]
    return -jnp.sum(y_true * logp, axis=-1)


def binary_cross_entropy(logit: Array, y_true: Array) -> Array:
    """Sigmoid cross-entropy on logits for 0/1 (or probability) targets, summed."""
    return jnp.sum(jax.nn.softplus(logit) - y_true * logit)


LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "half_squared_error": half_squared_error,
    "cross_entropy": cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
}


def get_loss(loss: str | LossFn, argname: str = "loss") -> LossFn:
    """Resolve a loss name, or wrap a callable so that it returns a scalar per sample.

    A callable returning an array per sample (such as `optax.l2_loss`, which is
    elementwise) has its elements summed.
    """
    if isinstance(loss, str):
        try:
            return LOSSES[loss]
        except KeyError:
            raise ValueError(
                f"Unknown `{argname}` {loss!r}; expected one of {sorted(LOSSES)} or a "
                "callable (y_pred, y_true) -> scalar."
            ) from None
    if not callable(loss):
        raise TypeError(f"`{argname}` must be a name or a callable, got {type(loss).__name__}.")

    return _Summed(loss)


class _Summed(eqx.Module):
    """A user loss with its per-sample output summed to a scalar.

    An `eqx.Module` holding the loss as a pytree field: array leaves inside the loss (an
    `eqx.Module` loss with weights, a `functools.partial` over arrays) are traced by
    `filter_jit`, while a plain function is a static leaf compared by identity, so jit
    caches keyed on it are reused across calls.
    """

    loss: LossFn

    def __call__(self, y_pred: Array, y_true: Array) -> Array:
        return jnp.sum(self.loss(y_pred, y_true))


# The hand-written kernel's loss gradients (`jacsens.backprop`), beside the losses they
# differentiate: plain `jnp`, no autodiff.


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
