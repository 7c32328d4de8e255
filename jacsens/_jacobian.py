"""Per-sample input Jacobians, batched JVPs/VJPs and input Hessians."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import backprop
from ._batching import map_chunks
from ._chain import (
    ActStep,
    JacobianCost,
    LinearStep,
    chain_cost,
    chain_jacobian,
    read_chain,
)
from ._validate import as_float_array, check_choice, check_positive_int, sample_shapes, sample_spec

Mode = Literal["auto", "rev", "fwd", "chain", "backprop"]
MODES = ("auto", "rev", "fwd", "chain", "backprop")


def _resolve_mode(model, mode: str, chain, in_shape, out_shape, batch: int, itemsize: int):
    check_choice(mode, "mode", MODES)
    if mode in ("chain", "backprop") and chain is None:
        read_chain(model)  # raises ChainError naming what could not be read
    if mode != "auto":
        return mode
    if chain is not None:
        return chain_cost(chain, batch, itemsize).best
    return "rev" if math.prod(out_shape) <= math.prod(in_shape) else "fwd"


def _promote(model, X):
    """Promote `X` to the model's output precision; return `(X, out_dtype)`.

    Derivatives are then returned in the dtype of the model's output and computed at least
    in that precision: float32 inputs to a float64 model would otherwise give Jacobians
    rounded to float32 (reverse mode returns cotangents in the input's dtype).
    """
    out_dtype = jax.eval_shape(model, jax.ShapeDtypeStruct(X.shape[1:], X.dtype)).dtype
    return X.astype(jnp.promote_types(X.dtype, out_dtype)), out_dtype


@eqx.filter_jit
def _jacobian_impl(model, X, mode, chunk_size, out_shape):
    in_shape = X.shape[1:]
    X, out_dtype = _promote(model, X)
    if mode == "rev":
        batched = jax.vmap(jax.jacrev(model))
    elif mode == "fwd":
        batched = jax.vmap(jax.jacfwd(model))
    elif mode == "chain":
        chain = read_chain(model)

        def batched(Xc):
            J = chain_jacobian(chain, Xc)
            return J.reshape(Xc.shape[0], *out_shape, *in_shape)
    else:

        def batched(Xc):
            return backprop._jacobian_impl(model, Xc)

    return map_chunks(batched, X, chunk_size=chunk_size).astype(out_dtype)


def input_jacobian(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    *,
    mode: Mode = "auto",
    chunk_size: int | None = None,
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
        memory. Results equal the unchunked ones up to round-off.

    **Returns:**

    An array of shape `(B, *out_shape, *in_shape)` with the dtype of the model's output.

    **Raises:**

    `ValueError` if `X` does not match the model's input shape, `mode` is unknown,
    `chunk_size` is not positive, or `mode` needs a layer chain the model does not have;
    `TypeError` if `X` is not floating point.
    """
    X = as_float_array(X, "X")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    in_shape, out_shape, chain = sample_shapes(model, X)
    mode = _resolve_mode(model, mode, chain, in_shape, out_shape, X.shape[0], X.dtype.itemsize)
    return _jacobian_impl(model, X, mode, chunk_size, out_shape)


def jacobian_cost(
    model: Callable[[Array], Array],
    batch_size: int = 1,
    *,
    dtype: Any = jnp.float32,
) -> JacobianCost:
    """The cost model's FLOPs and bytes of each input-Jacobian mode (shapes only).

    Operations are counted as each mode executes them: the forward pass, then rev pushes
    an identity seed of `out` rows back through the layers (`≈ out` reverse passes; the
    products before the first per-sample diagonal are shared by the batch and done once),
    fwd pushes `in` rows forward, chain multiplies the layer Jacobians in the FLOP-optimal
    order. `best`, what `input_jacobian(mode="auto")` picks, has the least roofline time
    `Σ max(FLOPs / peak, bytes / bandwidth) + overhead` with typical constants of the
    default backend's device kind (`jacsens._chain.DEVICE_MODELS`), preferring rev, then
    chain, then fwd within 10%.

    **Arguments:**

    - `model`: a model with a readable layer chain (`jacsens.MLP`, `eqx.nn.MLP`, or an
        `eqx.nn.Sequential` of Linear layers and elementwise activations).
    - `batch_size`: batch size `B` the totals are for.
    - `dtype`: dtype the bytes are counted in.

    **Returns:**

    A `JacobianCost` with per-mode `flops`, `bytes`, the `best` mode and the `order`.
    """
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=False)
    chain = read_chain(model)
    return chain_cost(chain, batch_size, jnp.dtype(dtype).itemsize)


