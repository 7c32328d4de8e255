"""Ensembles of models of one structure, stored stacked (every array has a leading member
axis) so that training and evaluation are one `vmap`, not a Python loop."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


class Ensemble(eqx.Module):
    """`size` models of one structure, stored stacked.

    Every inexact array of `members` has a leading axis of length `size`; member `i` is
    `ensemble.member(i)`. Calling the ensemble on one sample returns the **mean of the
    members' outputs** (for a classifier that is the mean logit; average probabilities with
    `jacsens.Probabilities` around each member if that is what you want:
    `jacsens.Probabilities(ensemble.member(i))`).

    Made by `jacsens.fit(..., ensemble=K)` or `Ensemble.init(make, K, key=key)`;
    `jacsens.sensitivity` of an ensemble analyses every member and reports the spread
    between them (`jacsens.EnsembleSensitivity`).

    **Fields:**

    - `members`: the stacked model.
    - `size`: the number of members (static).
    """

    members: Any
    size: int = eqx.field(static=True)

    @classmethod
    def init(cls, make: Callable[[PRNGKeyArray], Any], size: int, *, key: PRNGKeyArray):
        """`size` members `make(k)` for `k` in `jax.random.split(key, size)`, built in
        one `vmap` (so `make` must build the same structure for every key)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`size` must be a positive int, got {size!r}.")
        if not callable(make):
            raise TypeError(f"`make` must be a callable key -> model, got {type(make).__name__}.")
        keys = jax.random.split(key, size)
        members = eqx.filter_vmap(make)(keys)
        if not isinstance(members, eqx.Module):
            raise TypeError(f"`make` must return an equinox Module, got {type(members).__name__}.")
        return cls(members, size)

    def __check_init__(self):
        for leaf in jax.tree.leaves(eqx.filter(self.members, eqx.is_array)):
            if leaf.ndim == 0 or leaf.shape[0] != self.size:
                raise ValueError(
                    f"Every array of an Ensemble of size {self.size} must have a leading "
                    f"axis of length {self.size}, got an array of shape {leaf.shape}."
                )

    def __len__(self) -> int:
        return self.size

    def member(self, i: int) -> Any:
        """Member `i` (0-based) as a plain model."""
        try:
            i = operator.index(i)  # Python and NumPy integers, not bools or floats
        except TypeError:
            i = None
        if i is None or isinstance(i, bool) or not -self.size <= i < self.size:
            raise IndexError(f"member index must be an int in [0, {self.size}), got {i!r}.")
        arrays, static = eqx.partition(self.members, eqx.is_array)
        return eqx.combine(_take(arrays, i), static)

    def outputs(self, x: Array) -> Array:
        """Every member's output on one sample, shape `(size, *out_shape)`."""
        return eqx.filter_vmap(lambda m: m(x))(self.members)

    def __call__(self, x: Array) -> Array:
        return jnp.mean(self.outputs(x), axis=0)


@jax.jit
def _take(arrays: Any, i: int) -> Any:
    return jax.tree.map(lambda a: a[i], arrays)
