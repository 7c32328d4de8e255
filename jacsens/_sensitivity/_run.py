"""`sensitivity()`: plan once, stream chunks through one jitted kernel, accumulate.

Data are processed in chunks of one size: the last, partial chunk is padded and masked,
so one shape is compiled and memory does not depend on the number of samples. Each chunk
is reduced to a `StreamingStats` on the device(s), in the dtype of the Jacobian (at least
float32; float64 when `jax_enable_x64` is on), with per-element power-of-two scales so no
square or fourth power can overflow or underflow; chunk states are merged on the host in
float64, in row order. So how the work is split (chunk size, number of devices) changes
the result only by the round-off of the per-chunk reductions: about 1e-7 relative for a
float32 model with x64 off, float64 round-off for a float64 model. An interrupted and
resumed run repeats the same chunks and gives the same result as an uninterrupted one.

The chunk loop is shared with `active_subspace` (`_active.py`): what a chunk is reduced to
on the device and how those reductions accumulate on the host is a `Reduction`
(`SensitivityReduction` here); planning, chunk sizing, sharding, the out-of-memory
back-off, non-finite rows and the progress bar are common (`prepare`, `Run`, `execute`).
Every kernel is also given the global index of each row, so a reduction may draw
per-row random numbers (bootstrap weights) that do not depend on the chunking.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array

from .._ensemble import Ensemble
from .._memory import auto_chunk_size, memory_budget, run_with_backoff
from .._modes import AbstractJacobianMode, get_mode
from .._names import index_names, names_from_pandas
from .._plan import Plan, make_plan
from .._progress import Progress as ProgressChoice, progress_bar
from .._stats import (
    StreamingStats,
    stats_from_batch,
    stats_init,
    stats_merge,
    stats_stack_merge,
    stats_to_host,
)
from .._validate import check_choice, check_positive_int, promote_float
from ._checkpoint import Checkpoint, check_destination, load_checkpoint, run_identity
from ._ensemble import EnsembleSensitivity, Stacked, split_members
from ._result import SensitivityResult
from ._sources import AbstractSource, IterableSource, make_source, to_host

_NOMINAL_ROWS = 1024  # the batch size the first plan is made for, before the chunk is known


# --------------------------------------------------------------------------- reductions


class Reduction(eqx.Module):
    """What each chunk of Jacobians is reduced to, and how reductions accumulate.

    `device` runs inside the jitted kernel on each device's rows; `host` brings one
    chunk's reduction to the host (merging the per-device parts, stacked along a leading
    axis, when `stacked`); `fold` adds it to the run's state. Array fields are traced
    (replicated to every device); the rest is static.
    """

    @property
    def hessian(self) -> bool:
        """Whether `device` needs input Hessians."""
        return False

    @abc.abstractmethod
    def device(self, J, H, ok, rows_hi, rows_lo) -> Any:
        """Reduce the rows where `ok` of `J` `(B, n_out, n_in)` (and `H`); `rows_hi`,
        `rows_lo` are the rows' global indices, two uint32 words each."""

    @abc.abstractmethod
    def host(self, out: Any, stacked: bool) -> Any:
        """One chunk's reduction on the host, in float64."""

    @abc.abstractmethod
    def fold(self, state: Any, start: int, part: Any) -> Any:
        """The state after adding `part`, the chunk starting at row `start`."""

    def bytes_per_row(self, plan: Plan) -> float:
        """Device bytes per row for the reduction's working arrays, beyond the plan's."""
        return 0.0

    def for_chunk(self, chunk: int, start: int) -> Reduction:
        """The reduction for a run in chunks of at most `chunk` rows from row `start`."""
        return self


def _stat_bytes() -> int:
    return max(jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64)).itemsize, 4)


def reduction_dtype(dtype: Any) -> Any:
    """The dtype chunk reductions run in: at least float32, float64 when x64 is on."""
    return promote_float(dtype, jnp.float32, jax.dtypes.canonicalize_dtype(jnp.float64))


