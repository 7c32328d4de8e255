"""Streaming, mergeable statistics of arrays of per-sample values.

A `StreamingStats` holds, for every element of a fixed-shape quantity `g` (for example a
Jacobian entry `∂y_o/∂x_i`), the count and the moments needed for the mean, mean `|g|`,
mean `g²`, variance and max `|g|`, and for the standard error of each. States combine with
the pairwise update of Chan et al. (extended to third and fourth moments by Pébay), so that
any split of the data, merged in any grouping, gives the one-pass result up to the
round-off of the dtype the states are computed in (the batch's dtype on the device, float64
on the host). That is what lets chunking and multi-device reduction reproduce the one-pass
result to that round-off, and checkpoint/resume (which repeats the same chunks) reproduce an
uninterrupted run exactly.

**Scaled moments.** Squares and fourth powers of derivatives leave the float32 range long
before the derivatives do (`g⁴` overflows at `|g| ≈ 4e9` and underflows at `|g| ≈ 1e-10`).
So every element carries a power-of-two scale `2^e` with `e` taken from the largest `|g|` of
its batch, and the moments stored are those of `u = g · 2^-e`, with `|u| < 4`. Scaling by a
power of two is exact, so this costs no accuracy; merges align two states to the larger of
their exponents (again exactly), and the statistics are unscaled on the host in float64
only after the roots are taken (`std = 2^e · sqrt(Σ(u - ū)²/(n-1))`). Hence, for any finite
input, no intermediate overflows or underflows, and every statistic is finite whenever its
value is representable in float64 (always, for float32/float16/bfloat16 inputs).

The functions follow optax's `init`/`update` pattern:

```python
state = stats_init((n_out, n_in))          # host state, numpy float64
for g in batches:                          # g: (B, n_out, n_in)
    state = stats_update(state, g)
state.mean, state.mean_se, state.std
```

`stats_update`/`stats_merge` work on numpy leaves and on JAX leaves (inside `jit`, in the
dtype of the leaves). On the host the *merge* is float64 whatever `jax_enable_x64` says; the
moments of each new batch are computed by JAX in the batch's dtype (at least float32;
float64 when x64 is on), so per-batch round-off is that dtype's.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._validate import promote_float

# how each stored moment scales with g: u-moment · 2^(power · exponent) is the g-moment
_POWERS = {
    "u_mean": 1,
    "u_m2": 2,
    "u_m3": 3,
    "u_m4": 4,
    "u_abs_mean": 1,
    "u_abs_m2": 2,
    "u_sq_mean": 2,
    "u_sq_m2": 4,
    "u_max_abs": 1,
}


class StreamingStats(eqx.Module):
    """Mergeable accumulator of per-element moments of a stream of arrays.

    Every field except `count` has the shape of one sample of the quantity. The moments
    are stored scaled: with `u = g · 2^-exponent` (per element) and `n = count`,
    `u_mean = Σu/n`, `u_m2 = Σ(u - u_mean)²`, `u_m3`, `u_m4` the third and fourth central
    sums of `u`, and the same mean and central sum of squares for `|u|` and `u²`.

    **Fields:**

    - `count`: number of samples seen, a float scalar (exact up to 2⁵³ in float64).
    - `exponent`: the per-element power of two, integer-valued floats.
    - `u_mean`, `u_m2`, `u_m3`, `u_m4`: mean and central sums of powers 2-4 of `u`.
    - `u_abs_mean`, `u_abs_m2`: mean and central sum of squares of `|u|`.
    - `u_sq_mean`, `u_sq_m2`: mean and central sum of squares of `u²`.
    - `u_max_abs`: the largest `|u|` seen (0 before any sample).

    The unscaled moments are properties (`mean`, `m2`, `m3`, `m4`, `abs_mean`, `abs_m2`,
    `sq_mean`, `sq_m2`, `max_abs`), as are the derived statistics (`variance`, `std`,
    `mean_se`, ...), which use the unbiased variance `m2 / (n - 1)`; standard errors of
    means are `sqrt(variance / n)`. Derived statistics are computed in scaled units and
    unscaled last, so they are finite whenever their value is representable.
    """

    count: Any
    exponent: Any
    u_mean: Any
    u_m2: Any
    u_m3: Any
    u_m4: Any
    u_abs_mean: Any
    u_abs_m2: Any
    u_sq_mean: Any
    u_sq_m2: Any
    u_max_abs: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.u_mean))

    @property
    def n(self) -> int:
        """Number of samples as a Python int (host states only)."""
        return int(round(float(self.count)))

    def _unscale(self, x, power: int):
        xp = _namespace(self)
        return xp.ldexp(x, power * _int_exponent(self.exponent))

    # the g-moments (may overflow float64 only for |g| beyond ~1e77, where g⁴ does)
    @property
    def mean(self):
        """Mean of `g`."""
        return self._unscale(self.u_mean, 1)

    @property
    def m2(self):
        """Central sum of squares of `g`."""
        return self._unscale(self.u_m2, 2)

    @property
    def m3(self):
        """Third central sum of `g`."""
        return self._unscale(self.u_m3, 3)

    @property
    def m4(self):
        """Fourth central sum of `g`."""
        return self._unscale(self.u_m4, 4)

    @property
    def abs_mean(self):
        """Mean of `|g|`."""
        return self._unscale(self.u_abs_mean, 1)

    @property
    def abs_m2(self):
        """Central sum of squares of `|g|`."""
        return self._unscale(self.u_abs_m2, 2)

    @property
    def sq_mean(self):
        """Mean of `g²`."""
        return self._unscale(self.u_sq_mean, 2)

    @property
    def sq_m2(self):
        """Central sum of squares of `g²`."""
        return self._unscale(self.u_sq_m2, 4)

    @property
    def max_abs(self):
        """The largest `|g|` seen (0 before any sample)."""
        return self._unscale(self.u_max_abs, 1)

    # derived statistics, in scaled units until the last step
    def _u_var(self, m2):
        xp = _namespace(self)
        n = self.count
        return xp.where(n > 1, m2 / xp.maximum(n - 1, 1), xp.nan)

    def _u_se(self, m2):
        xp = _namespace(self)
        return xp.sqrt(self._u_var(m2) / xp.maximum(self.count, 1))

    @property
    def variance(self):
        """Unbiased variance of `g` (NaN with fewer than two samples)."""
        return self._unscale(self._u_var(self.u_m2), 2)

    @property
    def std(self):
        """Standard deviation of `g`, `sqrt(variance)`."""
        return self._unscale(_namespace(self).sqrt(self._u_var(self.u_m2)), 1)

    @property
    def mean_se(self):
        """Standard error of `mean`: `std(g) / sqrt(n)`."""
        return self._unscale(self._u_se(self.u_m2), 1)

    @property
    def abs_mean_se(self):
        """Standard error of `abs_mean`: `std(|g|) / sqrt(n)`."""
        return self._unscale(self._u_se(self.u_abs_m2), 1)

    @property
    def sq_mean_se(self):
        """Standard error of `sq_mean` (the DGSM when `g` is a derivative): `std(g²)/sqrt(n)`."""
        return self._unscale(self._u_se(self.u_sq_m2), 2)

    @property
    def std_se(self):
        """Large-sample standard error of `std` by the delta method.

        `Var(s²) ≈ (μ₄ - σ⁴) / n` with `μ₄ = m4 / n` the fourth central moment, and
        `SE(s) ≈ SE(s²) / (2s)`. Zero where `std` is zero (a constant `g`).
        """
        xp = _namespace(self)
        n = xp.maximum(self.count, 1)
        var = self._u_var(self.u_m2)
        mu4 = self.u_m4 / n
        var_s2 = xp.maximum(mu4 - var * var, 0) / n
        s = xp.sqrt(var)
        se = xp.where(s > 0, xp.sqrt(var_s2) / (2 * xp.where(s > 0, s, 1)), 0 * s)
        return self._unscale(se, 1)


def _namespace(state_or_leaf) -> Any:
    leaves = jax.tree.leaves(state_or_leaf)
    return np if all(isinstance(x, np.ndarray | np.generic) for x in leaves) else jnp


def _int_exponent(e):
    if isinstance(e, np.ndarray | np.generic):
        return np.asarray(e).astype(np.int64)
    return jnp.asarray(e).astype(jnp.int32)


def _min_exponent(dtype: Any) -> int:
    # the exponent of an element that has seen only zeros: it never wins a merge
    return int(jnp.finfo(dtype).minexp)


def stats_init(shape: tuple[int, ...], dtype: Any = np.float64) -> StreamingStats:
    """An empty host-side state for quantities of shape `shape`.

    **Arguments:**

    - `shape`: shape of one sample of the quantity, e.g. `(n_out, n_in)`.
    - `dtype`: numpy floating dtype of the accumulators (float64 by default).

    **Returns:**

    A `StreamingStats` with numpy leaves, all moments zero and `count == 0`.
    """
    shape = tuple(int(s) for s in np.atleast_1d(np.asarray(shape, dtype=np.int64)))
    if any(s < 0 for s in shape):
        raise ValueError(f"`shape` must have non-negative entries, got {shape}.")
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"`dtype` must be a numpy floating dtype, got {dtype}.")
    z = np.zeros(shape, dtype)
    e = np.full(shape, _min_exponent(dtype), dtype)
    return StreamingStats(np.zeros((), dtype), e, *(z.copy() for _ in _POWERS))


def stats_from_batch(
    batch: Float[Array, " batch *shape"],
    mask: Bool[Array, " batch"] | None = None,
) -> StreamingStats:
    """The state of one batch: moments of `batch` over its leading axis.

    Rows where `mask` is False are left out entirely (their values may be NaN). Each
    element is scaled by the power of two nearest above its largest `|value|`, then its
    central sums are computed around the batch's own mean (two passes), which keeps them
    accurate and free of overflow and underflow. Traceable: runs under `jit` and
    `shard_map`, in the dtype of `batch` promoted to at least float32 (float64 when
    `jax_enable_x64` is on).

    **Arguments:**

    - `batch`: `(B, *shape)` floating values.
    - `mask`: optional `(B,)` booleans selecting the rows to count.

    **Returns:**

    A `StreamingStats` with JAX leaves.
    """
    g = jnp.asarray(batch)
    if g.ndim < 1:
        raise ValueError(f"`batch` must have a leading batch axis, got shape {g.shape}.")
    if not jnp.issubdtype(g.dtype, jnp.floating):
        raise TypeError(f"`batch` must have a floating dtype, got {g.dtype}.")
    # float16/bfloat16: moments in float32; float64 when x64 is on (explicit, so it holds
    # under strict promotion)
    dtype = promote_float(g.dtype, jnp.float32, jax.dtypes.canonicalize_dtype(jnp.float64))
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
    g = jnp.where(m, g, jnp.zeros((), dtype))
    top = jnp.max(jnp.abs(g), axis=0, initial=0.0)
    # |g| ≤ top < 2^e; e is clamped so that 2^-e is a normal number (|u| < 4 then)
    info = jnp.finfo(dtype)
    e = jnp.clip(jnp.frexp(top)[1], int(info.minexp), int(info.maxexp) - 2)
    e = jnp.where(top > 0, e, _min_exponent(dtype))
    u = g * jnp.ldexp(jnp.ones((), dtype), -e)
    a = jnp.abs(u)
    sq = u * u
    # Two passes over the batch (means, then central sums), each a single variadic
    # reduction: XLA then reads the batch once per pass instead of once per statistic.
    z = jnp.zeros((), dtype)
    sums = jax.lax.reduce((u, a, sq), (z,) * 3, _add_all, (0,))
    mean, abs_mean, sq_mean = (x / n_safe for x in sums)
    w = m.astype(dtype)  # masked rows are 0 by now, so the products below stay finite
    d = (u - mean) * w
    da = (a - abs_mean) * w
    ds = (sq - sq_mean) * w
    d2 = d * d
    m2, m3, m4, abs_m2, sq_m2, max_abs = jax.lax.reduce(
        (d2, d2 * d, d2 * d2, da * da, ds * ds, a), (z,) * 6, _add_all_max_last, (0,)
    )
    return StreamingStats(
        n, e.astype(dtype), mean, m2, m3, m4, abs_mean, abs_m2, sq_mean, sq_m2, max_abs
    )


def _add_all(x, y):
    return tuple(u + v for u, v in zip(x, y, strict=True))


def _add_all_max_last(x, y):
    return (*_add_all(x[:-1], y[:-1]), jnp.maximum(x[-1], y[-1]))


def _rescale(state: StreamingStats, exponent, xp) -> StreamingStats:
    """`state` with its moments expressed in units of `2^exponent` (≥ its own)."""
    shift = _int_exponent(state.exponent) - _int_exponent(exponent)
    moved = {f: xp.ldexp(getattr(state, f), p * shift) for f, p in _POWERS.items()}
    return StreamingStats(state.count, exponent, **moved)


def stats_merge(a: StreamingStats, b: StreamingStats) -> StreamingStats:
    """Combine the states of two disjoint sets of samples.

    Uses the pairwise formulas of Chan, Golub & LeVeque for means and second moments and
    Pébay's for third and fourth central moments, after aligning both states to the
    larger of their exponents (an exact power-of-two rescaling). Merging with an empty
    state returns the other state unchanged. Works on numpy (host) or JAX leaves; mixing
    the two converts the JAX state to numpy float64.

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
    exponent = xp.maximum(a.exponent, b.exponent)
    a_s, b_s = _rescale(a, exponent, xp), _rescale(b, exponent, xp)
    na, nb = a.count, b.count
    n = na + nb
    n_safe = xp.where(n > 0, n, 1)
    wa, wb = na / n_safe, nb / n_safe

    def mean2(mean_a, mean_b, m2_a, m2_b):
        delta = mean_b - mean_a
        return mean_a + delta * wb, m2_a + m2_b + delta * delta * na * wb

    delta = b_s.u_mean - a_s.u_mean
    mean, m2 = mean2(a_s.u_mean, b_s.u_mean, a_s.u_m2, b_s.u_m2)
    d2 = delta * delta
    m3 = (
        a_s.u_m3
        + b_s.u_m3
        + d2 * delta * na * wb * (wa - wb)
        + 3 * delta * (wa * b_s.u_m2 - wb * a_s.u_m2)
    )
    m4 = (
        a_s.u_m4
        + b_s.u_m4
        + d2 * d2 * na * wb * (wa * wa - wa * wb + wb * wb)
        + 6 * d2 * (wa * wa * b_s.u_m2 + wb * wb * a_s.u_m2)
        + 4 * delta * (wa * b_s.u_m3 - wb * a_s.u_m3)
    )
    abs_mean, abs_m2 = mean2(a_s.u_abs_mean, b_s.u_abs_mean, a_s.u_abs_m2, b_s.u_abs_m2)
    sq_mean, sq_m2 = mean2(a_s.u_sq_mean, b_s.u_sq_mean, a_s.u_sq_m2, b_s.u_sq_m2)
    merged = StreamingStats(
        n,
        exponent,
        mean,
        m2,
        m3,
        m4,
        abs_mean,
        abs_m2,
        sq_mean,
        sq_m2,
        xp.maximum(a_s.u_max_abs, b_s.u_max_abs),
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
    """The state's fields as a flat `{prefix + name: float64 array}` dict (for `np.savez`)."""
    return {prefix + f: np.asarray(getattr(state, f), np.float64) for f in STATS_FIELDS}


def stats_from_state_dict(
    d: Any, prefix: str = "", shape: tuple[int, ...] | None = None
) -> StreamingStats:
    """Inverse of `stats_state_dict`, checking what it reads.

    **Arguments:**

    - `d`: a mapping holding the fields under `prefix + name`.
    - `prefix`: the prefix used by `stats_state_dict`.
    - `shape`: if given, the shape every per-element field must have.

    **Returns:**

    A host `StreamingStats` (numpy float64).

    **Raises:**

    `ValueError` naming the field if one is missing, is not a float64 array, has the
    wrong shape, or holds values no state can hold (a negative or fractional count,
    non-finite moments, negative sums of squares, a non-integer exponent).
    """
    missing = [prefix + f for f in STATS_FIELDS if prefix + f not in d]
    if missing:
        raise ValueError(f"Saved statistics are missing the fields {missing}.")
    values = {}
    for f in STATS_FIELDS:
        v = np.asarray(d[prefix + f])
        if v.dtype != np.float64:
            raise ValueError(f"Saved field {prefix + f!r} must be float64, got {v.dtype}.")
        want = () if f == "count" else shape
        if want is not None and v.shape != tuple(want):
            raise ValueError(
                f"Saved field {prefix + f!r} must have shape {tuple(want)}, got {v.shape}."
            )
        if not np.all(np.isfinite(v)):
            raise ValueError(f"Saved field {prefix + f!r} holds non-finite values.")
        values[f] = v
    count = float(values["count"])
    if count < 0 or count != round(count):
        raise ValueError(f"Saved field {prefix + 'count'!r} must be a whole number >= 0.")
    if np.any(values["exponent"] != np.round(values["exponent"])):
        raise ValueError(f"Saved field {prefix + 'exponent'!r} must hold whole numbers.")
    for f in ("u_m2", "u_m4", "u_abs_m2", "u_sq_m2", "u_abs_mean", "u_sq_mean", "u_max_abs"):
        if np.any(values[f] < 0):
            raise ValueError(f"Saved field {prefix + f!r} must be >= 0.")
    if values["u_mean"].shape != values["exponent"].shape:
        raise ValueError(f"Saved fields under {prefix!r} have inconsistent shapes.")
    return StreamingStats(**values)


STATS_FIELDS = tuple(f for f in StreamingStats.__dataclass_fields__)
