"""Where sensitivity data come from: arrays, streams of batches and samplers.

Every source answers `read(start, size)`: the rows `start, ..., start + size - 1` as one
block of exactly `size` rows (rows past the end are padding, to be masked), and the number
of real rows in it. Reads go forward except that, after an out-of-memory back-off, the run
re-reads from its last finished row; `release(row)` says that rows before `row` will never
be read again (a stream then drops them).

What a `data` argument means (`make_source`):

- a sampler (`jacsens.uniform`, `jacsens.normal`, `jacsens.from_problem`): rows drawn on
  the device, each from its own key;
- a quasi-random sampler (`jacsens.sobol`, `jacsens.halton`, see `_qmc`): rows generated on
  the host by index, in replicates (independent scrambles; a block may span several);
- a numpy array (`np.memmap` included, read block by block) or a jax array, `(N, *in)`;
- an array-like read as ONE array of rows: a list or tuple (of rows, or of numbers for a
  scalar-input model), a pandas `DataFrame` (its column labels become the feature names)
  or `Series` (one column), or any object with `__array__`;
- an iterator (a generator, `iter(list_of_batches)`, a data loader) or any other iterable
  that is not a sequence: a stream of batches `(B_k, *in)` of any sizes;
- a `dict` is refused: its meaning (a SALib-style problem, columns by name) is ambiguous;
  a SALib problem dict describes a distribution: pass it to `jacsens.from_problem`.
"""

from __future__ import annotations

import abc
import collections
import hashlib
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

_FULL_HASH_BYTES = 256 * 2**20  # arrays up to this size are hashed whole
_SAMPLE_ROWS = 4096  # larger ones: at most this many rows ...
_SAMPLE_BYTES = 32 * 2**20  # ... and at most this many bytes


def to_host(x: Any) -> np.ndarray:
    """A numpy copy of `x`, gathered from every process if it spans several hosts."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def _is_float_dtype(dtype: Any) -> bool:
    try:
        return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.floating))
    except TypeError:
        return False


# --------------------------------------------------------------------------- samplers


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


def _as_float64(value: Any, argname: str) -> np.ndarray:
    """Numbers (ints or floats, any nesting) as a float64 array; strings, booleans, objects
    and complex numbers are refused (numpy would parse `"1.5"` silently)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" and not _is_float_dtype(arr.dtype):
        raise TypeError(
            f"`{argname}` must hold real numbers, got {arr.dtype} values ({value!r:.60})."
        )
    return arr.astype(np.float64)


def _float_dtype(dtype: Any) -> Any:
    if dtype is None:
        return jax.dtypes.canonicalize_dtype(jnp.float64)
    if not _is_float_dtype(dtype):
        raise TypeError(f"`dtype` must be a floating dtype, got {dtype!r}.")
    return jax.dtypes.canonicalize_dtype(jnp.dtype(dtype))


class AbstractSampler(eqx.Module):
    """A distribution of inputs with a sample count, drawn block by block.

    Row `r` of the stream is drawn from its own key,
    `fold_in(fold_in(key, r // 2**32), r % 2**32)`, so any block of rows can be regenerated
    on its own (which is what makes resuming an interrupted run exact), memory does not
    grow with `n`, and the samples do not depend on how the stream is cut into chunks.
    Subclasses say how one row is drawn from its key (`_sample`) from their parameters
    (`_params`). Public as `jacsens.Sampler`.

    **Fields:**

    - `n`: total number of samples.
    - `in_shape`: shape of one sample.
    - `dtype`: dtype of the samples.
    - `key`: the PRNG key.
    """

    n: int = eqx.field(static=True)
    in_shape: tuple[int, ...] = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    key: PRNGKeyArray

    name: ClassVar[str]

    @abc.abstractmethod
    def _params(self) -> tuple[Array, ...]:
        """The distribution's parameter arrays, in the order `_sample` takes them."""

    @staticmethod
    @abc.abstractmethod
    def _sample(key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any, *params: Array) -> Array:
        """One row of shape `shape` drawn from `key`."""

    def rows(self, start: int, size: int) -> Float[Array, "size *in"]:
        """Draw the rows `start, ..., start + size - 1` of the stream.

        Each row comes from its own key, so a row is the same whichever block it is
        drawn in. Rows beyond `n` are drawn too (the caller masks them): every block has
        shape `(size, *in_shape)`, so one compiled function serves the whole stream.
        """
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or start < 0:
            raise ValueError(f"`start` must be an int >= 0, got {start!r}.")
        hi, lo = divmod(int(start), 2**32)
        return _draw(
            type(self)._sample,
            self.in_shape,
            self.dtype,
            self.key,
            self._params(),
            jnp.asarray(hi, jnp.uint32),
            jnp.asarray(lo, jnp.uint32),
            int(size),
        )

    def chunk(self, index: int, size: int) -> Float[Array, "size *in"]:
        """Draw chunk `index` of `size` samples: `self.rows(index * size, size)`."""
        if isinstance(index, jax.Array):
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
            raise ValueError(f"`index` must be an int >= 0, got {index!r}.")
        return self.rows(int(index) * int(size), size)

    def __len__(self) -> int:
        return self.n


