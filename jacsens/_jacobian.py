"""Per-sample input Jacobians, batched JVPs/VJPs and input Hessians."""

from __future__ import annotations

import collections
import functools
import io
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._batching import map_chunks, run_chunked
from ._cost import JacobianCost
from ._modes import AbstractJacobianMode, get_mode
from ._plan import Plan, make_plan
from ._program._chain import ActStep, ChainError, LinearStep, read_chain
from ._validate import as_float_array, check_chunk_size, check_positive_int

Mode = str | AbstractJacobianMode  # a name in `jacsens._modes.MODE_NAMES`, or a mode object


@eqx.filter_jit
def _filtered_jacobian(model, X, plan: Plan, chunk_size):
    return plan.jacobian(model, X, chunk_size)


# Compiled Jacobians by everything static about a call: the model's pytree structure and
# non-array leaves, the plan and the chunk size. Each is a `jax.jit` of the model's array
# leaves and `X`, which dispatches in C++, where `eqx.filter_jit` partitions and hashes the
# model in Python on every call. Measured on CPU, `input_jacobian` of an MLP 8-16-16-4 on
# 2 rows, waiting for the result: 184 µs per call through `filter_jit`, ~100 µs now, of
# which ~80 µs are the compiled call itself.
_compiled: collections.OrderedDict[Hashable, Callable] = collections.OrderedDict()
_COMPILED_SIZE = 256
# The last call's model (weakly), plan and chunk size, and its compiled function and array
# leaves: a loop over batches of one model skips flattening and hashing it. The leaves are
# dropped when the model is collected (the weak reference's callback).
_last_call: list[tuple[Any, Plan, Any, Callable, list[Any]]] = []


def _jacobian_impl(model, X, plan: Plan, chunk_size):
    """`plan.jacobian(model, X, chunk_size)` compiled, the model's arrays and `X` traced
    and everything else static (as `eqx.filter_jit` does, with less work per call)."""
    if _last_call:
        ref, last_plan, last_chunk, fn, arrays = _last_call[0]
        if ref() is model and last_plan is plan and last_chunk == chunk_size:
            return fn(arrays, X)
    leaves, treedef = jax.tree.flatten(model)
    is_array = [eqx.is_array(x) for x in leaves]
    static = tuple(None if a else x for x, a in zip(leaves, is_array, strict=True))
    key = (treedef, static, plan, chunk_size)
    try:
        fn = _compiled.get(key)
    except TypeError:  # an unhashable non-array leaf: equinox reports it
        return _filtered_jacobian(model, X, plan, chunk_size)
    if fn is None:
        fn = jax.jit(functools.partial(_apply_plan, treedef, static, plan, chunk_size))
        _compiled[key] = fn
        if len(_compiled) > _COMPILED_SIZE:
            _compiled.popitem(last=False)
    arrays = [x for x, a in zip(leaves, is_array, strict=True) if a]
    _last_call.clear()
    if not any(isinstance(x, jax.core.Tracer) for x in (*arrays, X)):  # never keep tracers
        try:
            ref = weakref.ref(model, lambda _: _last_call.clear())
        except TypeError:  # no weak references: the full path every time
            pass
        else:
            _last_call.append((ref, plan, chunk_size, fn, arrays))
    return fn(arrays, X)


def _apply_plan(treedef, static, plan: Plan, chunk_size, arrays, X):
    it = iter(arrays)
    leaves = [next(it) if x is None else x for x in static]
    return plan.jacobian(jax.tree.unflatten(treedef, leaves), X, chunk_size)


