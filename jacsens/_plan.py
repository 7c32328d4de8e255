"""The plan: the one analysis of a model for a batch of inputs.

`make_plan(model, X, mode)` checks `X` against the model, fixes the per-sample shapes and
the dtype rule, reads the model's program view (a layer chain where there is one) and
resolves the Jacobian mode. Public functions validate, make a plan and run it; private
kernels (sensitivity, attribution) run plans directly and never call back into the
validating public functions.

Plans are cached by everything they depend on except the values of the model's arrays
(the model's pytree structure, its arrays' shapes and dtypes, `X`'s shape and dtype, the
mode, the backend and the relevant JAX flags), so a repeated call costs one look-up and
never re-traces the model in Python.

The dtype rule: the model is applied to `X` promoted to at least the precision of the
model's floating parameters, and every derivative is returned in the dtype of the model's
output (a float64 model given float32 inputs returns float64 derivatives).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import weakref
from collections.abc import Hashable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._batching import map_chunks
from ._cost import DeviceModel, JacobianCost, device_model
from ._modes import MODES, AbstractJacobianMode, Auto, Segments, get_mode
from ._order import optimal_order
from ._program._bracket import plan_bracketing
from ._program._chain import ChainError, ChainSpec, read_chain, structure_key
from ._program._trace import Program, trace_program
from ._validate import promote_float

_CACHE_SIZE = 256


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything known about a model and a batch before any number is computed.

    **Fields:**

    - `in_shape`, `out_shape`: per-sample input and output shapes.
    - `in_dtype`: the dtype of the `X` the plan was made for.
    - `dtype`: the compute dtype the model is applied in.
    - `out_dtype`: the model's output dtype, in which every derivative is returned.
    - `batch_size`: the batch (or chunk) size the mode was chosen for.
    - `chain`: the layer-chain structure, or `None` (then `chain_error` says why).
    - `mode`: the concrete Jacobian mode (never `Auto`).
    - `program`: the traced program cut into segments (`jacsens._program._trace`), made
        for `auto` (which weighs the segment plan for every model, layer chains included)
        and `mode="segments"`; or `None` (then `program_error` says why, if tracing was
        tried; explicit plain modes do not trace it).
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_dtype: Any
    dtype: Any
    out_dtype: Any
    batch_size: int
    chain: ChainSpec | None
    chain_error: str | None
    mode: AbstractJacobianMode
    program: Program | None = None
    program_error: str | None = None

    def __post_init__(self):
        # Plans are static arguments of compiled functions, hashed on every call.
        fields = (self.in_shape, self.out_shape, self.in_dtype, self.dtype, self.out_dtype)
        key = (*fields, self.batch_size, self.chain, self.mode, id(self.program))
        object.__setattr__(self, "_hash", hash(key))

    def __hash__(self) -> int:
        return self._hash

    @property
    def device(self) -> DeviceModel:
        return device_model()

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    def jacobian(self, model: Any, X: Array, chunk_size: int | None = None) -> Array:
        """Per-sample Jacobians `(B, *out_shape, *in_shape)` in `out_dtype`; traceable."""
        X = X.astype(self.dtype)
        J = map_chunks(lambda Xc: self.mode.jacobian(self, model, Xc), X, chunk_size=chunk_size)
        return J.astype(self.out_dtype)

    def hessian(self, model: Any, X: Array, chunk_size: int | None = None) -> Array:
        """Per-sample Hessians `(B, *out_shape, *in_shape, *in_shape)`, forward over
        reverse, in `out_dtype`; traceable."""
        X = X.astype(self.dtype)
        H = map_chunks(jax.vmap(jax.jacfwd(jax.jacrev(model))), X, chunk_size=chunk_size)
        return H.astype(self.out_dtype)

    def peak_bytes(self, batch_size: int) -> int:
        """Estimated peak memory of `jacobian` on `batch_size` rows: the result, its copy
        and the widest block of seeds a sweep carries through the layers."""
        itemsize = jnp.dtype(self.dtype).itemsize
        widest = max(self.chain.dims) if self.chain is not None else 4 * max(self.n_in, self.n_out)
        seeds = self.n_in if self.mode.name == "fwd" else self.n_out
        per_row = 2 * self.n_out * self.n_in + seeds * widest + self.n_in + self.n_out
        return int(itemsize * per_row * batch_size)

    def cost(self, batch_size: int | None = None, platform: str | None = None) -> JacobianCost:
        """The cost model's estimate of every mode with one, and `auto`'s choice."""
        batch = self.batch_size if batch_size is None else batch_size
        device = device_model(platform)
        return _cost(self, batch, device)


def _cost(plan: Plan, batch: int, device: DeviceModel) -> JacobianCost:
    itemsize = jnp.dtype(plan.dtype).itemsize
    flops, nbytes, seconds = {}, {}, {}
    for name, cls in MODES.items():
        est = cls().estimate(plan, batch, itemsize, device)
        if est is not None:
            flops[name], nbytes[name], seconds[name] = est
    best = Auto().select(plan, batch, itemsize, device).name
    order = bracketing = None
    if plan.program is not None:
        bracketing = plan_bracketing(plan.program, batch, itemsize, device).describe()
    if plan.chain is not None:
        if len(plan.chain.dims) > 1:
            order = optimal_order(plan.chain.dims, plan.chain.flags).describe()
    else:
        order, bracketing = bracketing, None
    return JacobianCost(batch, flops, nbytes, best, order, seconds, device.name, bracketing)


# Analyses of a model on a sample shape and dtype (batch- and mode-independent), and the
# plans made from them for a mode and a batch size (a cost-model look-up).
_analyses: collections.OrderedDict[Hashable, Plan] = collections.OrderedDict()
_plans: collections.OrderedDict[Hashable, Plan] = collections.OrderedDict()
_last: dict[int, tuple[Any, tuple, Plan]] = {}  # the last model seen -> its last plan
analyses = 0  # models analysed (cache misses): read by tests that count analyses


def clear_cache() -> None:
    """Forget every cached analysis and plan (benchmarks measure cold starts with it)."""
    _analyses.clear()
    _plans.clear()
    _last.clear()


class _Batch(NamedTuple):
    """The shape and dtype of `X` (a `ShapeDtypeStruct` costs 5 µs to make, this 0.3)."""

    shape: tuple[int, ...]
    dtype: Any


def _struct(X: Any) -> _Batch:
    return _Batch(tuple(X.shape), jnp.dtype(X.dtype))


def make_plan(
    model: Any,
    X: Any,
    mode: Any = "auto",
    *,
    argname: str = "X",
    chunk_size: int | None = None,
) -> Plan:
    """Check a batch `X` against `model` and plan the Jacobian computation.

    **Arguments:**

    - `model`: a callable on one sample.
    - `X`: the batch `(B, *in_shape)` (an array, tracer or `jax.ShapeDtypeStruct`), already
        validated as floating point.
    - `mode`: a mode name or object; `"auto"` (or `None`: no particular mode needed) is
        resolved for the batch (or chunk) size.
    - `argname`: the name of `X` in error messages.
    - `chunk_size`: the chunk size the plan will run in, if any (`auto` chooses for it).

    **Raises:**

    `TypeError` if `model` is not callable or does not return one floating array;
    `ValueError` naming `argname` if `X` does not fit the model, `mode` if it is unknown or
    cannot run this model.
    """
    if not callable(model):
        raise TypeError(f"`model` must be callable, got {type(model).__name__}.")
    mode_key = "auto" if mode is None else mode  # names hash and compare fast
    mode = get_mode(mode_key)
    x = _struct(X)
    if len(x.shape) < 1:
        raise ValueError(f"`{argname}` must have a leading batch axis, got shape {x.shape}.")
    batch = x.shape[0] if chunk_size is None else min(x.shape[0], chunk_size)
    flags = (jax.default_backend(), jax.config.jax_enable_x64, jax.config.jax_numpy_dtype_promotion)
    # The same model object as the last call (a loop over batches): no need to flatten it
    # to find its structure. Models are immutable; the weak reference makes sure it is the
    # same object, not a new one at a recycled address.
    quick = (x.shape, x.dtype, mode_key, batch, flags)
    last = _last.get(id(model))
    if last is not None and last[0]() is model and last[1] == quick:
        return last[2]
    # `auto` weighs the segment plan for every model, so it needs the program view too
    want_program = isinstance(mode, Segments | Auto)
    skey = structure_key(model)
    if skey is None:  # unhashable parts: nothing is cached
        return _resolve(_analyse(model, x, argname, want_program), mode, batch)
    akey = (skey, x.shape[1:], x.dtype, flags)
    pkey = (akey, mode_key, batch)
    plan = _lookup(_plans, pkey)
    if plan is None:
        base = _lookup(_analyses, akey)
        if base is None:
            base = _analyse(model, x, argname, want_program)
            _store(_analyses, akey, base)
        elif want_program and base.program is None and base.program_error is None:
            base = _with_program(base, model)  # analysed for an explicit mode before
            _store(_analyses, akey, base)
        plan = _resolve(base, mode, batch)
        _store(_plans, pkey, plan)
    _remember(model, quick, plan)
    return plan


def _remember(model: Any, quick: tuple, plan: Plan) -> None:
    try:
        ref = weakref.ref(model)
    except TypeError:  # objects without weak references take the full path every time
        return
    _last.clear()
    _last[id(model)] = (ref, quick, plan)


def _lookup(cache: collections.OrderedDict, key: Hashable) -> Plan | None:
    plan = cache.get(key)
    if plan is not None:
        cache.move_to_end(key)
    return plan


def _store(cache: collections.OrderedDict, key: Hashable, plan: Plan) -> None:
    cache[key] = plan
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def _resolve(base: Plan, mode: AbstractJacobianMode, batch: int) -> Plan:
    """The plan for a mode and a batch size, from the model's analysis."""
    plan = dataclasses.replace(base, batch_size=batch, mode=mode)
    if isinstance(mode, Auto):
        itemsize = jnp.dtype(plan.dtype).itemsize
        mode = mode.select(plan, max(batch, 1), itemsize, device_model())
    mode.check(plan)
    return dataclasses.replace(plan, mode=mode)