class Uniform(AbstractSampler):
    """Independent `x_i ~ U(low_i, high_i)` (see `jacsens.uniform`)."""

    low: Array
    high: Array

    name: ClassVar[str] = "uniform"

    def _params(self):
        return (self.low, self.high)

    @staticmethod
    def _sample(key, shape, dtype, low, high):
        return jax.random.uniform(key, shape, dtype, minval=low, maxval=high)


class Normal(AbstractSampler):
    """Independent `x_i ~ N(mean_i, std_i²)` (see `jacsens.normal`)."""

    mean: Array
    std: Array

    name: ClassVar[str] = "normal"

    def _params(self):
        return (self.mean, self.std)

    @staticmethod
    def _sample(key, shape, dtype, mean, std):
        return mean + std * jax.random.normal(key, shape, dtype)


@eqx.filter_jit
def _draw(sample, in_shape, dtype, key, params, start_hi, start_lo, size: int):
    # `n` is not an argument: samplers of any length share one compiled function.
    # Row r = start + j, as a 64-bit number split into two uint32 words (no x64 needed).
    j = jnp.arange(size, dtype=jnp.uint32)
    lo = start_lo + j  # wraps modulo 2**32
    hi = start_hi + (lo < start_lo).astype(jnp.uint32)  # carry

    def one(hi_word, lo_word):
        k = jax.random.fold_in(jax.random.fold_in(key, hi_word), lo_word)
        return sample(k, in_shape, dtype, *params)

    return jax.vmap(one)(hi, lo)


def uniform(
    bounds: Float[Array, "in 2"] | Any,
    n: int,
    key: PRNGKeyArray,
    *,
    dtype: Any = None,
) -> AbstractSampler:
    """Independent uniform inputs `x_i ~ U(low_i, high_i)`, generated chunk by chunk.

    **Arguments:**

    - `bounds`: `(in, 2)` array of `[low, high]` rows, one per input feature (or
        `(*in_shape, 2)` for multi-dimensional inputs; a single `[low, high]` of shape
        `(2,)` for a model with scalar input, `in_shape = ()`). Every `low < high`. Or a
        SALib problem dict whose `dists` are all `unif` (or absent): its `names` become
        the feature names (see `jacsens.from_problem`).
    - `n`: number of samples.
    - `key`: a JAX PRNG key.
    - `dtype`: sample dtype (default: JAX's default float).

    **Returns:**

    A `jacsens.Sampler` to pass as `data` to `jacsens.sensitivity`.

    **Raises:**

    `ValueError` for a problem dict with other `dists`; `TypeError` naming `bounds` if
    it holds anything but real numbers (strings included);
    `ValueError` naming `bounds` if its last axis is not 2, an entry is not finite, or
    `low >= high`; naming `n` if it is not a positive int.
    """
    if isinstance(bounds, Mapping):
        spec = parse_problem(bounds)
        if any(d != "unif" for d in spec.dists):
            raise ValueError(
                f"`bounds` is a SALib problem with dists {list(spec.dists)}; "
                "jacsens.uniform draws only 'unif': use jacsens.from_problem(problem, n, key)."
            )
        return problem_sampler(spec, n, key, dtype)
    n = _check_n(n)
    key = _as_key(key)
    dtype = _float_dtype(dtype)
    lo, hi = uniform_bounds(bounds)
    return Uniform(n, tuple(lo.shape), dtype, key, jnp.asarray(lo, dtype), jnp.asarray(hi, dtype))