def input_jacobian(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    *,
    mode: Mode = "auto",
    chunk_size: int | Literal["auto"] | None = None,
) -> Float[Array, "batch *out *in"]:
    """Per-sample Jacobians of a model's output with respect to its input.

    For each row `X[b]`, computes `∂model(X[b]) / ∂X[b]`. Elementwise activations
    contribute diagonal factors, which are applied as scalings, never as dense matrices.

    **Arguments:**

    - `model`: an `eqx.Module` or callable mapping one sample of shape `in_shape` to an
        output of shape `out_shape`.
    - `X`: inputs of shape `(B, *in_shape)`, floating point.
    - `mode`:
        - `"rev"`: `vmap(jacrev(model))`, one reverse pass per output;
        - `"fwd"`: `vmap(jacfwd(model))`, one forward pass per input;
        - `"chain"`: the layer Jacobians multiplied in the FLOP-optimal order (matrix-chain
            dynamic programme); needs a readable layer chain;
        - `"backprop"`: the hand-written kernel (`jacsens.backprop`);
        - `"auto"` (default): the cheapest of rev/fwd/chain by the cost model (see
            `jacobian_cost`); for models without a readable chain, rev if the output is
            no wider than the input, else fwd.
    - `chunk_size`: if given, the batch is processed in chunks of this many rows to bound
        memory; `"auto"`: the largest chunk whose estimated memory fits the device's free
        memory (halved and retried after an out-of-memory error). Results equal the
        unchunked ones up to round-off.

    **Returns:**

    An array of shape `(B, *out_shape, *in_shape)` with the dtype of the model's output.

    **Raises:**

    `ValueError` if `X` does not match the model's input shape, `mode` is unknown,
    `chunk_size` is not positive, or `mode` needs a layer chain the model does not have;
    `TypeError` if `X` is not floating point.
    """
    X = as_float_array(X, "X")
    chunk_size = check_chunk_size(chunk_size)
    mode = get_mode(mode)
    if chunk_size != "auto":
        plan = make_plan(model, X, mode, chunk_size=chunk_size)
        return _jacobian_impl(model, X, plan, chunk_size)
    per_row = make_plan(model, X, mode).peak_bytes(1)

    def call(chunk):
        return _jacobian_impl(model, X, make_plan(model, X, mode, chunk_size=chunk), chunk)

    return run_chunked(call, chunk_size, X.shape[0], per_row, traced=_traced(X))