def _param_dtypes(model: Any) -> list[Any]:
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    return [jnp.dtype(a.dtype) for a in leaves]


def _analyse(model, x: _Batch, argname: str, want_program: bool) -> Plan:
    """Everything about `model` on samples like `x[0]` that does not depend on the batch
    size or the mode: shapes, dtypes, the chain view and (for models without a chain, or
    where asked) the program view. Returned as a plan with `mode=Auto()`."""
    global analyses
    analyses += 1
    chain_error = None
    try:
        chain = read_chain(model)
    except ChainError as e:
        chain, chain_error = None, str(e)
    if chain is not None and x.shape[1:] != chain.in_shape:
        expected = chain.in_shape
        raise ValueError(
            f"`{argname}` must have shape (batch, {', '.join(map(str, expected))}) for "
            f"this model (one sample is {expected}), got {x.shape}."
        )
    in_shape = tuple(x.shape[1:])
    dtype = promote_float(x.dtype, *_param_dtypes(model))
    sample = jax.ShapeDtypeStruct(in_shape, dtype)
    program, program_error = None, None
    if want_program or chain is None:
        # One trace gives the program and the output's shape and dtype.
        program, program_error = _trace(model, sample)
        if program is not None:
            out = program.out_struct
    if program is None:
        try:
            # a lambda: `eval_shape(model)` would format the whole module for its name
            out = jax.eval_shape(lambda x: model(x), sample)
        except Exception as e:  # the model's own error, re-raised naming the argument
            raise ValueError(
                f"`model` cannot be applied to one sample of `{argname}` (shape {in_shape}, "
                f"from `{argname}` of shape {x.shape}): {type(e).__name__}: {e}"
            ) from e
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"`model` must return a single array, got {jax.tree_util.tree_structure(out)}."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"`model` must return a floating array, got dtype {out.dtype}.")
    out_dtype = jnp.dtype(out.dtype)
    return Plan(
        in_shape=in_shape,
        out_shape=tuple(out.shape),
        in_dtype=jnp.dtype(x.dtype),
        dtype=promote_float(dtype, out_dtype),
        out_dtype=out_dtype,
        batch_size=0,
        chain=None if chain is None else chain.spec,
        chain_error=chain_error,
        mode=Auto(),
        program=program,
        program_error=program_error,
    )


def _trace(model: Any, sample: jax.ShapeDtypeStruct) -> tuple[Program | None, str | None]:
    """The program of `model` on one sample, or `None` and why it cannot be traced."""
    try:
        return trace_program(model, sample), None
    except Exception as e:  # the caller reports its own error where the model fails
        return None, f"{type(e).__name__}: {e}"


def _with_program(base: Plan, model: Any) -> Plan:
    """An analysis made without the program view (for an explicit mode), with it added."""
    program, error = _trace(model, jax.ShapeDtypeStruct(base.in_shape, base.dtype))
    return dataclasses.replace(base, program=program, program_error=error)