def uniform_bounds(bounds: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(low, high)` of `(*in_shape, 2)` uniform bounds as float64 arrays `in_shape`,
    checked as `uniform` documents (`TypeError`/`ValueError` naming `bounds`)."""
    b = _as_float64(bounds, "bounds")
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
    return lo, hi


def normal(
    mean: Float[Array, " *in"] | Any,
    std: Float[Array, " *in"] | Any,
    n: int,
    key: PRNGKeyArray,
    *,
    dtype: Any = None,
) -> AbstractSampler:
    """Independent normal inputs `x_i ~ N(mean_i, std_i²)`, generated chunk by chunk.

    **Arguments:**

    - `mean`: per-feature means, shape `in_shape` (or `(in,)`; a scalar for a model with
        scalar input, `in_shape = ()`).
    - `std`: per-feature standard deviations, broadcastable to `mean`, all `> 0`.
    - `n`: number of samples.
    - `key`: a JAX PRNG key.
    - `dtype`: sample dtype (default: JAX's default float).

    **Returns:**

    A `jacsens.Sampler` to pass as `data` to `jacsens.sensitivity`.

    **Raises:**

    `TypeError` naming `mean`/`std` if they hold anything but real numbers; `ValueError`
    naming them if they are not finite, `std <= 0`, or their shapes do not broadcast;
    naming `n` if it is not a positive int.
    """
    n = _check_n(n)
    key = _as_key(key)
    dtype = _float_dtype(dtype)
    m = _as_float64(mean, "mean")
    s = _as_float64(std, "std")
    try:
        s = np.broadcast_to(s, m.shape)
    except ValueError as e:
        raise ValueError(
            f"`std` must broadcast to the shape of `mean` {m.shape}, got shape {s.shape}."
        ) from e
    if not np.all(np.isfinite(m)):
        raise ValueError("`mean` must be finite.")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"`std` must be finite and > 0, got min {s.min()!r}.")
    return Normal(n, tuple(m.shape), dtype, key, jnp.asarray(m, dtype), jnp.asarray(s, dtype))


# --------------------------------------------------------------------------- SALib problems

# SALib's names for the marginal distributions a problem dict may give in `dists`, in the
# order of their codes. Every kind is drawn as `x = T(u, z)` from one uniform `u` and one
# standard normal `z` per feature, with per-feature parameters `(p0, p1, p2)` prepared on
# the host so that no branch of the transform sees invalid values (see `marginal_transform`).
DISTS = ("unif", "logunif", "norm", "lognorm", "triang")
_UNIF, _LOGUNIF, _NORM, _LOGNORM, _TRIANG = range(len(DISTS))


class Problem(NamedTuple):
    """A parsed SALib problem: `names` (or None), `dists` (a SALib name per feature), the
    raw `bounds` `(d, 3)` (unused entries 0) and the transform parameters `params`
    `(d, 3)` with their `codes` `(d,)`."""

    names: tuple[str, ...] | None
    dists: tuple[str, ...]
    bounds: np.ndarray
    codes: np.ndarray
    params: np.ndarray

    @property
    def num_vars(self) -> int:
        return len(self.dists)


def _problem_row(i: int, dist: str, row: np.ndarray) -> np.ndarray:
    """The transform parameters of feature `i` (see `marginal_transform`), checked as SALib
    checks them; errors name `problem['bounds'][i]`."""
    where = f"`problem['bounds'][{i}]` ({dist})"
    want = 3 if dist == "triang" else 2
    if row.shape != (want,):
        hint = (
            " SALib's deprecated two-value triang [end, peak] is not read: give "
            "[start, end, peak fraction]."
            if dist == "triang"
            else ""
        )
        raise ValueError(f"{where} must have {want} numbers, got {row.tolist()}.{hint}")
    if not np.all(np.isfinite(row)):
        raise ValueError(f"{where} must be finite, got {row.tolist()}.")
    a, b = float(row[0]), float(row[1])
    if dist == "unif":
        if not a < b:
            raise ValueError(f"{where} is [low, high] with low < high, got {row.tolist()}.")
        return np.array([a, b - a, 0.0])
    if dist == "logunif":
        if not 0 < a < b:
            raise ValueError(f"{where} is [low, high] with 0 < low < high, got {row.tolist()}.")
        return np.array([math.log(a), math.log(b) - math.log(a), 0.0])
    if dist in ("norm", "lognorm"):
        if not b > 0:
            what = "[mean, sd]" if dist == "norm" else "[ln-space mean, ln-space sd]"
            raise ValueError(f"{where} is {what} with sd > 0, got {row.tolist()}.")
        return np.array([a, b, 0.0])
    c = float(row[2])  # triang: [start, end, peak as a fraction of end - start]
    if not (a < b and 0 <= c <= 1):
        raise ValueError(
            f"{where} is [start, end, peak fraction] with start < end and 0 <= peak <= 1, "
            f"got {row.tolist()}."
        )
    return np.array([a, b - a, c])


def parse_problem(problem: Mapping) -> Problem:
    """Read and check a SALib problem dict (`num_vars`, `bounds`, optional `names`, `dists`).

    **Raises:**

    `ValueError`/`TypeError` naming the key (`problem['bounds'][i]` for one feature) for a
    missing key, a count that disagrees with `num_vars`, a distribution jacsens cannot draw
    (anything but `unif`, `logunif`, `norm`, `lognorm`, `triang`) or parameters SALib
    would refuse.
    """
    if not isinstance(problem, Mapping):
        raise TypeError(f"`problem` must be a SALib problem dict, got {type(problem).__name__}.")
    if "bounds" not in problem:
        raise ValueError("`problem` must have a 'bounds' entry (one row per input).")
    rows = list(problem["bounds"])
    d = problem.get("num_vars", len(rows))
    if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1:
        raise ValueError(f"`problem['num_vars']` must be a positive int, got {d!r}.")
    if len(rows) != d:
        raise ValueError(f"`problem['bounds']` must have num_vars={d} rows, got {len(rows)}.")
    names = problem.get("names")
    if names is not None:
        if isinstance(names, str) or len(names) != d:
            raise ValueError(f"`problem['names']` must be {d} names, got {names!r:.80}.")
        names = tuple(str(v) for v in names)
    dists = problem.get("dists")
    dists = ("unif",) * d if dists is None else tuple(dists)
    if len(dists) != d:
        raise ValueError(f"`problem['dists']` must have {d} entries, got {len(dists)}.")
    bad = [x for x in dists if x not in DISTS]
    if bad:
        raise ValueError(
            f"`problem['dists']` has {bad[0]!r}; jacsens draws {', '.join(DISTS)} (SALib's names)."
        )
    raw = np.zeros((d, 3))
    params = np.zeros((d, 3))
    for i, (dist, row) in enumerate(zip(dists, rows, strict=True)):
        r = _as_float64(row, f"problem['bounds'][{i}]").reshape(-1)
        raw[i, : r.size] = r[:3]
        params[i] = _problem_row(i, dist, r)
    codes = np.array([DISTS.index(x) for x in dists], np.int32)
    return Problem(names, dists, raw, codes, params)


def marginal_transform(xp: Any, codes: Any, params: Any, u: Any, z: Any) -> Any:
    """`x = T(u, z)` feature by feature: `u` uniform on (0, 1), `z` standard normal (only
    `norm`/`lognorm` read `z`); `xp` is `numpy` or `jax.numpy`, arrays `(..., d)`.

    unif `p0 + p1·u`; logunif `exp(p0 + p1·u)`; norm `p0 + p1·z`; lognorm `exp(p0 + p1·z)`;
    triang, the inverse CDF of the triangle on `[p0, p0 + p1]` with its peak at the fraction
    `c = p2`: `p0 + p1·sqrt(c·u)` for `u < c`, else `p0 + p1·(1 - sqrt((1-c)(1-u)))`.
    """
    p0, p1, c = params[:, 0], params[:, 1], params[:, 2]
    normal_kind = (codes == _NORM) | (codes == _LOGNORM)
    lin = p0 + p1 * xp.where(normal_kind, z, u)
    log_kind = (codes == _LOGUNIF) | (codes == _LOGNORM)
    # the where's other branch may overflow to inf for linear kinds: it is not selected
    x = xp.where(log_kind, xp.exp(xp.where(log_kind, lin, 0 * lin)), lin)
    one = xp.ones_like(u)
    left = p0 + p1 * xp.sqrt(c * u)
    right = p0 + p1 * (one - xp.sqrt((one - c) * (one - u)))
    return xp.where(codes == _TRIANG, xp.where(u < c, left, right), x)


class Marginals(AbstractSampler):
    """Independent inputs with SALib marginals (see `jacsens.from_problem`)."""

    codes: Array
    params: Array
    feature_names: tuple[str, ...] | None = eqx.field(static=True)

    name: ClassVar[str] = "marginals"

    def _params(self):
        return (self.codes, self.params)

    @staticmethod
    def _sample(key, shape, dtype, codes, params):
        ku, kz = jax.random.split(key)
        u = jax.random.uniform(ku, shape, dtype)
        z = jax.random.normal(kz, shape, dtype)
        return marginal_transform(jnp, codes, params, u, z)


# --------------------------------------------------------------------------- sources


class AbstractSource(abc.ABC):
    """Blocks of rows of a data set or stream (see the module docstring).

    **Attributes:** `in_shape`, `dtype`, `n` (None while a stream's length is unknown) and
    `feature_names` (None unless the data named their columns).
    """

    in_shape: tuple[int, ...]
    dtype: Any
    n: int | None
    feature_names: tuple[str, ...] | None = None
    hint: str | None = None  # added to a shape error: how the data were read

    @abc.abstractmethod
    def read(self, start: int, size: int) -> tuple[Any, int]:
        """`(block of exactly size rows, number of real rows)`; 0 real rows past the end."""

    def release(self, row: int) -> None:  # noqa: B027 - random-access sources keep nothing
        """Rows before `row` will not be read again."""

    def prefetch(self, rows: int) -> None:  # noqa: B027 - only streams have an unknown `n`
        """Make `n` known if the data end within `rows` rows (streams only)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """What identifies the data in a checkpoint, beyond their shapes."""


class SamplerSource(AbstractSource):
    def __init__(self, sampler: AbstractSampler):
        self.sampler = sampler
        self.in_shape, self.dtype, self.n = sampler.in_shape, sampler.dtype, sampler.n
        self.feature_names = getattr(sampler, "feature_names", None)

    def read(self, start, size):
        return self.sampler.rows(start, size), max(0, min(size, self.n - start))

    def fingerprint(self) -> str:
        """Exact: the distribution, `n`, dtype, PRNG key (implementation and data) and
        parameters."""
        s = self.sampler
        h = hashlib.sha256(str(jax.random.key_impl(s.key)).encode())
        h.update(np.asarray(jax.random.key_data(s.key)).tobytes())
        for p in s._params():
            h.update(f"|{p.shape}:{p.dtype}|".encode())
            h.update(np.asarray(p).tobytes())
        return f"{s.name}:{s.n}:{np.dtype(s.dtype).name}:{h.hexdigest()[:32]}"


@eqx.filter_jit
def _take_rows(X, start, size: int):
    idx = jnp.minimum(start + jnp.arange(size), X.shape[0] - 1)
    return X[idx]


def _check_rows(X: Any, what: str) -> None:
    if X.ndim < 1:  # (n,) is n scalar samples; the model check follows in `sensitivity`
        raise ValueError(
            f"`data` must have shape (n_samples, *in_shape), got {what} of shape {X.shape}."
        )
    if X.shape[0] == 0:
        raise ValueError("`data` is empty: it has 0 samples.")
    if not _is_float_dtype(X.dtype):
        raise TypeError(f"`data` must have a floating dtype, got {what} of dtype {X.dtype}.")


class ArraySource(AbstractSource):
    def __init__(self, X: Any, feature_names: tuple[str, ...] | None = None, what="an array"):
        _check_rows(X, what)
        self.X = X
        self.in_shape, self.dtype, self.n = tuple(X.shape[1:]), X.dtype, int(X.shape[0])
        self.feature_names = feature_names

    def read(self, start, size):
        n_valid = max(0, min(size, self.n - start))
        if isinstance(self.X, jax.Array):
            return _take_rows(self.X, jnp.asarray(start), size), n_valid
        block = np.asarray(self.X[start : start + n_valid])  # a memmap reads only these
        if n_valid < size:
            pad = np.zeros((size - n_valid, *self.in_shape), block.dtype)
            block = np.concatenate([block, pad])
        return block, n_valid

    def fingerprint(self) -> str:
        return f"array:{self.n}:{np.dtype(self.dtype).name}:{array_digest(self.X)}"


def array_digest(X: Any) -> str:
    """A content hash of an `(n, ...)` array with its shape and dtype.

    Arrays up to `_FULL_HASH_BYTES` are hashed whole. Larger ones (a big memmap: hashing it
    whole would read the file once more at every resume) are hashed by their first and
    last rows and a strided sample of rows, at most `_SAMPLE_ROWS` rows and `_SAMPLE_BYTES`
    bytes; an edit confined to rows outside that sample is then not detected.
    """
    n = int(X.shape[0])
    row_bytes = max(1, math.prod(X.shape[1:]) * np.dtype(X.dtype).itemsize)
    h = hashlib.sha256(f"{tuple(X.shape)}:{np.dtype(X.dtype).str}".encode())
    if n * row_bytes <= _FULL_HASH_BYTES:
        step = max(1, _FULL_HASH_BYTES // 16 // row_bytes)  # bounded host copies
        for s in range(0, n, step):
            h.update(np.ascontiguousarray(to_host(X[s : s + step])).tobytes())
        return "full:" + h.hexdigest()[:32]
    budget = max(3, min(_SAMPLE_ROWS, _SAMPLE_BYTES // row_bytes))
    edge = max(1, budget // 8)
    stride = max(1, -(-n // (budget - 2 * edge)))
    for part in (X[:edge], X[max(0, n - edge) :], X[::stride]):
        h.update(np.ascontiguousarray(to_host(part)).tobytes())
    return f"sampled{stride}:" + h.hexdigest()[:32]


class IterableSource(AbstractSource):
    """A stream of batches, re-cut into blocks. Rows are kept from the oldest row that may
    be read again (the last `release`) to the newest pulled; a block inside one batch is a
    view of it, a block spanning batches is copied once."""

    def __init__(self, batches: Iterable):
        self._it: Iterator = iter(batches)
        self._k = 0  # batches pulled, for error messages
        first = self._next_batch()
        if first is None:
            raise ValueError("`data` is empty: the iterable yielded no batches.")
        self.in_shape, self.dtype, self.n = tuple(first.shape[1:]), first.dtype, None
        self._pieces: collections.deque[np.ndarray] = collections.deque()
        self._start = 0  # row index of the first row held
        self._end = 0  # one past the last row pulled
        self._released = 0
        self._exhausted = False
        self._add(first)

    def _next_batch(self) -> np.ndarray | None:
        for b in self._it:
            k = self._k
            self._k += 1
            if not isinstance(b, np.ndarray | jax.Array):
                b = np.asarray(b)
            if b.ndim < 1:
                raise ValueError(
                    f"`data` batch {k} must have shape (batch, *in_shape), got shape {b.shape}."
                )
            if not _is_float_dtype(b.dtype):
                raise TypeError(f"`data` batch {k} must have a floating dtype, got {b.dtype}.")
            if k > 0 and tuple(b.shape[1:]) != self.in_shape:
                raise ValueError(
                    f"`data` batch {k} has feature shape {tuple(b.shape[1:])}, but earlier "
                    f"batches had {self.in_shape}; every batch must have the same feature shape."
                )
            b = to_host(b)
            return b if k == 0 else b.astype(self.dtype, copy=False)
        return None

    def _add(self, b: np.ndarray) -> None:
        self._pieces.append(b)
        self._end += b.shape[0]
        self._trim()

    def _pull(self) -> bool:
        b = self._next_batch()
        if b is None:
            self._exhausted = True
            self.n = self._end
            return False
        self._add(b)
        return True

    def _trim(self) -> None:
        while self._pieces and self._start + self._pieces[0].shape[0] <= self._released:
            self._start += self._pieces.popleft().shape[0]
        if self._pieces and self._start < self._released:
            self._pieces[0] = self._pieces[0][self._released - self._start :]
            self._start = self._released

    def release(self, row):
        self._released = max(self._released, row)
        self._trim()
        if not self._pieces:
            self._start = max(self._start, min(self._released, self._end))

    def prefetch(self, rows):
        while not self._exhausted and self._end < self._released + rows:
            self._pull()

    def read(self, start, size):
        if start < self._start:
            raise RuntimeError(f"row {start} of the stream was already released")
        while not self._exhausted and self._end < start + size:
            self._pull()
        parts, row = [], self._start
        for p in self._pieces:
            lo, hi = max(start, row), min(start + size, row + p.shape[0])
            if lo < hi:
                parts.append(p[lo - row : hi - row])
            row += p.shape[0]
        n_valid = sum(p.shape[0] for p in parts)
        if n_valid == size and len(parts) == 1:
            return parts[0], n_valid
        if n_valid < size:
            parts.append(np.zeros((size - n_valid, *self.in_shape), self.dtype))
        return np.concatenate(parts), n_valid

    def fingerprint(self) -> str:
        """Only the dtype: a stream's batches cannot be fingerprinted without consuming
        them, so passing other batches under the same checkpoint is not detected."""
        return f"iterable:{np.dtype(self.dtype).name}"


# --------------------------------------------------------------------------- make_source


def _pandas_type(data: Any, name: str) -> bool:
    pd = sys.modules.get("pandas")  # if pandas was never imported, data is not pandas
    return pd is not None and isinstance(data, getattr(pd, name))


def _frame_source(df: Any) -> ArraySource:
    bad = [str(c) for c, t in df.dtypes.items() if not _is_float_dtype(t)]
    if bad:
        raise TypeError(
            f"`data` must have floating columns; the DataFrame's columns {bad} are not "
            "(convert them with df.astype(float))."
        )
    dtype = np.result_type(*df.dtypes) if len(df.columns) else np.float64
    X = df.to_numpy(dtype=dtype)
    return ArraySource(X, tuple(str(c) for c in df.columns), "a DataFrame")


def make_source(data: Any) -> AbstractSource:
    """The source of a `data` argument of `sensitivity` (see the module docstring)."""
    if isinstance(data, AbstractSampler):
        return SamplerSource(data)
    as_source = getattr(data, "as_source", None)  # samplers defined elsewhere (`_qmc`)
    if callable(as_source):
        return as_source()
    if isinstance(data, np.ndarray | jax.Array):
        return ArraySource(data)
    if _pandas_type(data, "DataFrame"):
        return _frame_source(data)
    if _pandas_type(data, "Series"):
        return _frame_source(data.to_frame())
    if isinstance(data, Mapping):
        raise TypeError(
            "`data` must be an array, an array-like of rows, an iterator of batches or a "
            "sampler, got a dict. (A SALib problem dict describes a distribution: use "
            "jacsens.from_problem(problem, n, key); columns by name: pass a pandas DataFrame.)"
        )
    if isinstance(data, list | tuple):
        try:
            X = np.asarray(data)
        except ValueError as e:  # ragged: most likely a list of batches
            raise ValueError(
                "`data` given as a list/tuple is read as one array of rows, but its rows "
                f"have different shapes ({e}). To stream batches of different sizes, pass "
                "an iterator: iter(batches)."
            ) from e
        source = ArraySource(X, None, "a list/tuple")
        source.hint = (
            "(A list/tuple is read as one array of rows; to stream batches, pass an "
            "iterator: iter(batches).)"
        )
        return source
    if hasattr(data, "__array__") and not isinstance(data, str | bytes):
        return ArraySource(np.asarray(data), None, f"a {type(data).__name__}")
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise TypeError(
            "`data` must be an array (numpy, memmap or jax), an array-like of rows (list, "
            "tuple, DataFrame), an iterator of batches or a sampler (jacsens.uniform / "
            f"jacsens.normal), got {type(data).__name__}."
        )
    return IterableSource(data)


def problem_sampler(spec: Problem, n: Any, key: Any, dtype: Any = None) -> Marginals:
    """Independent random draws from a parsed SALib problem's marginals (see
    `jacsens.from_problem`, which also offers quasi-random points)."""
    n = _check_n(n)
    key = _as_key(key)
    dtype = _float_dtype(dtype)
    return Marginals(
        n,
        (spec.num_vars,),
        dtype,
        key,
        jnp.asarray(spec.codes),
        jnp.asarray(spec.params, dtype),
        spec.names,
    )
