"""Input samplers that generate data chunk by chunk, for streaming sensitivity analysis.

A sampler never holds its `n` samples: row `r` of the stream is drawn from its own key,
`fold_in(fold_in(key, r // 2**32), r % 2**32)`, so any block of rows can be regenerated on
its own (which is what makes resuming an interrupted run exact), memory does not grow with
`n`, and the samples do not depend on how the stream is cut into chunks (`chunk_size`, the
number of devices).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


def _as_key(key: Any) -> PRNGKeyArray:
    if not isinstance(key, jax.Array):
        raise TypeError(f"`key` must be a JAX PRNG key, got {type(key).__name__}.")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.shape == (2,) and key.dtype == jnp.uint32:
        return jax.random.wrap_key_data(key)
    raise TypeError(f"`key` must be a JAX PRNG key, got an array of {key.dtype} {key.shape}.")


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`n` must be a positive int (number of samples), got {n!r}.")
    return int(n)


class Sampler(eqx.Module):
    """A distribution of inputs with a sample count, drawn chunk by chunk.

    **Fields:**

    - `n`: total number of samples.
    - `in_shape`: shape of one sample.
    - `dtype`: dtype of the samples.
    - `key`: the PRNG key; row `r` uses `fold_in(fold_in(key, r // 2**32), r % 2**32)`.
    - `params`: distribution parameters (arrays of shape `in_shape`).
    - `kind`: the distribution's name (`"uniform"`, `"normal"`).
    """

    n: int = eqx.field(static=True)
    in_shape: tuple[int, ...] = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    key: PRNGKeyArray
    params: tuple[Array, ...]

    def rows(self, start: int, size: int) -> Float[Array, "size *in"]:
        """Draw the rows `start, ..., start + size - 1` of the stream.

        Each row comes from its own key, so a row is the same whichever block it is
        drawn in. Rows beyond `n` are drawn too (the caller masks them): every block has
        shape `(size, *in_shape)`, so one compiled function serves the whole stream.
        """
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or start < 0:
            raise ValueError(f"`start` must be an int >= 0, got {start!r}.")
        start = int(start)
        hi, lo = divmod(start, 2**32)
        return _draw(
            self.kind,
            self.in_shape,
            self.dtype,
            self.key,
            self.params,
            jnp.asarray(hi, jnp.uint32),
            jnp.asarray(lo, jnp.uint32),
            int(size),
        )

    def chunk(self, index: int, size: int) -> Float[Array, "size *in"]:
        """Draw chunk `index` of `size` samples: the rows `index*size ... (index+1)*size - 1`.

        Equal to `self.rows(index * size, size)`; the values of a row do not depend on
        `size`.
        """
        if isinstance(index, jax.Array):
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
            raise ValueError(f"`index` must be an int >= 0, got {index!r}.")
        return self.rows(int(index) * int(size), size)

    def __len__(self) -> int:
        return self.n


_DRAWERS: dict[str, Callable] = {
    "uniform": lambda k, shape, dtype, lo, hi: jax.random.uniform(
        k, shape, dtype, minval=lo, maxval=hi
    ),
    "normal": lambda k, shape, dtype, mean, std: mean + std * jax.random.normal(k, shape, dtype),
}


@eqx.filter_jit
def _draw(kind, in_shape, dtype, key, params, start_hi, start_lo, size: int):
    # `n` is not an argument: samplers of any length share one compiled function.
    # Row r = start + j, as a 64-bit number split into two uint32 words (no x64 needed).
    j = jnp.arange(size, dtype=jnp.uint32)
    lo = start_lo + j  # wraps modulo 2**32
    hi = start_hi + (lo < start_lo).astype(jnp.uint32)  # carry

    def one(hi_word, lo_word):
        k = jax.random.fold_in(jax.random.fold_in(key, hi_word), lo_word)
        return _DRAWERS[kind](k, in_shape, dtype, *params)

    return jax.vmap(one)(hi, lo)


def _float_dtype(dtype: Any) -> Any:
    if dtype is None:
        return jax.dtypes.canonicalize_dtype(jnp.float64)
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype, got {dtype}.")
    return jax.dtypes.canonicalize_dtype(dtype)


def uniform(
    bounds: Float[Array, "in 2"] | Any,
    n: int,
    key: PRNGKeyArray,
    *,
    dtype: Any = None,
) -> Sampler:
    """Independent uniform inputs `x_i ~ U(low_i, high_i)`, generated chunk by chunk.

    **Arguments:**

    - `bounds`: `(in, 2)` array of `[low, high]` rows, one per input feature (or
        `(*in_shape, 2)` for multi-dimensional inputs; a single `[low, high]` of shape
        `(2,)` for a model with scalar input, `in_shape = ()`). Every `low < high`.
    - `n`: number of samples.
    - `key`: a JAX PRNG key.
    - `dtype`: sample dtype (default: JAX's default float).

    **Returns:**

    A `Sampler` to pass as `data` to `jacsens.sensitivity`.

    **Raises:**

    `ValueError` naming `bounds` if its last axis is not 2, an entry is not finite, or
    `low >= high`; naming `n` if it is not a positive int.
    """
    n = _check_n(n)
    key = _as_key(key)
    dtype = _float_dtype(dtype)
    b = np.asarray(bounds, dtype=np.float64)
    if b.ndim < 1 or b.shape[-1] != 2:
        raise ValueError(
            "`bounds` must have shape (n_in, 2) with rows [low, high] (or (2,) for a scalar "
            f"input), got shape {b.shape}."
        )
    if not np.all(np.isfinite(b)):
        raise ValueError("`bounds` must be finite.")
    lo, hi = b[..., 0], b[..., 1]
    bad = np.argwhere(np.atleast_1d(~(lo < hi)))
    if bad.size:
        i = tuple(int(v) for v in bad[0]) if lo.ndim else ()
        what = "the scalar input" if not i else f"input {i[0] if len(i) == 1 else i}"
        raise ValueError(
            f"`bounds` must have low < high for every input; {what} has "
            f"low={float(lo[i])!r} >= high={float(hi[i])!r}."
        )
    params = (jnp.asarray(lo, dtype), jnp.asarray(hi, dtype))
    return Sampler(n, tuple(lo.shape), dtype, "uniform", key, params)


def normal(
    mean: Float[Array, " *in"] | Any,
    std: Float[Array, " *in"] | Any,
    n: int,
    key: PRNGKeyArray,
    *,
    dtype: Any = None,
) -> Sampler:
    """Independent normal inputs `x_i ~ N(mean_i, std_i²)`, generated chunk by chunk.

    **Arguments:**

    - `mean`: per-feature means, shape `in_shape` (or `(in,)`; a scalar for a model with
        scalar input, `in_shape = ()`).
    - `std`: per-feature standard deviations, broadcastable to `mean`, all `> 0`.
    - `n`: number of samples.
    - `key`: a JAX PRNG key.
    - `dtype`: sample dtype (default: JAX's default float).

    **Returns:**

    A `Sampler` to pass as `data` to `jacsens.sensitivity`.

    **Raises:**

    `ValueError` naming `mean`/`std` if they are not finite, `std <= 0`, or their shapes
    do not broadcast; naming `n` if it is not a positive int.
    """
    n = _check_n(n)
    key = _as_key(key)
    dtype = _float_dtype(dtype)
    m = np.asarray(mean, dtype=np.float64)
    try:
        s = np.broadcast_to(np.asarray(std, dtype=np.float64), m.shape)
    except ValueError as e:
        raise ValueError(
            f"`std` must broadcast to the shape of `mean` {m.shape}, got shape {np.shape(std)}."
        ) from e
    if not np.all(np.isfinite(m)):
        raise ValueError("`mean` must be finite.")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"`std` must be finite and > 0, got min {s.min()!r}.")
    params = (jnp.asarray(m, dtype), jnp.asarray(s, dtype))
    return Sampler(n, tuple(m.shape), dtype, "normal", key, params)