def _traced(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def _product_bytes(plan: Plan) -> float:
    """Peak bytes per row of a JVP/VJP: primal, tangent and residuals, a few of each."""
    return 8.0 * jnp.dtype(plan.dtype).itemsize * (plan.n_in + plan.n_out)


def _example_plan(model, example: Any, dtype: Any, argname: str) -> Plan:
    """A plan for `explain`/`jacobian_cost`: `example` is a batch size (the input shape is
    then read from the model's layer chain) or an example batch `(B, *in_shape)`."""
    if isinstance(example, int | np.integer) and not isinstance(example, bool):
        batch = check_positive_int(example, argname, allow_none=False)
    elif not hasattr(example, "shape") and not isinstance(example, list | tuple):
        raise ValueError(
            f"`{argname}` must be a positive int or an example batch `(B, *in_shape)`, got "
            f"{example!r:.60}."
        )
    if isinstance(example, int | np.integer) and not isinstance(example, bool):
        try:
            in_shape = read_chain(model).in_shape
        except ChainError as e:
            raise ValueError(
                f"`{argname}`: only the batch size was given, and the model's input shape "
                f"cannot be read from it ({e}); pass an example batch `(B, *in_shape)` "
                "instead."
            ) from None
        return make_plan(model, jax.ShapeDtypeStruct((batch, *in_shape), jnp.dtype(dtype)))
    X = example if isinstance(example, jax.ShapeDtypeStruct) else as_float_array(example, argname)
    if X.ndim < 1 or X.shape[0] < 1:
        raise ValueError(
            f"`{argname}` must be a batch size or an example batch `(B, *in_shape)` with "
            f"B >= 1, got shape {X.shape}."
        )
    return make_plan(model, X, argname=argname)


def jacobian_cost(
    model: Callable[[Array], Array],
    batch_size: int | Float[Array, "batch *in"] = 1,
    *,
    dtype: Any = jnp.float32,
) -> JacobianCost:
    """The cost model's FLOPs, bytes and estimated time of each input-Jacobian mode.

    Operations are counted as each mode executes them: the forward pass, then rev pushes
    an identity seed of `out` rows back through the layers (`≈ out` reverse passes; the
    products before the first per-sample diagonal are shared by the batch and done once),
    fwd pushes `in` rows forward, chain multiplies the layer Jacobians in the FLOP-optimal
    order. `best`, what `input_jacobian(mode="auto")` picks, has the least roofline time
    `Σ max(FLOPs / peak, bytes / bandwidth) + overhead` with typical constants of the
    default backend's device kind (`jacsens._cost.DEVICE_MODELS`), preferring rev, then
    chain, then fwd unless one is estimated faster by more than 10%.

    **Arguments:**

    - `model`: a callable on one sample.
    - `batch_size`: the batch size `B` the totals are for, or an example batch
        `(B, *in_shape)` (needed for models whose input shape cannot be read from a
        layer chain).
    - `dtype`: dtype the bytes are counted in, when `batch_size` is an int.

    **Returns:**

    A `JacobianCost` with per-mode `flops`, `bytes`, `seconds`, the `best` mode and the
    `order` of the products.
    """
    return _example_plan(model, batch_size, dtype, "batch_size").cost()


def explain(
    model: Callable[[Array], Array],
    batch_size: int | Float[Array, "batch *in"] = 1,
    *,
    file: Any = None,
) -> str:
    """Print the input Jacobian of `model` as a product of its factors, and its cost.

    For a layer chain, shows `∂y/∂x = W3 · diag(f'(z2)) · W2 · diag(f'(z1)) · W1` with
    each factor's shape, which factors are diagonal (kept as vectors), the FLOP-optimal
    multiplication order, and the cost model's FLOPs, bytes and estimated time for each
    mode at the batch size, with the mode `auto` picks.

    **Arguments:**

    - `model`: a callable on one sample.
    - `batch_size`: batch size for the costs, or an example batch `(B, *in_shape)`.
    - `file`: a writable text stream to print to (default `sys.stdout`); `False` prints
        nothing.

    **Returns:**

    The text.
    """
    if file is not None and file is not False and not callable(getattr(file, "write", None)):
        raise TypeError(
            "`file` must be a writable text stream (an object with a `write` method), None "
            f"or False, got {type(file).__name__}; to write to a path, open it first."
        )
    plan = _example_plan(model, batch_size, jnp.float32, "batch_size")
    cost = plan.cost()
    buf = io.StringIO()
    print(
        f"Model: {type(model).__name__}, input {plan.in_shape}, output {plan.out_shape}",
        file=buf,
    )
    if plan.chain is not None:
        _explain_chain(read_chain(model), cost, buf)
    elif plan.program is not None:
        print(
            "∂y/∂x = "
            + " · ".join(f"J{k}" for k in range(len(plan.program.segments), 0, -1))
            + "  (the Jacobians of the segments of the program)",
            file=buf,
        )
        print("", file=buf)
        print(plan.program.describe(), file=buf)
        print("", file=buf)
        print(f"Cheapest bracketing of the segments: {cost.order}", file=buf)
    else:
        print(f"No layer chain ({plan.chain_error}); no program ({plan.program_error})", file=buf)
    print(f"Cost model at batch size {cost.batch_size}:", file=buf)
    print("  " + str(cost).replace("\n", "\n  "), file=buf)
    text = buf.getvalue()
    if file is not False:
        print(text, end="", file=file)
    return text


def _explain_chain(chain, cost: JacobianCost, buf) -> None:
    factors: list[tuple[str, str, bool]] = []
    n_lin = 0
    for step in chain.steps:
        if isinstance(step, LinearStep):
            n_lin += 1
            out, inp = step.shape
            factors.append((f"W{n_lin}", f"{out}×{inp}", False))
        elif isinstance(step, ActStep):
            width = chain.dims[n_lin]
            f = step.activation.name
            factors.append((f"diag({f}'(z{n_lin}))", f"{width}×{width}", True))
    factors.reverse()
    print("∂y/∂x = " + " · ".join(name for name, _, _ in factors), file=buf)
    print("", file=buf)
    print(f"  {'factor':<22}{'shape':>14}  kind", file=buf)
    for name, shape, diag in factors:
        kind = "diagonal: stored as a vector, applied as a scaling" if diag else "dense"
        print(f"  {name:<22}{shape:>14}  {kind}", file=buf)
    print("", file=buf)
    print(f"Optimal order of the dense factors: {cost.order}", file=buf)
    if cost.best == "segments":
        print(f"auto's plan, the program's segments bracketed: {cost.bracketing}", file=buf)


def _check_products(model, X, V, vname: str, want: str) -> tuple[Plan, Array, Array]:
    X = as_float_array(X, "X")
    V = as_float_array(V, vname)
    plan = make_plan(model, X, None)
    shape = (X.shape[0], *(plan.in_shape if want == "in" else plan.out_shape))
    if V.shape != shape:
        raise ValueError(
            f"`{vname}` must have shape {shape} (batch, *{want}_shape), got {V.shape}."
        )
    # Tangents match X's dtype, cotangents the output's (JAX's own error names neither).
    if want == "in":
        dtype, what = X.dtype, "of `X`"
    else:
        dtype, what = plan.out_dtype, "of the model's output"
    if V.dtype != dtype:
        raise TypeError(f"`{vname}` must have the dtype {what}, {dtype}; got {V.dtype}.")
    return plan, X, V


@eqx.filter_jit
def _jvp_impl(model, X, V, plan: Plan, chunk_size):
    def one(x, v):
        return jax.jvp(model, (x,), (v,))[1]

    X, V = X.astype(plan.dtype), V.astype(plan.dtype)
    return map_chunks(jax.vmap(one), X, V, chunk_size=chunk_size).astype(plan.out_dtype)


@eqx.filter_jit
def _vjp_impl(model, X, U, plan: Plan, chunk_size):
    def one(x, u):
        _, pullback = jax.vjp(model, x)
        return pullback(u)[0]

    X = X.astype(plan.dtype)
    return map_chunks(jax.vmap(one), X, U, chunk_size=chunk_size).astype(plan.out_dtype)


def jvp(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    V: Float[Array, "batch *in"],
    *,
    chunk_size: int | Literal["auto"] | None = None,
) -> Float[Array, " batch *out"]:
    """Batched Jacobian-vector products `J(X[b]) · V[b]`, without forming `J`.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`; `V`: tangents of the same shape.
    - `chunk_size`: optional chunking over the batch (rows, or `"auto"`: see
        `input_jacobian`).

    **Returns:**

    `(B, *out_shape)`.
    """
    chunk_size = check_chunk_size(chunk_size)
    plan, X, V = _check_products(model, X, V, "V", "in")

    def call(chunk):
        return _jvp_impl(model, X, V, plan, chunk)

    return run_chunked(call, chunk_size, X.shape[0], _product_bytes(plan), traced=_traced(X, V))


def vjp(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    U: Float[Array, " batch *out"],
    *,
    chunk_size: int | Literal["auto"] | None = None,
) -> Float[Array, "batch *in"]:
    """Batched vector-Jacobian products `U[b]ᵀ · J(X[b])`, without forming `J`.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`; `U`: cotangents `(B, *out_shape)`.
    - `chunk_size`: optional chunking over the batch (rows, or `"auto"`: see
        `input_jacobian`).

    **Returns:**

    `(B, *in_shape)`.
    """
    chunk_size = check_chunk_size(chunk_size)
    plan, X, U = _check_products(model, X, U, "U", "out")

    def call(chunk):
        return _vjp_impl(model, X, U, plan, chunk)

    return run_chunked(call, chunk_size, X.shape[0], _product_bytes(plan), traced=_traced(X, U))


@eqx.filter_jit
def _hessian_impl(model, X, plan: Plan, chunk_size):
    return plan.hessian(model, X, chunk_size)


def input_hessian(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    *,
    chunk_size: int | Literal["auto"] | None = None,
) -> Float[Array, "batch *out *in *in"]:
    """Per-sample input Hessians `∂²y/∂x∂x`, forward-over-reverse.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`.
    - `chunk_size`: optional chunking over the batch (rows, or `"auto"`: see
        `input_jacobian`).

    **Returns:**

    `(B, *out_shape, *in_shape, *in_shape)`.
    """
    X = as_float_array(X, "X")
    chunk_size = check_chunk_size(chunk_size)
    plan = make_plan(model, X, None)
    per_row = 4.0 * jnp.dtype(plan.dtype).itemsize * plan.n_out * plan.n_in * (plan.n_in + 1)

    def call(chunk):
        return _hessian_impl(model, X, plan, chunk)

    return run_chunked(call, chunk_size, X.shape[0], per_row, traced=_traced(X))
