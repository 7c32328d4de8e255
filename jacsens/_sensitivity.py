"""Global sensitivity analysis: stream inputs through the Jacobian engine into `_stats`.

`sensitivity(model, data)` computes, for every (output, input) pair, statistics of the
derivative `∂y_o/∂x_i` over the input distribution given by `data`: the mean, mean
absolute value, the derivative-based global sensitivity measure (DGSM) `ν = E[(∂y/∂x)²]`,
the standard deviation and the max, each mean with its Monte Carlo standard error.

Data are processed in chunks of a fixed size: the last, partial chunk is padded and masked,
so exactly one shape is compiled and memory does not depend on the number of samples.
Each chunk is reduced to a `StreamingStats` on the device(s), in the dtype of the
Jacobian (promoted to float64 when `jax_enable_x64` is on); chunk states are merged on the
host in float64, in chunk order. So how the work is split (chunk size, number of devices)
changes the result only by the round-off of the per-chunk reductions: about 1e-7 relative
for a float32 model with x64 off, float64 round-off for a float64 model. An
interrupted-and-resumed run repeats the same chunks and gives the same result as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, Float

from ._atomic import atomic_write
from ._jacobian import MODES, _resolve_mode, input_hessian, input_jacobian
from ._progress import progress_bar
from ._samplers import Sampler
from ._stats import (
    StreamingStats,
    stats_from_batch,
    stats_from_state_dict,
    stats_init,
    stats_merge,
    stats_stack_merge,
    stats_state_dict,
    stats_to_host,
)
from ._validate import check_choice, check_positive_int, sample_shapes

_STATS = ("mean", "mean_abs", "dgsm", "std", "max_abs")
_SE_OF = {"mean": "mean_se", "mean_abs": "mean_abs_se", "dgsm": "dgsm_se", "std": "std_se"}
_CHECKPOINT_VERSION = 2  # 2: identity has the model and a data content hash


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True, eq=False)
class SensitivityResult:
    """Derivative statistics of a model over an input distribution.

    Every array has shape `(n_out, n_in)`: row `o`, column `i` describes `∂y_o/∂x_i`
    (outputs and inputs flattened in C order). Standard errors are Monte Carlo standard
    errors of the estimate, `std(quantity)/sqrt(n)`; `std_se` is the delta-method
    large-sample value. `max_abs` has no standard error.

    **Fields:**

    - `mean`, `mean_se`: `E[∂y/∂x]` and its standard error.
    - `mean_abs`, `mean_abs_se`: `E|∂y/∂x|` and its standard error.
    - `dgsm`, `dgsm_se`: `ν = E[(∂y/∂x)²]` and its standard error.
    - `std`, `std_se`: the standard deviation of `∂y/∂x` over the inputs.
    - `max_abs`: the largest `|∂y/∂x|` seen.
    - `n`: number of samples used; `n_omitted`: rows skipped as non-finite
        (`nan_policy="omit"`).
    - `feature_names`, `output_names`: tuples of `n_in` and `n_out` names.
    - `interactions`, `interactions_se`: `E|∂²y_o/∂x_i∂x_j|`, shape `(n_out, n_in, n_in)`,
        when computed with `interactions=True`, else `None`.
    - `mode`: the Jacobian mode that was used.
    """

    mean: np.ndarray
    mean_se: np.ndarray
    mean_abs: np.ndarray
    mean_abs_se: np.ndarray
    dgsm: np.ndarray
    dgsm_se: np.ndarray
    std: np.ndarray
    std_se: np.ndarray
    max_abs: np.ndarray
    n: int
    n_omitted: int
    feature_names: tuple[str, ...]
    output_names: tuple[str, ...]
    interactions: np.ndarray | None = None
    interactions_se: np.ndarray | None = None
    mode: str = "auto"

    @property
    def n_out(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.mean.shape[1])

    def __repr__(self) -> str:
        extra = ", interactions" if self.interactions is not None else ""
        return (
            f"SensitivityResult(n_out={self.n_out}, n_in={self.n_in}, n={self.n}, "
            f"n_omitted={self.n_omitted}, mode={self.mode!r}{extra})"
        )

    def _output_index(self, output: int | str) -> int:
        if isinstance(output, str):
            if output not in self.output_names:
                raise ValueError(
                    f"Unknown `output` {output!r}; expected one of {self.output_names}."
                )
            return self.output_names.index(output)
        if isinstance(output, bool) or not isinstance(output, int | np.integer):
            raise TypeError(f"`output` must be an int or an output name, got {output!r}.")
        if not -self.n_out <= output < self.n_out:
            raise ValueError(f"`output` must be in [0, {self.n_out}), got {output}.")
        return int(output) % self.n_out

    def values(self, by: str = "mean_abs", output: int | str = 0) -> np.ndarray:
        """The `(n_in,)` values of statistic `by` for one output."""
        check_choice(by, "by", _STATS)
        return np.asarray(getattr(self, by))[self._output_index(output)]

    def se(self, by: str = "mean_abs", output: int | str = 0) -> np.ndarray | None:
        """The `(n_in,)` standard errors of statistic `by` (None for `max_abs`)."""
        check_choice(by, "by", _STATS)
        if by not in _SE_OF:
            return None
        return np.asarray(getattr(self, _SE_OF[by]))[self._output_index(output)]

    def ranking(self, output: int | str = 0, by: str = "mean_abs") -> list[str]:
        """Feature names sorted by decreasing importance for one output.

        **Arguments:**

        - `output`: output index or name.
        - `by`: `"mean_abs"` (default), `"dgsm"`, `"std"`, `"max_abs"`, or `"mean"`
            (ranked by `|mean|`).

        **Returns:**

        A list of the `n_in` feature names, most important first (ties keep input order).
        """
        v = self.values(by, output)
        if by == "mean":
            v = np.abs(v)
        order = np.argsort(-v, kind="stable")
        return [self.feature_names[i] for i in order]

    def to_frame(self):
        """A tidy `pandas.DataFrame`: one row per (output, feature).

        Columns: `output, feature, mean, mean_se, mean_abs, mean_abs_se, dgsm, dgsm_se,
        std, std_se, max_abs`.
        """
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "`SensitivityResult.to_frame` needs pandas: pip install 'jacsens[data]'."
            ) from e
        cols = ["mean", "mean_se", "mean_abs", "mean_abs_se", "dgsm", "dgsm_se"]
        cols += ["std", "std_se", "max_abs"]
        data: dict[str, Any] = {
            "output": np.repeat(np.asarray(self.output_names, dtype=object), self.n_in),
            "feature": np.tile(np.asarray(self.feature_names, dtype=object), self.n_out),
        }
        for c in cols:
            data[c] = np.asarray(getattr(self, c)).reshape(-1)
        return pd.DataFrame(data)

    def plot(self, kind: Literal["bar", "heatmap"] = "bar", **kwargs):
        """A matplotlib figure: `"bar"` (one output, error bars) or `"heatmap"`.

        Keyword arguments go to `jacsens.plot.sensitivity_bar` / `sensitivity_heatmap`
        (`output`, `by`, `top`, `ax`, ...). Needs the `plot` extra (matplotlib).
        """
        from . import plot

        return plot.plot_sensitivity(self, kind, **kwargs)

    def sobol_bound(
        self, bounds: Float[Array, "in 2"] | Any, output_variance: float | Any
    ) -> np.ndarray:
        """DGSM upper bound on total Sobol indices, for independent uniform inputs.

        For `x_i ~ U(a_i, b_i)`, `S_i^T ≤ (b_i - a_i)² ν_i / (π² Var[y])`
        (Sobol' & Kucherenko 2009, Lamboni et al. 2013).

        **Arguments:**

        - `bounds`: `(n_in, 2)` rows `[a_i, b_i]` with `a_i < b_i`.
        - `output_variance`: `Var[y]`, a positive scalar or one per output `(n_out,)`.

        **Returns:**

        `(n_out, n_in)` upper bounds (they may exceed 1; the bound is loose when the
        model is far from additive).
        """
        b = np.asarray(bounds, dtype=np.float64)
        if b.shape != (self.n_in, 2):
            raise ValueError(f"`bounds` must have shape ({self.n_in}, 2), got {b.shape}.")
        width = b[:, 1] - b[:, 0]
        if np.any(~(width > 0)):
            i = int(np.argmax(~(width > 0)))
            raise ValueError(f"`bounds` must have low < high; input {i} has {b[i].tolist()}.")
        var = np.asarray(output_variance, dtype=np.float64)
        if var.ndim == 0:
            var = np.full((self.n_out,), float(var))
        if var.shape != (self.n_out,):
            raise ValueError(
                f"`output_variance` must be a scalar or have shape ({self.n_out},), "
                f"got {var.shape}."
            )
        if np.any(~(var > 0)):
            raise ValueError(f"`output_variance` must be > 0, got {var.tolist()}.")
        return width[None, :] ** 2 * self.dgsm / (math.pi**2 * var[:, None])

    def save(self, path: str | os.PathLike) -> None:
        """Write the result to `path` atomically: `.json` for JSON, anything else `.npz`.

        Neither format uses pickle. Load with `SensitivityResult.load(path)`.
        """
        path = os.fspath(path)
        meta = {
            "format": "jacsens.SensitivityResult",
            "version": 1,
            "n": self.n,
            "n_omitted": self.n_omitted,
            "feature_names": list(self.feature_names),
            "output_names": list(self.output_names),
            "mode": self.mode,
        }
        arrays = {f: np.asarray(getattr(self, f), np.float64) for f in _ARRAY_FIELDS}
        arrays = {k: v for k, v in arrays.items() if v.ndim > 0}
        if path.endswith(".json"):
            payload = dict(meta, **{k: v.tolist() for k, v in arrays.items()})
            data = json.dumps(payload, allow_nan=True).encode()
            atomic_write(path, lambda f: f.write(data))
        else:
            atomic_write(path, lambda f: np.savez(f, _meta=np.array(json.dumps(meta)), **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityResult:
        """Read a result written by `save`."""
        path = os.fspath(path)
        if path.endswith(".json"):
            with open(path) as f:
                d = json.load(f)
            meta, arrays = d, {f: d[f] for f in _ARRAY_FIELDS if f in d}
        else:
            with np.load(path, allow_pickle=False) as z:
                if "_meta" not in z:
                    raise ValueError(f"{path!r} is not a saved SensitivityResult.")
                meta = json.loads(str(z["_meta"]))
                arrays = {f: z[f] for f in _ARRAY_FIELDS if f in z}
        if meta.get("format") != "jacsens.SensitivityResult":
            raise ValueError(f"{path!r} is not a saved SensitivityResult.")
        kw = {f: (np.asarray(v, np.float64) if v is not None else None) for f, v in arrays.items()}
        return cls(
            **kw,
            n=int(meta["n"]),
            n_omitted=int(meta["n_omitted"]),
            feature_names=tuple(meta["feature_names"]),
            output_names=tuple(meta["output_names"]),
            mode=str(meta["mode"]),
        )


_ARRAY_FIELDS = (
    "mean",
    "mean_se",
    "mean_abs",
    "mean_abs_se",
    "dgsm",
    "dgsm_se",
    "std",
    "std_se",
    "max_abs",
    "interactions",
    "interactions_se",
)


# --------------------------------------------------------------------------- data sources


class _Source:
    """Chunks of a data source: `(index, X of shape (chunk, *in_shape), n_valid)`."""

    in_shape: tuple[int, ...]
    dtype: Any
    n: int | None

    def chunks(self, chunk_size: int, start_chunk: int) -> Iterator[tuple[int, Any, int]]:
        raise NotImplementedError


class _SamplerSource(_Source):
    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.in_shape, self.dtype, self.n = sampler.in_shape, sampler.dtype, sampler.n

    def chunks(self, chunk_size, start_chunk):
        n_chunks = -(-self.n // chunk_size)
        for i in range(start_chunk, n_chunks):
            yield i, self.sampler.chunk(i, chunk_size), min(chunk_size, self.n - i * chunk_size)


@eqx.filter_jit
def _take_rows(X, start, size: int):
    idx = jnp.minimum(start + jnp.arange(size), X.shape[0] - 1)
    return X[idx]


class _ArraySource(_Source):
    def __init__(self, X):
        if X.ndim < 1:  # (n,) is n scalar samples; the model check follows in `sensitivity`
            raise ValueError(
                f"`data` must have shape (n_samples, *in_shape), got an array of shape {X.shape}."
            )
        if X.shape[0] == 0:
            raise ValueError("`data` is empty: it has 0 samples.")
        if not np.issubdtype(np.dtype(X.dtype), np.floating):
            raise TypeError(f"`data` must have a floating dtype, got {X.dtype}.")
        self.X = X
        self.in_shape, self.dtype, self.n = tuple(X.shape[1:]), X.dtype, int(X.shape[0])

    def chunks(self, chunk_size, start_chunk):
        n_chunks = -(-self.n // chunk_size)
        for i in range(start_chunk, n_chunks):
            start = i * chunk_size
            n_valid = min(chunk_size, self.n - start)
            if isinstance(self.X, jax.Array):
                yield i, _take_rows(self.X, jnp.asarray(start), chunk_size), n_valid
            else:  # numpy / memmap: only this chunk's rows are read from disk
                block = np.asarray(self.X[start : start + n_valid])
                if n_valid < chunk_size:
                    pad = np.zeros((chunk_size - n_valid, *self.in_shape), block.dtype)
                    block = np.concatenate([block, pad])
                yield i, block, n_valid


class _IterableSource(_Source):
    def __init__(self, batches: Iterable):
        self.it = iter(batches)
        try:
            first = next(self.it)
        except StopIteration:
            raise ValueError("`data` is empty: the iterable yielded no batches.") from None
        first = self._check(first, 0, None)
        self.first = first
        self.in_shape, self.dtype, self.n = tuple(first.shape[1:]), first.dtype, None

    def _check(self, b, k: int, in_shape):
        if not isinstance(b, np.ndarray | jax.Array):
            b = np.asarray(b)
        if b.ndim < 1:
            raise ValueError(
                f"`data` batch {k} must have shape (batch, *in_shape), got shape {b.shape}."
            )
        if not np.issubdtype(np.dtype(b.dtype), np.floating):
            raise TypeError(f"`data` batch {k} must have a floating dtype, got {b.dtype}.")
        if in_shape is not None and tuple(b.shape[1:]) != in_shape:
            raise ValueError(
                f"`data` batch {k} has feature shape {tuple(b.shape[1:])}, but earlier batches "
                f"had {in_shape}; every batch must have the same feature shape."
            )
        return np.asarray(b)

    def chunks(self, chunk_size, start_chunk):
        skip = start_chunk * chunk_size
        buf: list[np.ndarray] = []
        held = 0
        index = start_chunk
        total = 0

        def batches():
            yield self.first
            for k, b in enumerate(self.it, start=1):
                yield self._check(b, k, self.in_shape)

        for b in batches():
            total += b.shape[0]
            if skip:
                drop = min(skip, b.shape[0])
                b, skip = b[drop:], skip - drop
            # Fill the pending chunk from `b`, then emit whole chunks as views of `b`: each
            # row is copied at most once (by the concatenate of a chunk spanning batches).
            if buf:
                take = min(chunk_size - held, b.shape[0])
                buf.append(b[:take])
                held += take
                b = b[take:]
                if held < chunk_size:
                    continue
                yield index, np.concatenate(buf), chunk_size
                index += 1
                buf, held = [], 0
            full = b.shape[0] // chunk_size
            for k in range(full):
                yield index, b[k * chunk_size : (k + 1) * chunk_size], chunk_size
                index += 1
            rest = b[full * chunk_size :]
            if rest.shape[0]:
                buf, held = [rest], rest.shape[0]
        if total == 0:
            raise ValueError("`data` is empty: its batches hold 0 samples.")
        if held:
            whole = np.concatenate(buf)
            pad = np.zeros((chunk_size - held, *self.in_shape), whole.dtype)
            yield index, np.concatenate([whole, pad]), held


_SAMPLE_ROWS = 1024  # rows of an array read for its fingerprint (at most)
_SAMPLE_BYTES = 8 * 2**20  # and at most this many bytes


def _array_digest(X) -> str:
    """A cheap content hash of an `(n, ...)` array: its shape and dtype, its first and last
    rows, and a strided sample of rows (at most `_SAMPLE_ROWS` rows / `_SAMPLE_BYTES`).

    Only these rows are read (a memmap touches only their pages). An edit confined to
    rows outside the sample is not detected.
    """
    n = int(X.shape[0])
    row_bytes = max(1, math.prod(X.shape[1:]) * np.dtype(X.dtype).itemsize)
    budget = max(3, min(_SAMPLE_ROWS, _SAMPLE_BYTES // row_bytes))
    edge = max(1, budget // 8)
    stride = max(1, -(-n // (budget - 2 * edge)))
    h = hashlib.sha256(f"{tuple(X.shape)}:{np.dtype(X.dtype).str}".encode())
    for part in (X[:edge], X[max(0, n - edge) :], X[::stride]):
        h.update(np.ascontiguousarray(_to_host(part)).tobytes())
    return h.hexdigest()[:32]


def _fingerprint(source: _Source) -> str:
    """What identifies the data stream in a checkpoint (beyond its shapes).

    - sampler: its distribution, `n`, dtype, PRNG key and parameters (exact);
    - array / memmap: `n`, dtype and a content hash of a sample of its rows
        (`_array_digest`);
    - iterable: only `n` (unknown) and dtype: the batches cannot be fingerprinted
        without consuming them, so passing different batches under the same checkpoint
        is not detected.
    """
    if isinstance(source, _SamplerSource):
        s = source.sampler
        h = hashlib.sha256(str(jax.random.key_impl(s.key)).encode())
        h.update(np.asarray(jax.random.key_data(s.key)).tobytes())
        for p in s.params:
            h.update(np.asarray(p).tobytes())
        return f"{s.kind}:{s.n}:{np.dtype(s.dtype).name}:{h.hexdigest()[:16]}"
    if isinstance(source, _ArraySource):
        return f"array:{source.n}:{np.dtype(source.dtype).name}:{_array_digest(source.X)}"
    return f"iterable:{source.n}:{np.dtype(source.dtype).name}"


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _describe(obj: Any) -> str:
    """A process-independent description of a non-array leaf of a model."""
    if obj is None or isinstance(obj, bool | int | float | complex | str | bytes):
        return repr(obj)
    if callable(obj):
        name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
        text = f"{getattr(obj, '__module__', None) or type(obj).__module__}.{name}"
        code = getattr(obj, "__code__", None)  # plain Python functions: their bytecode
        if code is not None:
            text += ":" + hashlib.sha256(code.co_code).hexdigest()[:16]
        return text
    return _ADDRESS.sub("", f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}")


def _model_fingerprint(model: Any) -> str:
    """What identifies the model in a checkpoint: a SHA-256 over its pytree structure
    (with static fields, memory addresses stripped), the shape, dtype and bytes of every
    array leaf, and a description of every other leaf (for a plain Python function: its
    module, name and bytecode; values it reads from globals are not seen).
    """
    leaves, treedef = jax.tree.flatten(model)
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    h.update(_ADDRESS.sub("", str(treedef)).encode())
    for leaf in leaves:
        if eqx.is_array(leaf):
            a = np.ascontiguousarray(_to_host(leaf))
            h.update(f"|{a.shape}:{a.dtype.str}|".encode())
            h.update(a.tobytes())
        else:
            h.update(f"|{_describe(leaf)}|".encode())
    return h.hexdigest()


def _make_source(data: Any) -> _Source:
    if isinstance(data, Sampler):
        return _SamplerSource(data)
    if isinstance(data, np.ndarray | jax.Array):
        return _ArraySource(data)
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise TypeError(
            "`data` must be an array (numpy, memmap or jax), an iterable of batches or a "
            f"sampler (jacsens.uniform / jacsens.normal), got {type(data).__name__}."
        )
    return _IterableSource(data)


# --------------------------------------------------------------------------- per-chunk kernel


def _local_stats(model, X, mask, mode, interactions, n_out, n_in):
    B = X.shape[0]
    J = input_jacobian(model, X, mode=mode).reshape(B, n_out, n_in)
    x_ok = jnp.all(jnp.isfinite(X.reshape(B, -1)), axis=1)
    d_ok = jnp.all(jnp.isfinite(J.reshape(B, -1)), axis=1)
    if interactions:
        H = input_hessian(model, X).reshape(B, n_out, n_in, n_in)
        d_ok = d_ok & jnp.all(jnp.isfinite(H.reshape(B, -1)), axis=1)
    ok = mask & x_ok & d_ok
    # 0 = used or padding, 1 = non-finite input, 2 = non-finite derivative
    bad = jnp.where(mask & ~x_ok, 1, jnp.where(mask & ~d_ok, 2, 0)).astype(jnp.int8)
    out = {"jac": stats_from_batch(J, ok), "bad": bad}
    if interactions:
        out["hess"] = stats_from_batch(H, ok)
    return out


@eqx.filter_jit
def _chunk_stats(model, X, mask, mode, interactions, n_out, n_in, mesh):
    if mesh is None:
        return _local_stats(model, X, mask, mode, interactions, n_out, n_in)
    params, static = eqx.partition(model, eqx.is_array)

    def body(params, X, mask):
        out = _local_stats(eqx.combine(params, static), X, mask, mode, interactions, n_out, n_in)
        # one state per device, stacked along the mesh axis; merged on the host
        return {
            k: (v if k == "bad" else jax.tree.map(lambda x: x[None], v)) for k, v in out.items()
        }

    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P(), P("batch"), P("batch")),
        out_specs=P("batch"),
        check_vma=False,
    )(params, X, mask)


def _to_host(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


# --------------------------------------------------------------------------- checkpoints


def _save_checkpoint(path, meta, jac: StreamingStats, hess: StreamingStats | None):
    arrays = stats_state_dict(jac, "jac_")
    if hess is not None:
        arrays.update(stats_state_dict(hess, "hess_"))
    blob = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, _meta=blob, **arrays))


def _load_checkpoint(path, expect: dict):
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["_meta"]))
            jac = stats_from_state_dict(z, "jac_")
            hess = stats_from_state_dict(z, "hess_") if meta.get("interactions") else None
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"`checkpoint` {path!r} is not a readable sensitivity checkpoint: {e}"
        ) from e
    for k, v in expect.items():
        if meta.get(k) != v:
            raise ValueError(
                f"`checkpoint` {path!r} belongs to a different run: its {k} is "
                f"{meta.get(k)!r}, this run has {v!r}. Use another path or delete the file."
            )
    return meta, jac, hess


# --------------------------------------------------------------------------- entry point


def _resolve_mesh(devices) -> Mesh | None:
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        if "batch" not in devices.axis_names:
            raise ValueError(
                f"`devices` mesh must have an axis named 'batch', got axes {devices.axis_names}."
            )
        return devices
    devs = list(devices)
    if not devs or not all(isinstance(d, jax.Device) for d in devs):
        raise TypeError(
            "`devices` must be None, a jax.sharding.Mesh or a non-empty list of jax devices, "
            f"got {devices!r:.80}."
        )
    return Mesh(np.array(devs), ("batch",))


def _names(names, count: int, argname: str, default_prefix: str) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{default_prefix}{i}" for i in range(count))
    if isinstance(names, str):
        raise TypeError(f"`{argname}` must be a sequence of names, got a string {names!r}.")
    names = tuple(str(n) for n in names)
    if len(names) != count:
        raise ValueError(
            f"`{argname}` must have {count} names (one per element), got {len(names)}."
        )
    return names


def sensitivity(
    model: Callable[[Array], Array],
    data: Any,
    *,
    chunk_size: int = 4096,
    mode: str = "auto",
    feature_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    interactions: bool = False,
    devices: Sequence[jax.Device] | Mesh | None = None,
    progress: bool = True,
    nan_policy: Literal["raise", "omit"] = "raise",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 16,
) -> SensitivityResult:
    """Derivative-based global sensitivity of a model over an input distribution.

    Streams `data` through `jacsens.input_jacobian` chunk by chunk and accumulates, for
    every output `y_o` and input `x_i`, the mean of `∂y_o/∂x_i`, of `|∂y_o/∂x_i|` and of
    `(∂y_o/∂x_i)²` (the DGSM `ν`), the standard deviation and the max `|∂y_o/∂x_i|`, with
    Monte Carlo standard errors. Memory is independent of the number of samples: one chunk
    shape is compiled (the last chunk is padded and its padding masked out) and the
    accumulator is `O(n_out · n_in)`.

    **Arguments:**

    - `model`: callable on one sample `(*in_shape,) -> (*out_shape)`.
    - `data`: the inputs, one of (`in_shape` may be `()`: an array `(N,)` for a model
        with scalar input)
        - an array `(N, *in_shape)`: numpy (including `np.memmap`, read chunk by chunk)
            or jax;
        - an iterable of batches `(B_k, *in_shape)` (any sizes; re-chunked);
        - a sampler, `jacsens.uniform(bounds, n, key)` or `jacsens.normal(mean, std, n,
            key)`, which draws each chunk on the device.
    - `chunk_size`: rows per compiled step (rounded up to a multiple of the number of
        devices). Bounds peak memory. The samples do not depend on it (sampler rows are
        drawn from per-row keys), and the statistics only through the round-off of the
        per-chunk reductions (see `devices`).
    - `mode`: Jacobian mode for `input_jacobian` (`"auto"`, `"rev"`, `"fwd"`, `"chain"`,
        `"backprop"`).
    - `feature_names`, `output_names`: names of the `n_in` inputs and `n_out` outputs.
    - `interactions`: also accumulate `E|∂²y_o/∂x_i∂x_j|` from input Hessians
        (`jacsens.input_hessian`; costs `n_in` times more).
    - `devices`: a list of devices or a `jax.sharding.Mesh` with an axis `"batch"`. Each
        chunk is sharded over the batch axis (`NamedSharding`); every device reduces its
        own rows in the Jacobian's dtype (float32 for a float32 model unless
        `jax_enable_x64` is on, which promotes the reduction to float64); the per-device
        states are merged on the host in float64. So one and several devices give the
        same numbers up to the round-off of the per-device reductions: about 1e-7
        relative for float32, float64 round-off for a float64 model.
    - `progress`: show a tqdm progress bar (samples) when stderr is a terminal and tqdm
        is installed.
    - `nan_policy`: `"raise"` (default) raises on the first row whose input or derivative
        is not finite, naming the chunk and row; `"omit"` leaves such rows out and counts
        them in `n_omitted`.
    - `checkpoint`: a file path. If it exists, the run resumes from the state saved there
        (the same `model` and `data` must be passed again); the state is saved every
        `checkpoint_every` chunks, on interruption and at the end (atomically, `.npz`,
        no pickle). A resumed run gives the same result as an uninterrupted one. The
        file records the run's identity and a run that does not match raises
        `ValueError`: shapes, `chunk_size`, `mode`, `interactions`; the model (a SHA-256
        of its array leaves with their shapes and dtypes, its pytree structure and static
        fields, and for plain functions their name and bytecode — not globals they read);
        the data: a sampler exactly (distribution, `n`, key, parameters), an array or
        memmap by a content hash of its shape, dtype, first and last rows and a strided
        sample of rows (an edit confined to unsampled rows is not detected), an iterable
        only by its dtype and feature shape (its batches cannot be fingerprinted without
        consuming them: passing other batches is not detected). The hashes are computed
        only when `checkpoint` is given.
    - `checkpoint_every`: chunks between saves.

    **Returns:**

    A `SensitivityResult` with `(n_out, n_in)` arrays.

    **Raises:**

    `ValueError` naming the argument for: wrong `feature_names`/`output_names` lengths,
    empty `data`, batches of different feature shapes, non-finite values under
    `nan_policy="raise"`, a bad `chunk_size`, `mode`, `nan_policy` or `devices`, or a
    checkpoint from a different run. `TypeError` for non-floating data.

    **Several hosts.** The same call runs multi-controller: start every process with
    `jax.distributed.initialize()`, build a global mesh over all devices and pass it:

    ```python
    jax.distributed.initialize()  # coordinator address etc. from the environment
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    result = jacsens.sensitivity(model, jacsens.uniform(bounds, n, key), devices=mesh)
    ```

    Every process runs the same script with the same `data` (a sampler with the same key,
    or the same file); each process computes only the rows of its own devices, and the
    per-device states are gathered to every process and merged there.
    """
    chunk_size = check_positive_int(chunk_size, "chunk_size", allow_none=False)
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every", allow_none=False)
    check_choice(mode, "mode", MODES)
    check_choice(nan_policy, "nan_policy", ("raise", "omit"))
    if not isinstance(interactions, bool):
        raise TypeError(f"`interactions` must be a bool, got {interactions!r}.")
    mesh = _resolve_mesh(devices)
    n_dev = 1 if mesh is None else int(mesh.shape["batch"])
    chunk_size = -(-chunk_size // n_dev) * n_dev

    source = _make_source(data)
    probe = jnp.zeros((1, *source.in_shape), source.dtype)
    in_shape, out_shape, chain = sample_shapes(model, probe, "data")
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    feature_names = _names(feature_names, n_in, "feature_names", "x")
    if output_names is None and not out_shape:
        output_names = ("y",)
    output_names = _names(output_names, n_out, "output_names", "y")
    used_mode = _resolve_mode(
        model, mode, chain, in_shape, out_shape, chunk_size, jnp.dtype(source.dtype).itemsize
    )

    jac = stats_init((n_out, n_in))
    hess = stats_init((n_out, n_in, n_in)) if interactions else None
    chunks_done, rows_done, n_omitted = 0, 0, 0
    identity: dict[str, Any] = {}
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        # hashed only when checkpointing: the model's parameters and a sample of the rows
        identity = {
            "version": _CHECKPOINT_VERSION,
            "chunk_size": chunk_size,
            "in_shape": list(in_shape),
            "out_shape": list(out_shape),
            "n_total": source.n,
            "interactions": interactions,
            "mode": used_mode,
            # rows omitted under "omit" must not reappear in a result asked for with "raise"
            "nan_policy": nan_policy,
            "model": _model_fingerprint(model),
            "data": _fingerprint(source),
        }
        if os.path.exists(checkpoint):
            meta, jac, hess = _load_checkpoint(checkpoint, identity)
            chunks_done, rows_done = int(meta["chunks_done"]), int(meta["rows_done"])
            n_omitted = int(meta["n_omitted"])

    sharding = None if mesh is None else NamedSharding(mesh, P("batch"))
    bar = progress_bar(
        progress,
        total=source.n,
        initial=rows_done,
        unit="samples",
        unit_scale=True,
        desc="sensitivity",
    )

    def save():
        meta = dict(identity, chunks_done=chunks_done, rows_done=rows_done, n_omitted=n_omitted)
        _save_checkpoint(checkpoint, meta, jac, hess)

    def finish(index, out, n_valid):
        nonlocal jac, hess, chunks_done, rows_done, n_omitted
        bad = _to_host(out["bad"])
        bad_rows = np.flatnonzero(bad)
        if bad_rows.size and nan_policy == "raise":
            r = int(bad_rows[0])
            what = "input values" if bad[r] == 1 else "derivatives (Jacobian/Hessian) at the input"
            raise ValueError(
                f"Non-finite {what} in `data`: chunk {index}, row {r} of the chunk "
                f"(sample {index * chunk_size + r}). Pass nan_policy='omit' to skip such rows."
            )
        if mesh is None:
            merge = stats_to_host
        else:
            merge = lambda s: stats_stack_merge(jax.tree.map(_to_host, s))  # noqa: E731
        new_jac = stats_merge(jac, merge(out["jac"]))
        new_hess = stats_merge(hess, merge(out["hess"])) if interactions else None
        # one assignment, so an interrupt never leaves a half-updated state to be saved
        jac, hess, chunks_done, rows_done, n_omitted = (
            new_jac,
            new_hess,
            index + 1,
            rows_done + n_valid,
            n_omitted + int(bad_rows.size),
        )
        if bar is not None:
            bar.update(n_valid)
        if checkpoint is not None and chunks_done % checkpoint_every == 0:
            save()

    try:
        pending = None
        mask_cache: dict[int, Any] = {}
        for index, X, n_valid in source.chunks(chunk_size, chunks_done):
            if n_valid not in mask_cache:
                m = np.arange(chunk_size) < n_valid
                mask_cache[n_valid] = m if sharding is None else _put_sharded(m, sharding)
            mask = mask_cache[n_valid]
            if sharding is not None:
                X = _put_sharded(X, sharding)
            # dispatch this chunk before waiting on the previous one: host merging overlaps
            out = _chunk_stats(model, X, mask, used_mode, interactions, n_out, n_in, mesh)
            if pending is not None:
                finish(*pending)
            pending = (index, out, n_valid)
        if pending is not None:
            finish(*pending)
    except BaseException as e:
        if checkpoint is not None and not isinstance(e, ValueError):
            save()
        raise
    finally:
        if bar is not None:
            bar.close()
    if checkpoint is not None:
        save()
    if jac.n == 0:
        raise ValueError(
            f"No usable samples in `data`: all {n_omitted} rows had non-finite values."
        )
    return _result(jac, hess, n_omitted, feature_names, output_names, used_mode)


def _put_sharded(X, sharding: NamedSharding):
    if not sharding.is_fully_addressable:  # multi-host: each process fills its own shards
        host = np.asarray(X)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.device_put(X, sharding)


def _result(jac, hess, n_omitted, feature_names, output_names, mode) -> SensitivityResult:
    with np.errstate(invalid="ignore", divide="ignore"):
        return SensitivityResult(
            mean=jac.mean,
            mean_se=jac.mean_se,
            mean_abs=jac.abs_mean,
            mean_abs_se=jac.abs_mean_se,
            dgsm=jac.sq_mean,
            dgsm_se=jac.sq_mean_se,
            std=jac.std,
            std_se=jac.std_se,
            max_abs=jac.max_abs,
            n=jac.n,
            n_omitted=n_omitted,
            feature_names=feature_names,
            output_names=output_names,
            interactions=None if hess is None else hess.abs_mean,
            interactions_se=None if hess is None else hess.abs_mean_se,
            mode=mode,
        )