def explain(model: Callable[[Array], Array], batch_size: int = 1, *, file=None) -> str:
    """Print the input Jacobian of `model` as a product of layer Jacobians.

    Shows `∂y/∂x = W3 · diag(f'(z2)) · W2 · diag(f'(z1)) · W1` with each factor's shape,
    which factors are diagonal (kept as vectors), the FLOP-optimal multiplication order,
    and the cost model's FLOPs for each mode at `batch_size`.

    **Arguments:**

    - `model`: a model with a readable layer chain.
    - `batch_size`: batch size for the FLOP counts.
    - `file`: where to print (default `sys.stdout`); pass `False` to print nothing.

    **Returns:**

    The text that was printed.
    """
    chain = read_chain(model)
    cost = jacobian_cost(model, batch_size)
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
    buf = io.StringIO()
    print(
        f"Model: {type(model).__name__}, input {chain.in_shape}, output {chain.out_shape}", file=buf
    )
    print("∂y/∂x = " + " · ".join(name for name, _, _ in factors), file=buf)
    print("", file=buf)
    print(f"  {'factor':<22}{'shape':>14}  kind", file=buf)
    for name, shape, diag in factors:
        kind = "diagonal: stored as a vector, applied as a scaling" if diag else "dense"
        print(f"  {name:<22}{shape:>14}  {kind}", file=buf)
    print("", file=buf)
    print(f"Optimal order of the dense factors: {cost.order}", file=buf)
    print(f"Cost model at batch size {batch_size}:", file=buf)
    print("  " + str(cost).replace("\n", "\n  "), file=buf)
    text = buf.getvalue()
    if file is not False:
        print(text, end="", file=file)
    return text


def _check_products(model, X, V, vname: str, want: str):
    X = as_float_array(X, "X")
    V = as_float_array(V, vname)
    in_shape, out_shape, _, out_dtype = sample_spec(model, X)
    shape = (X.shape[0], *(in_shape if want == "in" else out_shape))
    if V.shape != shape:
        raise ValueError(
            f"`{vname}` must have shape {shape} (batch, *{want}_shape), got {V.shape}."
        )
    # Tangents match X's dtype, cotangents the output's (JAX's own error names neither).
    if want == "in":
        dtype, what = X.dtype, "of `X`"
    else:
        dtype, what = out_dtype, "of the model's output"
    if V.dtype != dtype:
        raise TypeError(f"`{vname}` must have the dtype {what}, {dtype}; got {V.dtype}.")
    return X, V


@eqx.filter_jit
def _jvp_impl(model, X, V, chunk_size):
    def one(x, v):
        return jax.jvp(model, (x,), (v,))[1]

    return map_chunks(jax.vmap(one), X, V, chunk_size=chunk_size)


@eqx.filter_jit
def _vjp_impl(model, X, U, chunk_size):
    def one(x, u):
        _, pullback = jax.vjp(model, x)
        return pullback(u)[0]

    return map_chunks(jax.vmap(one), X, U, chunk_size=chunk_size)


def jvp(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    V: Float[Array, "batch *in"],
    *,
    chunk_size: int | None = None,
) -> Float[Array, " batch *out"]:
    """Batched Jacobian-vector products `J(X[b]) · V[b]`, without forming `J`.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`; `V`: tangents of the same shape.
    - `chunk_size`: optional chunking over the batch.

    **Returns:**

    `(B, *out_shape)`.
    """
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    X, V = _check_products(model, X, V, "V", "in")
    return _jvp_impl(model, X, V, chunk_size)


def vjp(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    U: Float[Array, " batch *out"],
    *,
    chunk_size: int | None = None,
) -> Float[Array, "batch *in"]:
    """Batched vector-Jacobian products `U[b]ᵀ · J(X[b])`, without forming `J`.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`; `U`: cotangents `(B, *out_shape)`.
    - `chunk_size`: optional chunking over the batch.

    **Returns:**

    `(B, *in_shape)`.
    """
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    X, U = _check_products(model, X, U, "U", "out")
    return _vjp_impl(model, X, U, chunk_size)


@eqx.filter_jit
def _hessian_impl(model, X, chunk_size):
    X, out_dtype = _promote(model, X)
    H = map_chunks(jax.vmap(jax.jacfwd(jax.jacrev(model))), X, chunk_size=chunk_size)
    return H.astype(out_dtype)


def input_hessian(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    *,
    chunk_size: int | None = None,
) -> Float[Array, "batch *out *in *in"]:
    """Per-sample input Hessians `∂²y/∂x∂x`, forward-over-reverse.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`.
    - `chunk_size`: optional chunking over the batch.

    **Returns:**

    `(B, *out_shape, *in_shape, *in_shape)`.
    """
    X = as_float_array(X, "X")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    sample_shapes(model, X)
    return _hessian_impl(model, X, chunk_size)
