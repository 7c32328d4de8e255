"""Streaming, mergeable statistics of arrays of per-sample values.

A `StreamingStats` holds, for every element of a fixed-shape quantity `g` (for example a
Jacobian entry `∂y_o/∂x_i`), the count and the central moments needed for the mean, mean
`|g|`, mean `g²`, variance and max `|g|`, and for the standard error of each. States combine
with the pairwise update of Chan et al. (extended to third and fourth moments by Pébay), so
that any split of the data, merged in any grouping, gives the one-pass result up to the
round-off of the dtype the states are computed in (the batch's dtype on the device, float64
on the host). That is what lets chunking and multi-device reduction reproduce the one-pass
result to that round-off, and checkpoint/resume (which repeats the same chunks) reproduce an
uninterrupted run exactly.

The functions follow optax's `init`/`update` pattern:

```python
state = stats_init((n_out, n_in))          # host state, numpy float64
for g in batches:                          # g: (B, n_out, n_in)
    state = stats_update(state, g)
state.mean, state.mean_se, state.std
```

`stats_update`/`stats_merge` work on numpy leaves and on JAX leaves (inside `jit`, in the
dtype of the leaves). On the host the *merge* is float64 whatever `jax_enable_x64` says; the
moments of each new batch are computed by JAX in the batch's dtype (float32 when x64 is off,
even for float64 numpy input), so per-batch round-off is that dtype's.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float


class StreamingStats(eqx.Module):
    """Mergeable accumulator of per-element moments of a stream of arrays.

    Every field except `count` has the shape of one sample of the quantity. With
    `x = g`, `|g|` or `g²` and `n = count`, `mean_x = Σx/n` and `m2_x = Σ(x - mean_x)²`;
    `m3`, `m4` are the third and fourth central sums of `g`.

    **Fields:**

    - `count`: number of samples seen, a float scalar (exact up to 2⁵³ in float64).
    - `mean`, `m2`, `m3`, `m4`: mean and central sums of powers 2-4 of `g`.
    - `abs_mean`, `abs_m2`: mean and central sum of squares of `|g|`.
    - `sq_mean`, `sq_m2`: mean and central sum of squares of `g²`.
    - `max_abs`: the largest `|g|` seen (0 before any sample).

    The derived properties (`variance`, `std`, `mean_se`, ...) use the unbiased variance
    `m2 / (n - 1)`; standard errors of means are `sqrt(variance / n)`.
    """

    count: Any
    mean: Any
    m2: Any
    m3: Any
    m4: Any
    abs_mean: Any
    abs_m2: Any
    sq_mean: Any
    sq_m2: Any
    max_abs: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.mean))

    @property
    def n(self) -> int:
        """Number of samples as a Python int (host states only)."""
        return int(round(float(self.count)))

    def _var(self, m2):
        xp = _namespace(self)
        n = self.count
        return xp.where(n > 1, m2 / xp.maximum(n - 1, 1), xp.nan)

    def _se(self, m2):
        xp = _namespace(self)
        return xp.sqrt(self._var(m2) / xp.maximum(self.count, 1))

    @property
    def variance(self):
        """Unbiased variance of `g` (NaN with fewer than two samples)."""
        return self._var(self.m2)

    @property
    def std(self):
        """Standard deviation of `g`, `sqrt(variance)`."""
        return _namespace(self).sqrt(self.variance)

    @property
    def mean_se(self):
        """Standard error of `mean`: `std(g) / sqrt(n)`."""
        return self._se(self.m2)

    @property
    def abs_mean_se(self):
        """Standard error of `abs_mean`: `std(|g|) / sqrt(n)`."""
        return self._se(self.abs_m2)

    @property
    def sq_mean_se(self):
        """Standard error of `sq_mean` (the DGSM when `g` is a derivative): `std(g²)/sqrt(n)`."""
        return self._se(self.sq_m2)

    @property
    def std_se(self):
        """Large-sample standard error of `std` by the delta method.

        `Var(s²) ≈ (μ₄ - σ⁴) / n` with `μ₄` the fourth central moment, and
        `SE(s) ≈ SE(s²) / (2s)`. Zero where `std` is zero (a constant `g`).
        """
        xp = _namespace(self)
        n = xp.maximum(self.count, 1)
        var = self.variance
        mu4 = self.m4 / n
        var_s2 = xp.maximum(mu4 - var**2, 0) / n
        s = xp.sqrt(var)
        return xp.where(s > 0, xp.sqrt(var_s2) / (2 * xp.where(s > 0, s, 1)), 0 * s)


def _namespace(state_or_leaf) -> Any:
    leaves = jax.tree.leaves(state_or_leaf)
    return np if all(isinstance(x, np.ndarray | np.generic) for x in leaves) else jnp


def stats_init(shape: tuple[int, ...], dtype: Any = np.float64) -> StreamingStats:
    """An empty host-side state for quantities of shape `shape`.

    **Arguments:**

    - `shape`: shape of one sample of the quantity, e.g. `(n_out, n_in)`.
    - `dtype`: numpy dtype of the accumulators (float64 by default).

    **Returns:**

    A `StreamingStats` with numpy leaves, all zero and `count == 0`.
    """
    shape = tuple(int(s) for s in np.atleast_1d(np.asarray(shape, dtype=np.int64)))
    if any(s < 0 for s in shape):
        raise ValueError(f"`shape` must have non-negative entries, got {shape}.")
    z = np.zeros(shape, dtype)
    return StreamingStats(np.zeros((), dtype), *(z.copy() for _ in range(9)))


def stats_from_batch(
    batch: Float[Array, " batch *shape"],
    mask: Bool[Array, " batch"] | None = None,
) -> StreamingStats:
    """The state of one batch: moments of `batch` over its leading axis.

    Rows where `mask` is False are left out entirely (their values may be NaN). Central
    sums are computed around the batch's own mean (two passes), which keeps them accurate.
    Traceable: runs under `jit` and `shard_map`, in the dtype of `batch` (promoted to
    float64 when `jax_enable_x64` is on).

    **Arguments:**

    - `batch`: `(B, *shape)` floating values.
    - `mask`: optional `(B,)` booleans selecting the rows to count.

    **Returns:**

    A `StreamingStats` with JAX leaves.
    """
    g = jnp.asarray(batch)
    if g.ndim < 1:
        raise ValueError(f"`batch` must have a leading batch axis, got shape {g.shape}.")
    dtype = jnp.promote_types(g.dtype, jax.dtypes.canonicalize_dtype(jnp.float64))
    g = g.astype(dtype)
    B = g.shape[0]
    if mask is None:
        mask = jnp.ones((B,), bool)
    mask = jnp.asarray(mask, bool)
    if mask.shape != (B,):
        raise ValueError(
            f"`mask` must have shape ({B},) like `batch`'s first axis, got {mask.shape}."
        )
    m = mask.reshape((B,) + (1,) * (g.ndim - 1))
    n = jnp.sum(mask, dtype=dtype)
    n_safe = jnp.maximum(n, 1)
    g = jnp.where(m, g, 0)
    a = jnp.abs(g)
    sq = g * g
    # Two passes over the batch (means, then central sums), each a single variadic
    # reduction: XLA then reads the batch once per pass instead of once per statistic.
    z = jnp.zeros((), dtype)
    sums = jax.lax.reduce((g, a, sq), (z,) * 3, _add_all, (0,))
    mean, abs_mean, sq_mean = (x / n_safe for x in sums)
    w = m.astype(dtype)  # masked rows are 0 by now, so the products below stay finite
    d = (g - mean) * w
    da = (a - abs_mean) * w
    ds = (sq - sq_mean) * w
    d2 = d * d
    m2, m3, m4, abs_m2, sq_m2, max_abs = jax.lax.reduce(
        (d2, d2 * d, d2 * d2, da * da, ds * ds, a), (z,) * 6, _add_all_max_last, (0,)
    )
    return StreamingStats(n, mean, m2, m3, m4, abs_mean, abs_m2, sq_mean, sq_m2, max_abs)


def _add_all(x, y):
    return tuple(u + v for u, v in zip(x, y, strict=True))


def _add_all_max_last(x, y):
    return (*_add_all(x[:-1], y[:-1]), jnp.maximum(x[-1], y[-1]))


def stats_merge(a: StreamingStats, b: StreamingStats) -> StreamingStats:
    """Combine the states of two disjoint sets of samples.

    Uses the pairwise formulas of Chan, Golub & LeVeque for means and second moments and
    Pébay's for third and fourth central moments. Merging with an empty state returns the
    other state unchanged. Works on numpy (host) or JAX leaves; mixing the two converts
    the JAX state to numpy float64.

    **Arguments:**

    - `a`, `b`: states of the same shape.

    **Returns:**

    The state of the union of both sets of samples.
    """
    if not isinstance(a, StreamingStats) or not isinstance(b, StreamingStats):
        raise TypeError(
            f"`a` and `b` must be StreamingStats, got {type(a).__name__} and {type(b).__name__}."
        )
    if a.shape != b.shape:
        raise ValueError(f"Cannot merge states of shapes {a.shape} and {b.shape}.")
    xa, xb = _namespace(a), _namespace(b)
    if xa is not xb:
        a, b = stats_to_host(a), stats_to_host(b)
    xp = _namespace(a)
    na, nb = a.count, b.count
    n = na + nb
    n_safe = xp.where(n > 0, n, 1)
    wa, wb = na / n_safe, nb / n_safe

    def mean2(mean_a, mean_b, m2_a, m2_b):
        delta = mean_b - mean_a
        return mean_a + delta * wb, m2_a + m2_b + delta * delta * na * wb

    delta = b.mean - a.mean
    mean, m2 = mean2(a.mean, b.mean, a.m2, b.m2)
    d2 = delta * delta
    m3 = a.m3 + b.m3 + d2 * delta * na * wb * (wa - wb) + 3 * delta * (wa * b.m2 - wb * a.m2)
    m4 = (
        a.m4
        + b.m4
        + d2 * d2 * na * wb * (wa * wa - wa * wb + wb * wb)
        + 6 * d2 * (wa * wa * b.m2 + wb * wb * a.m2)
        + 4 * delta * (wa * b.m3 - wb * a.m3)
    )
    abs_mean, abs_m2 = mean2(a.abs_mean, b.abs_mean, a.abs_m2, b.abs_m2)
    sq_mean, sq_m2 = mean2(a.sq_mean, b.sq_mean, a.sq_m2, b.sq_m2)
    merged = StreamingStats(
        n, mean, m2, m3, m4, abs_mean, abs_m2, sq_mean, sq_m2, xp.maximum(a.max_abs, b.max_abs)
    )
    # An empty side contributes nothing: return the other side bit for bit.
    return jax.tree.map(lambda x, y, z: xp.where(na == 0, y, xp.where(nb == 0, x, z)), a, b, merged)


def stats_update(
    state: StreamingStats,
    batch: Float[Array, " batch *shape"],
    mask: Bool[Array, " batch"] | None = None,
) -> StreamingStats:
    """Fold one batch into `state` (`stats_merge(state, stats_from_batch(batch, mask))`).

    **Arguments:**

    - `state`: the current state (numpy leaves for host accumulation, or JAX leaves).
    - `batch`: `(B, *state.shape)` values.
    - `mask`: optional `(B,)` booleans; rows where it is False are skipped.

    **Returns:**

    The updated state, in the namespace (numpy/JAX) of `state`.
    """
    if not isinstance(state, StreamingStats):
        raise TypeError(f"`state` must be a StreamingStats, got {type(state).__name__}.")
    if tuple(np.shape(batch)[1:]) != state.shape:
        raise ValueError(
            f"`batch` must have shape (batch, {', '.join(map(str, state.shape))}) to match "
            f"`state`, got {tuple(np.shape(batch))}."
        )
    new = stats_from_batch(batch, mask)
    if _namespace(state) is np:
        new = stats_to_host(new)
    return stats_merge(state, new)


def stats_to_host(state: StreamingStats) -> StreamingStats:
    """Copy a state to numpy float64 (blocks until its device values are ready)."""
    return jax.tree.map(lambda x: np.asarray(x, dtype=np.float64), state)


def stats_stack_merge(stacked: StreamingStats) -> StreamingStats:
    """Merge a state whose leaves carry a leading axis of parts, left to right (host)."""
    host = stats_to_host(stacked)
    parts = host.count.shape[0]
    out = jax.tree.map(lambda x: x[0], host)
    for i in range(1, parts):
        out = stats_merge(out, jax.tree.map(lambda x, i=i: x[i], host))
    return out


def stats_state_dict(state: StreamingStats, prefix: str = "") -> dict[str, np.ndarray]:
    """The state's fields as a flat `{prefix + name: array}` dict (for `np.savez`)."""
    return {prefix + f: np.asarray(getattr(state, f), np.float64) for f in _FIELDS}


def stats_from_state_dict(d: Any, prefix: str = "") -> StreamingStats:
    """Inverse of `stats_state_dict`."""
    missing = [prefix + f for f in _FIELDS if prefix + f not in d]
    if missing:
        raise ValueError(f"Saved statistics are missing the fields {missing}.")
    return StreamingStats(*(np.asarray(d[prefix + f], np.float64) for f in _FIELDS))


_FIELDS = tuple(f for f in StreamingStats.__dataclass_fields__)