class SensitivityReduction(Reduction):
    """`StreamingStats` of the Jacobian (and Hessian) entries; with `replicate_rows`, one
    more state per randomised-QMC replicate (rows `k·replicate_rows` on), so that the
    replicates give the standard errors. State: `(jac, hess or None, replicates or None)`.

    A chunk may hold rows of several replicates: the kernel then reduces them per
    replicate too, into `slots` states (a row of replicate `r` into slot `r mod slots`;
    `slots` is at least the number of replicates one chunk can touch, see `for_chunk`),
    so one compiled call covers several scrambles.
    """

    interactions: bool = eqx.field(static=True)
    replicate_rows: int | None = eqx.field(static=True)
    replicates: int = eqx.field(static=True, default=1)
    slots: int = eqx.field(static=True, default=1)

    @property
    def hessian(self) -> bool:
        return self.interactions

    def for_chunk(self, chunk, start):
        m, R = self.replicate_rows, self.replicates
        if m is None or R == 1:
            return self
        if start % chunk == 0 and (m % chunk == 0 or chunk % m == 0):
            # aligned chunks (and the halves an out-of-memory back-off makes of them):
            # within one replicate, or whole replicates
            touched = max(1, chunk // m)
        else:
            touched = (chunk - 2) // m + 2 if chunk > 1 else 1
        return SensitivityReduction(self.interactions, m, R, min(R, touched))

    def device(self, J, H, ok, rows_hi, rows_lo):
        out = {"jac": stats_from_batch(J, ok)}
        if H is not None:
            out["hess"] = stats_from_batch(H, ok)
        if self.slots > 1:
            # quasi-random samplers hold fewer than 2^32 rows: `rows_lo` is the row index
            rep = rows_lo // jnp.uint32(self.replicate_rows)
            slot = rep % jnp.uint32(self.slots)
            which = slot[None, :] == jnp.arange(self.slots, dtype=jnp.uint32)[:, None]
            out["reps"] = jax.vmap(lambda sel: stats_from_batch(J, sel))(ok[None, :] & which)
        return out

    def host(self, out, stacked):
        merge = _merge_devices if stacked else stats_to_host
        part = {k: merge(v) for k, v in out.items() if k != "reps"}
        if "reps" in out:
            reps = jax.tree.map(to_host, out["reps"])
            if stacked:  # (devices, slots, ...): merge each slot over the devices
                part["reps"] = tuple(
                    stats_stack_merge(jax.tree.map(lambda x, s=s: x[:, s], reps))
                    for s in range(self.slots)
                )
            else:
                part["reps"] = tuple(
                    jax.tree.map(lambda x, s=s: x[s], reps) for s in range(self.slots)
                )
        return part

    def fold(self, state, start, part):
        jac, hess, reps = state
        jac = _merge_into(jac, part["jac"])
        if hess is not None:
            hess = _merge_into(hess, part["hess"])
        if reps is not None:
            reps = list(reps)
            first = start // self.replicate_rows
            if "reps" not in part:  # the chunk lies within one replicate
                reps[first] = _merge_into(reps[first], part["jac"])
            else:
                for s, st in enumerate(part["reps"]):
                    k = first + (s - first) % self.slots
                    if st.count > 0:
                        reps[k] = _merge_into(reps[k], st)
            reps = tuple(reps)
        return jac, hess, reps

    def bytes_per_row(self, plan):
        # the statistics' working copies (the scaled values, their absolute values,
        # squares and deviations), and the same for Hessians
        per_row = 6 * _stat_bytes() * plan.n_out * plan.n_in
        if self.interactions:
            item = jnp.dtype(plan.dtype).itemsize
            per_row += (2 * item + 6 * _stat_bytes()) * plan.n_out * plan.n_in * plan.n_in
        return per_row


def _merge_into(state: StreamingStats, part: StreamingStats) -> StreamingStats:
    """`stats_merge(state, part)`; an empty `state` gives `part` itself (what the merge
    returns then, without its cost)."""
    return part if state.count == 0 else stats_merge(state, part)


# --------------------------------------------------------------------------- the kernel


def _local(plan: Plan, model, reduce: Reduction, X, mask, rows_hi, rows_lo):
    B = X.shape[0]
    J = plan.jacobian(model, X).reshape(B, plan.n_out, plan.n_in)
    x_ok = jnp.all(jnp.isfinite(X.reshape(B, -1)), axis=1)
    d_ok = jnp.all(jnp.isfinite(J.reshape(B, -1)), axis=1)
    H = None
    if reduce.hessian:
        H = plan.hessian(model, X).reshape(B, plan.n_out, plan.n_in, plan.n_in)
        d_ok = d_ok & jnp.all(jnp.isfinite(H.reshape(B, -1)), axis=1)
    ok = mask & x_ok & d_ok
    # 0 = used or padding, 1 = non-finite input, 2 = non-finite derivative
    bad = jnp.where(mask & ~x_ok, 1, jnp.where(mask & ~d_ok, 2, 0)).astype(jnp.int8)
    return reduce.device(J, H, ok, rows_hi, rows_lo), bad


@eqx.filter_jit
def _chunk_kernel(plan: Plan, model, X, mask, rows, reduce: Reduction, mesh: Mesh | None):
    if mesh is None:
        return _local(plan, model, reduce, X, mask, *rows)
    params, static = eqx.partition((model, reduce), eqx.is_array)

    def body(params, X, mask, rows_hi, rows_lo):
        model, reduce = eqx.combine(params, static)
        out, bad = _local(plan, model, reduce, X, mask, rows_hi, rows_lo)
        # one reduction per device, stacked along the mesh axis; merged on the host
        return jax.tree.map(lambda x: x[None], out), bad

    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P(), P("batch"), P("batch"), P("batch"), P("batch")),
        out_specs=P("batch"),
        check_vma=False,
    )(params, X, mask, *rows)


def _row_words(start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.uint64(start) + np.arange(size, dtype=np.uint64)
    return (r >> np.uint64(32)).astype(np.uint32), (r & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _put_sharded(X, sharding: NamedSharding):
    if not sharding.is_fully_addressable:  # multi-host: each process fills its own shards
        host = np.asarray(X)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.device_put(X, sharding)


# --------------------------------------------------------------------------- one run


class Progress(NamedTuple):
    """Everything a run has accumulated; replaced whole after each chunk, so an
    interruption never leaves a half-updated state to be saved."""

    state: Any  # the reduction's
    rows_done: int
    n_omitted: int


@dataclasses.dataclass
class Run:
    model: Any
    source: AbstractSource
    mode: AbstractJacobianMode
    reduce: Reduction
    nan_policy: str
    mesh: Mesh | None
    make_result: Callable[[Progress], Any]
    progress: Progress
    checkpoint: str | None = None
    checkpoint_every: int = 16
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)
    bar: Any = None
    chunk_size: int = 0
    _plans: dict[int, Plan] = dataclasses.field(default_factory=dict)

    def plan(self, chunk: int) -> Plan:
        if chunk not in self._plans:
            struct = jax.ShapeDtypeStruct((chunk, *self.source.in_shape), self.source.dtype)
            self._plans[chunk] = make_plan(self.model, struct, self.mode, argname="data")
        return self._plans[chunk]

    def result(self) -> Any:
        return self.make_result(self.progress)

    def save(self) -> None:
        if self.checkpoint is not None:
            ck = Checkpoint(self.result(), self.progress.rows_done, self.chunk_size, self.identity)
            ck.save(self.checkpoint)

    def stream(self, chunk: int) -> None:
        """Process every row from `progress.rows_done` on in chunks of `chunk` rows.

        Restartable: after an error, calling it again (with any chunk size) goes on from
        the last finished chunk; chunks dispatched but not finished are recomputed."""
        self.chunk_size = chunk
        plan = self.plan(chunk)
        sharding = None if self.mesh is None else NamedSharding(self.mesh, P("batch"))
        masks: dict[int, Any] = {}
        row, pending, since_save = self.progress.rows_done, None, 0
        while True:
            X, n_valid = self.source.read(row, chunk)
            if n_valid == 0:
                break
            if n_valid not in masks:
                m = np.arange(chunk) < n_valid
                masks[n_valid] = m if sharding is None else _put_sharded(m, sharding)
            rows = _row_words(row, chunk)
            if sharding is not None:
                X = _put_sharded(X, sharding)
                rows = tuple(_put_sharded(r, sharding) for r in rows)
            # dispatch this chunk before waiting on the previous one: host merging overlaps
            out = _chunk_kernel(plan, self.model, X, masks[n_valid], rows, self.reduce, self.mesh)
            if pending is not None:
                since_save = self._finish(*pending, since_save)
            pending = (row, n_valid, out)
            row += n_valid
        if pending is not None:
            self._finish(*pending, since_save)

    def _finish(self, start: int, n_valid: int, out: tuple, since_save: int) -> int:
        out, bad = out
        bad = to_host(bad)
        bad_rows = np.flatnonzero(bad)
        if bad_rows.size and self.nan_policy == "raise":
            r = int(bad_rows[0])
            what = "input values" if bad[r] == 1 else "derivatives (Jacobian/Hessian) at the input"
            raise ValueError(
                f"Non-finite {what} in `data`: sample {start + r} (row {r} of the chunk "
                f"starting at sample {start}). Pass nan_policy='omit' to skip such rows."
            )
        p = self.progress
        part = self.reduce.host(out, self.mesh is not None)
        self.progress = Progress(
            self.reduce.fold(p.state, start, part),
            start + n_valid,
            p.n_omitted + int(bad_rows.size),
        )
        self.source.release(start + n_valid)
        if self.bar is not None:
            self.bar.update(n_valid)
        since_save += 1
        if self.checkpoint is not None and since_save >= self.checkpoint_every:
            self.save()
            since_save = 0
        return since_save


def _merge_devices(stacked: StreamingStats) -> StreamingStats:
    return stats_stack_merge(jax.tree.map(to_host, stacked))


# --------------------------------------------------------------------------- set-up


def resolve_mesh(devices) -> Mesh | None:
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


def names_of(names, shape: tuple[int, ...], argname: str, prefix: str) -> tuple[str, ...]:
    """`names` checked against an array of `shape`, or by default `x0, x1, ...` for vectors
    and `x[r,c]`-style names saying where each element sits for higher ranks."""
    count = math.prod(shape)
    if names is None:
        return index_names(shape, prefix)
    if isinstance(names, str):
        raise TypeError(f"`{argname}` must be a sequence of names, got a string {names!r}.")
    names = tuple(str(n) for n in names)
    if len(names) != count:
        raise ValueError(
            f"`{argname}` must have {count} names (one per element), got {len(names)}."
        )
    return names


def base_plan(model, source: AbstractSource, mode) -> Plan:
    rows = _NOMINAL_ROWS if source.n is None else min(source.n, _NOMINAL_ROWS)
    struct = jax.ShapeDtypeStruct((rows, *source.in_shape), source.dtype)
    try:
        return make_plan(model, struct, mode, argname="data")
    except ValueError as e:
        hint = getattr(source, "hint", None)
        if hint and "`data`" in str(e):
            raise ValueError(f"{e} {hint}") from e
        raise


def _bytes_per_row(plan: Plan, reduce: Reduction) -> float:
    """Estimated peak bytes per row of one chunk: the Jacobian's own peak (from the plan)
    plus the reduction's working arrays."""
    probe = 1024
    return plan.peak_bytes(probe) / probe + reduce.bytes_per_row(plan)


def chunk_rows(
    chunk_size: int | Literal["auto"],
    plan: Plan,
    source: AbstractSource,
    mesh: Mesh | None,
    reduce: Reduction,
) -> int:
    """The chunk size a run starts with (see `sensitivity`'s `chunk_size`); for
    randomised-QMC data never more rows than 8 replicates hold."""
    n_dev = 1 if mesh is None else int(mesh.shape["batch"])
    n_rows = source.n
    m = getattr(source, "replicate_rows", None)
    if m is not None:  # a chunk touches at most 9 replicates (see SensitivityReduction)
        n_rows = min(n_rows, 8 * m)
    if chunk_size == "auto":
        device = None if mesh is None else mesh.devices.flat[0]
        if isinstance(source, IterableSource):
            source.prefetch(_NOMINAL_ROWS)  # short streams: their length becomes known
            n_rows = source.n
        per_dev = None if n_rows is None else -(-n_rows // n_dev)
        rows = auto_chunk_size(_bytes_per_row(plan, reduce), per_dev, memory_budget(device))
        return rows * n_dev
    if isinstance(source, IterableSource):
        source.prefetch(chunk_size)  # a stream shorter than one chunk: no padding beyond it
        n_rows = source.n
    if n_rows is not None:
        chunk_size = min(chunk_size, n_rows)
    return -(-chunk_size // n_dev) * n_dev


def check_chunk_size(chunk_size: Any) -> int | Literal["auto"]:
    if chunk_size == "auto" and isinstance(chunk_size, str):
        return "auto"
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"`chunk_size` must be a positive int or 'auto', got {chunk_size!r}.")
    return check_positive_int(chunk_size, "chunk_size", allow_none=False)


def _resume(
    checkpoint: str, identity: dict[str, Any], mode: Any, chunk_size: Any
) -> tuple[Checkpoint, Any, Any]:
    """Load a checkpoint; return it with the mode and chunk size the run goes on with
    (the saved ones where the call says `"auto"`)."""
    ck = load_checkpoint(checkpoint, identity)
    saved_mode, requested = ck.result.mode, get_mode(mode).name
    if requested == "auto":
        mode = saved_mode
    elif requested != saved_mode:
        raise ValueError(
            f"`checkpoint` {checkpoint!r} belongs to a different run: its mode is "
            f"{saved_mode!r}, this run has {requested!r}. Use another path or delete the file."
        )
    if chunk_size == "auto":
        chunk_size = ck.chunk_size
    return ck, mode, chunk_size


# --------------------------------------------------------------------------- entry point


def sensitivity(
    model: Callable[[Array], Array],
    data: Any,
    *,
    chunk_size: int | Literal["auto"] = "auto",
    mode: str | AbstractJacobianMode = "auto",
    feature_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    interactions: bool = False,
    devices: Sequence[jax.Device] | Mesh | None = None,
    progress: ProgressChoice = "auto",
    nan_policy: Literal["raise", "omit"] = "raise",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 16,
) -> SensitivityResult | EnsembleSensitivity:
    """Derivative-based global sensitivity of a model over an input distribution.

    Streams `data` through the Jacobian engine chunk by chunk and accumulates, for every
    output `y_o` and input `x_i`, the mean of `∂y_o/∂x_i`, of `|∂y_o/∂x_i|` and of
    `(∂y_o/∂x_i)²` (the DGSM `ν`), the standard deviation and the max `|∂y_o/∂x_i|`, with
    Monte Carlo standard errors. Memory is independent of the number of samples: one chunk
    shape is compiled (the last chunk is padded and its padding masked out) and the
    accumulator is `O(n_out · n_in)`. Derivatives are computed in the model's output dtype
    (inputs promoted to the model's precision; float16/bfloat16 inputs are accepted), the
    statistics in float64 on the host, scaled so that any finite derivative gives finite
    statistics.

    **Arguments:**

    - `model`: callable on one sample `(*in_shape,) -> (*out_shape)`; or a
        `jacsens.Ensemble`: every member is analysed in the same pass over `data` (their
        outputs stacked into one model, so one compile and one read of the data) and the
        result is a `jacsens.EnsembleSensitivity` (member means, the spread between
        members, within-data standard errors, rank stability).
    - `data`: the inputs, one of (`in_shape` may be `()`: an array `(N,)` for a model
        with scalar input)
        - an array `(N, *in_shape)`: numpy (including `np.memmap`, read chunk by chunk)
            or jax;
        - an array-like read as one array of rows: a list or tuple of rows, a pandas
            `DataFrame` (its column labels become the feature names unless
            `feature_names` is given) or `Series` (one column);
        - an iterator of batches `(B_k, *in_shape)` of any sizes (a generator,
            `iter(list_of_batches)`, a data loader; any iterable that is not a list,
            tuple or dict), re-chunked;
        - a sampler, `jacsens.uniform(bounds, n, key)` or `jacsens.normal(mean, std, n,
            key)`, which draws each chunk on the device.
        A `dict` is refused (`TypeError`).
    - `chunk_size`: rows per compiled step, or `"auto"` (default): the largest power of
        two whose estimated peak memory fits half the free device memory (on CPU, half
        the available RAM, at most 2 GiB; see `jacsens._memory`), at most the number of
        rows. Rounded up to a multiple of the number of devices and capped at the data
        size. If the device runs out of memory anyway, the chunk is halved and the work
        redone from the last finished chunk (a warning says so). The samples do not
        depend on it (sampler rows are drawn from per-row keys), and the statistics only
        through the round-off of the per-chunk reductions (see `devices`).
    - `mode`: Jacobian mode (`"auto"`, `"rev"`, `"fwd"`, `"chain"`, `"backprop"`, or a
        mode object), resolved once for the chunk size.
    - `feature_names`, `output_names`: names of the `n_in` inputs and `n_out` outputs, or
        the pandas objects they come from: the targets' `Series` (its `.name` names the
        one output) or `DataFrame` (its columns name the outputs). By default the
        columns of a `DataFrame` `data`, else `x0, x1, ...`; for outputs `y` (a scalar
        output), else `y0, y1, ...`.
    - `interactions`: also accumulate `E|∂²y_o/∂x_i∂x_j|` from input Hessians (forward
        over reverse; costs `n_in` times more).
    - `devices`: a list of devices or a `jax.sharding.Mesh` with an axis `"batch"`. Each
        chunk is sharded over the batch axis (`NamedSharding`); every device reduces its
        own rows in the Jacobian's dtype (float32 for a float32 model unless
        `jax_enable_x64` is on, which promotes the reduction to float64); the per-device
        states are merged on the host in float64. So one and several devices give the
        same numbers up to the round-off of the per-device reductions: about 1e-7
        relative for float32, float64 round-off for a float64 model.
    - `progress`: `"auto"` (default): a progress bar in a terminal or notebook (`tqdm.auto`)
        once the job has run for 2 s, and in logs (stderr not a terminal) a line every 30 s
        (`JACSENS_PROGRESS_INTERVAL`); `True`: always; `False`: never.
    - `nan_policy`: `"raise"` (default) raises on the first row whose input or derivative
        is not finite, naming the sample; `"omit"` leaves such rows out and counts them
        in `n_omitted`.
    - `checkpoint`: a `.npz` file path (its folder is checked before any work). If it
        exists, the run resumes from the state saved there (the same `model` and `data`
        must be passed again); the state is saved every `checkpoint_every` chunks, on
        interruption and at the end (atomically, checksummed, no pickle; the format of
        `SensitivityResult.save`, so `SensitivityResult.load` reads the partial result).
        A resumed run with the same chunk size (`"auto"` adopts the saved one, and the
        saved mode) gives the same result as an uninterrupted one; another chunk size
        changes it by round-off only. The file records the run's identity and a run that
        does not match raises `ValueError`: shapes, `mode` (if given), `interactions`,
        `nan_policy`; the model (a SHA-256 of its array leaves with their shapes and
        dtypes, its pytree structure and static fields, and for plain functions their
        name and bytecode — not globals they read); the data: a sampler exactly
        (distribution, `n`, key, parameters), an array, memmap or array-like by a hash
        of its contents (whole up to 256 MiB; beyond that its first and last rows and a
        strided sample of rows, so an edit confined to unsampled rows is not detected),
        an iterator only by its dtype (its batches cannot be fingerprinted without
        consuming them: passing other batches is not detected). A corrupted or edited
        file raises `ValueError` naming it.
    - `checkpoint_every`: chunks between saves.

    **Returns:**

    A `SensitivityResult` with `(n_out, n_in)` statistics (for an ensemble, an
    `EnsembleSensitivity` holding one per member).

    **Raises:**

    `ValueError` naming the argument for: wrong `feature_names`/`output_names` lengths,
    empty `data`, a list of rows of different shapes, batches of different feature
    shapes, non-finite values under `nan_policy="raise"`, a bad `chunk_size`, `mode`,
    `nan_policy` or `devices`, a checkpoint folder that does not exist, or a checkpoint
    from a different run or damaged. `TypeError` for non-floating data or a dict.

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
    chunk_size = check_chunk_size(chunk_size)
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every", allow_none=False)
    get_mode(mode)  # an unknown mode is an error before any data are read
    check_choice(nan_policy, "nan_policy", ("raise", "omit"))
    if not isinstance(interactions, bool):
        raise TypeError(f"`interactions` must be a bool, got {interactions!r}.")
    mesh = resolve_mesh(devices)
    if checkpoint is not None:
        checkpoint = check_destination(checkpoint, "checkpoint")

    ensemble = model if isinstance(model, Ensemble) else None
    if ensemble is not None:  # every member in one pass: their outputs stacked
        member_names, output_names, model = output_names, None, Stacked(ensemble)
    source, plan, feature_names, output_names = open_data(
        model, data, mode, feature_names, output_names
    )
    if ensemble is not None:
        member_names = stacked_names(names_from_pandas(member_names), plan.out_shape)

    shape = (plan.n_out, plan.n_in)
    replicate_rows = getattr(source, "replicate_rows", None)
    reps = None
    if replicate_rows is not None:
        reps = tuple(stats_init(shape) for _ in range(-(-source.n // replicate_rows)))
    hess = stats_init((*shape, plan.n_in)) if interactions else None
    state = Progress((stats_init(shape), hess, reps), 0, 0)
    identity: dict[str, Any] = {}
    if checkpoint is not None:
        # hashed only when checkpointing: the model's parameters and the data's contents
        identity = run_identity(
            model, source, plan.in_shape, plan.out_shape, interactions, nan_policy
        )
        if os.path.exists(checkpoint):
            ck, mode, chunk_size = _resume(checkpoint, identity, mode, chunk_size)
            r = ck.result
            state = Progress((r.jac, r.hess, r.replicates), ck.rows_done, r.n_omitted)
    reduce = SensitivityReduction(interactions, replicate_rows, len(reps or (None,)))

    def make_result(p: Progress) -> SensitivityResult:
        jac, hess, reps = p.state
        return SensitivityResult(
            jac, hess, p.n_omitted, feature_names, output_names, run.mode.name, reps
        )

    run = Run(
        model=model,
        source=source,
        mode=get_mode(mode),  # resolved for the chunk size in `execute`
        reduce=reduce,
        nan_policy=nan_policy,
        mesh=mesh,
        make_result=make_result,
        progress=state,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        identity=identity,
    )
    execute(run, plan, chunk_size, progress, "sensitivity")
    if run.progress.state[0].n == 0:
        raise ValueError(
            f"No usable samples in `data`: all {run.progress.n_omitted} rows had non-finite values."
        )
    if ensemble is not None:
        return split_members(run.result(), ensemble.size, member_names)
    return run.result()


def stacked_names(output_names: Any, stacked_out_shape: tuple[int, ...]) -> tuple[str, ...]:
    """The checked names of one ensemble member's outputs (`stacked_out_shape` without its
    leading member axis), as `sensitivity` names a single model's outputs."""
    out_shape = tuple(stacked_out_shape[1:])
    if output_names is None and not out_shape:
        return ("y",)
    return names_of(output_names, out_shape, "output_names", "y")


def open_data(model, data, mode, feature_names, output_names):
    """The source of `data`, the model's plan on it and the checked names of its features and
    outputs: `(source, plan, feature_names, output_names)` (what every streamed analysis
    starts with)."""
    source = make_source(data)
    plan = base_plan(model, source, mode)
    feature_names = feature_names_of(names_from_pandas(feature_names), source, plan)
    output_names = names_from_pandas(output_names)  # a target Series names the output
    if output_names is None and not plan.out_shape:
        output_names = ("y",)
    output_names = names_of(output_names, plan.out_shape, "output_names", "y")
    return source, plan, feature_names, output_names


def feature_names_of(names: Any, source: AbstractSource, plan: Plan) -> tuple[str, ...]:
    """`feature_names` as given, else the data's own (a DataFrame's columns, a problem's
    `names`) when their count fits, else `x0, x1, ...`."""
    if names is None and source.feature_names is not None:
        if len(source.feature_names) == plan.n_in:
            names = source.feature_names
    return names_of(names, plan.in_shape, "feature_names", "x")


def execute(
    run: Run,
    plan: Plan,
    chunk_size: int | Literal["auto"],
    progress: bool,
    desc: str,
) -> None:
    """Size the chunk, fix the mode for it, and stream every remaining row through
    `run`, halving the chunk on out-of-memory errors; saves the checkpoint (if any) on
    interruption and at the end."""
    source, mesh = run.source, run.mesh
    source.release(run.progress.rows_done)
    chunk = chunk_rows(chunk_size, plan, source, mesh, run.reduce)
    run.reduce = run.reduce.for_chunk(chunk, run.progress.rows_done)
    # the mode is fixed for the whole run (a back-off to smaller chunks keeps it)
    run.mode = make_plan(
        run.model,
        jax.ShapeDtypeStruct((chunk, *source.in_shape), source.dtype),
        run.mode,
        argname="data",
    ).mode
    run.chunk_size = chunk
    n_dev = 1 if mesh is None else int(mesh.shape["batch"])
    run.bar = progress_bar(
        progress,
        total=source.n,
        initial=run.progress.rows_done,
        unit="samples",
        unit_scale=True,
        desc=desc,
    )
    try:
        run_with_backoff(run.stream, chunk, minimum=n_dev, what="chunk_size")
    except BaseException as e:
        if not isinstance(e, ValueError):
            run.save()
        raise
    finally:
        if run.bar is not None:
            run.bar.close()
    run.save()
    if run.progress.rows_done == 0:
        raise ValueError("`data` is empty: its batches hold 0 samples.")
