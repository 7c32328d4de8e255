"""Local attributions: which inputs matter for one prediction.

All functions are batched over the leading axis of `X`, jitted, and process the batch in
chunks (`chunk_size` rows at a time) so that memory stays bounded even when every row is
expanded into many points (integration steps, noisy copies).

For a model with several outputs, `target` picks the output being explained: an int
(flat index into the output), a tuple (index into a multi-dimensional output), or an
integer array `(B,)` with one flat index per row. A model whose output has exactly one
element needs no `target`. `target="all"` explains every output at once: the result gains
the output's axes, `(B, *out_shape, *in_shape)`, and is computed in one vectorised call
from input Jacobians (`Plan.jacobian`, the same engine and mode choice as
`jacsens.input_jacobian`) instead of one gradient pass per output. An out-of-range target
raises `ValueError` naming `target`;
for a target array traced under `jit` the check runs with the program (an
`equinox.error_if` runtime error; NaN results under `EQX_ON_ERROR=nan`), so an
out-of-range entry is never silently clamped to the last output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._batching import map_chunks
from ._memory import auto_chunk_size, memory_budget
from ._plan import make_plan
from ._validate import as_float_array, check_choice, check_chunk_size

Target = int | tuple[int, ...] | Int[Array, " batch"] | Literal["all"] | None
IG_METHODS = (
    "gausslegendre",
    "riemann_trapezoid",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
)


def _prepare(model, X, target, chunk_size, points: int = 1, points_name: str | None = None):
    """Validate the common arguments; return `(X, targets (B,) int32, chunk_size)`, with
    `targets = None` for `target="all"`.

    `X` is returned in the plan's compute dtype (the package's dtype rule), so a float64
    model given float32 inputs gives float64 attributions, as `input_jacobian` does.
    `chunk_size="auto"` becomes the largest chunk whose estimated memory fits the device's
    budget, for `points` model evaluations per row (`n_steps`, `n_samples`); a single row
    that cannot fit is refused naming `points_name`.
    """
    X = as_float_array(X, "X")
    chunk_size = check_chunk_size(chunk_size)
    plan = make_plan(model, X, None)
    out_shape = plan.out_shape
    if X.dtype != plan.dtype:
        X = X.astype(plan.dtype)
    n_out = math.prod(out_shape)
    B = X.shape[0]
    every = isinstance(target, str) and target == "all"
    # per point: the input, its gradient or Jacobian, and a few working copies
    per_point = jnp.dtype(plan.dtype).itemsize * (
        6 * plan.n_in + 2 * plan.n_out + (2 * plan.n_out * plan.n_in if every else 0)
    )
    budget = memory_budget()
    if points_name is not None and points * per_point > budget:
        raise ValueError(
            f"`{points_name}`={points} needs about {points * per_point / 2**30:.3g} GiB for a "
            f"single row, more than the {budget / 2**30:.3g} GiB this device can give; "
            f"use fewer {points_name}."
        )
    if chunk_size == "auto":
        chunk_size = auto_chunk_size(points * per_point, max(B, 1), budget)
    if every:
        return X, None, chunk_size
    if target is None:
        if n_out != 1:
            raise ValueError(
                f"`target` is required: the model's output has shape {out_shape} "
                f"({n_out} elements); pass the index of the output to explain."
            )
        flat = 0
    elif isinstance(target, tuple):
        if len(target) != len(out_shape) or not all(
            isinstance(t, int | np.integer) and -s <= t < s
            for t, s in zip(target, out_shape, strict=False)
        ):
            raise ValueError(
                f"`target` {target!r} is not an index into the output of shape {out_shape}."
            )
        flat = int(
            np.ravel_multi_index(
                tuple(t % s for t, s in zip(target, out_shape, strict=True)), out_shape
            )
        )
    elif isinstance(target, int | np.integer) and not isinstance(target, bool):
        if not -n_out <= target < n_out:
            raise ValueError(
                f"`target` must be in [0, {n_out}) for an output of {n_out} elements, got {target}."
            )
        flat = int(target) % n_out
    elif isinstance(target, np.ndarray | jax.Array):
        if target.shape != (B,) or not jnp.issubdtype(target.dtype, jnp.integer):
            raise ValueError(
                f"`target` as an array must be integers of shape ({B},) (one per row of X), "
                f"got {target.dtype} {target.shape}."
            )
        if isinstance(target, jax.core.Tracer):
            # under jit the values are unknown here: check them when the program runs, so
            # an out-of-range entry raises instead of being clamped by the gather
            T = jnp.asarray(target, jnp.int32)
            T = eqx.error_if(
                T,
                (T < 0) | (T >= n_out),
                f"`target` entries must be in [0, {n_out}) for an output of {n_out} elements.",
            )
            return X, T, chunk_size
        t = np.asarray(target)
        if t.size and (t.min() < 0 or t.max() >= n_out):
            raise ValueError(
                f"`target` entries must be in [0, {n_out}), got range [{t.min()}, {t.max()}]."
            )
        return X, jnp.asarray(t, jnp.int32), chunk_size
    else:
        raise TypeError(
            f"`target` must be None, 'all', an int, a tuple or an integer array, got "
            f"{target!r:.60}."
        )
    return X, jnp.full((B,), flat, jnp.int32), chunk_size


def _selected(model):
    """`(x, t) -> model(x).ravel()[t]`: the scalar being explained.

    An out-of-range `t` (only possible for a target array traced under `jit`, where
    `_prepare` cannot see the values) gives NaN for the value and its gradient instead of
    the clamped index a gather would use.
    """

    def f(x, t):
        y = jnp.reshape(model(x), (-1,))
        n = y.shape[0]
        scale = jnp.where((t >= 0) & (t < n), 1, jnp.nan).astype(y.dtype)
        return y[jnp.clip(t, 0, n - 1)] * scale

    return f


def _path_plan(model, X: Array, per_row: int, chunk_size: int | None):
    """The plan for Jacobians of `per_row` points per row of `X`, `chunk_size` rows at a
    time: the mode is chosen for the batch of points one chunk evaluates."""
    rows = X.shape[0] if chunk_size is None else min(X.shape[0], chunk_size)
    points = jax.ShapeDtypeStruct((max(rows, 1) * per_row, *X.shape[1:]), X.dtype)
    return make_plan(model, points, "auto")


def _out_axes(a: Array, n_out_axes: int) -> Array:
    """`a (B, *in)` with `n_out_axes` axes of size 1 after the batch axis, to broadcast
    against Jacobians `(B, *out, *in)`."""
    return a.reshape(a.shape[:1] + (1,) * n_out_axes + a.shape[1:])


@eqx.filter_jit
def _jacobian_all(plan, model, X, chunk_size):
    return plan.jacobian(model, X, chunk_size)


@eqx.filter_jit
def _ig_all_impl(plan, model, X, base, alphas, weights, chunk_size):
    n_steps = alphas.shape[0]
    k = len(plan.out_shape)
    in_axes = tuple(range(-len(plan.in_shape), 0))

    def chunk(Xc, Bc):
        c = Xc.shape[0]
        d = Xc - Bc
        a = alphas.reshape((1, n_steps) + (1,) * (Xc.ndim - 1))
        path = (Bc[:, None] + a * d[:, None]).reshape(c * n_steps, *Xc.shape[1:])
        J = plan.jacobian(model, path).reshape(c, n_steps, *plan.out_shape, *plan.in_shape)
        avg = jnp.tensordot(weights.astype(J.dtype), J, axes=((0,), (1,)))
        attr = _out_axes(d.astype(J.dtype), k) * avg
        gap = jax.vmap(model)(Xc) - jax.vmap(model)(Bc)
        delta = jnp.sum(attr, axis=in_axes) - gap.astype(J.dtype)
        return attr, delta

    return map_chunks(chunk, X, base, chunk_size=chunk_size)


@eqx.filter_jit
def _smoothgrad_all_impl(plan, model, X, keys, n_samples, stdev, squared, chunk_size):
    def chunk(Xc, Kc):
        c = Xc.shape[0]
        noise = jax.vmap(lambda k: jax.random.normal(k, (n_samples, *Xc.shape[1:]), Xc.dtype))(Kc)
        points = (Xc[:, None] + stdev * noise).reshape(c * n_samples, *Xc.shape[1:])
        J = plan.jacobian(model, points).reshape(c, n_samples, *plan.out_shape, *plan.in_shape)
        return jnp.mean(J * J if squared else J, axis=1)

    return map_chunks(chunk, X, keys, chunk_size=chunk_size)


@eqx.filter_jit
def _grad_impl(model, X, T, chunk_size):
    g = jax.vmap(jax.grad(_selected(model)))
    return map_chunks(g, X, T, chunk_size=chunk_size)


def saliency(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    *,
    target: Target = None,
    abs: bool = True,
    chunk_size: int | Literal["auto"] | None = 4096,
) -> Float[Array, "batch *in"]:
    """Saliency map: the gradient of the selected output with respect to the input.

    Row `b` is `|∂y_t/∂x|` at `X[b]` (Simonyan et al., 2014), i.e. row `t` of the input
    Jacobian, in absolute value unless `abs=False`.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`.
    - `target`: the output to explain (see the module docstring); `"all"`: every
        output, i.e. the input Jacobian of each row.
    - `abs`: take the absolute value (default) or keep the sign.
    - `chunk_size`: rows per chunk, `None` (one chunk) or `"auto"` (the largest chunk
        that fits the device's memory).

    **Returns:**

    `(B, *in_shape)`; `(B, *out_shape, *in_shape)` for `target="all"`.
    """
    X, T, chunk_size = _prepare(model, X, target, chunk_size)
    if T is None:
        g = _jacobian_all(make_plan(model, X, "auto", chunk_size=chunk_size), model, X, chunk_size)
        return jnp.abs(g) if abs else g
    g = _grad_impl(model, X, T, chunk_size)
    return jnp.abs(g) if abs else g


def gradient_x_input(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    *,
    target: Target = None,
    chunk_size: int | Literal["auto"] | None = 4096,
) -> Float[Array, "batch *in"]:
    """Gradient times input: `x ⊙ ∂y_t/∂x` for every row.

    For a linear model `y = w·x + c` this is the exact contribution `w_i x_i` of each input.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`.
    - `target`: the output to explain; `"all"`: every output, `x ⊙ J_o` for each row
        `J_o` of the input Jacobian.
    - `chunk_size`: rows per chunk, `None` (one chunk) or `"auto"` (the largest chunk
        that fits the device's memory).

    **Returns:**

    `(B, *in_shape)`; `(B, *out_shape, *in_shape)` for `target="all"`.
    """
    X, T, chunk_size = _prepare(model, X, target, chunk_size)
    if T is None:
        plan = make_plan(model, X, "auto", chunk_size=chunk_size)
        J = _jacobian_all(plan, model, X, chunk_size)
        return _out_axes(X.astype(J.dtype), len(plan.out_shape)) * J
    return X * _grad_impl(model, X, T, chunk_size)


def _ig_nodes(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points `α_k` in [0, 1] and weights `w_k` with `Σ w_k g(α_k) ≈ ∫₀¹ g`."""
    n = n_steps
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return (x + 1) / 2, w / 2
    if method == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, n)
        w = np.full(n, 1.0 / (n - 1))
        w[[0, -1]] /= 2
        return alphas, w
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)


@eqx.filter_jit
def _ig_impl(model, X, base, T, alphas, weights, chunk_size):
    f = _selected(model)
    grad = jax.grad(f)

    def one(x, b, t):
        d = x - b
        path = b[None] + alphas.reshape((-1,) + (1,) * x.ndim) * d[None]
        g = jax.vmap(grad, in_axes=(0, None))(path, t)
        attr = d * jnp.tensordot(weights, g, axes=1)
        delta = jnp.sum(attr) - (f(x, t) - f(b, t))
        return attr, delta

    return map_chunks(jax.vmap(one), X, base, T, chunk_size=chunk_size)


def integrated_gradients(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    *,
    baseline: float | Float[Array, "*in"] | Float[Array, "batch *in"] = 0.0,
    target: Target = None,
    n_steps: int = 50,
    method: Literal[
        "gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"
    ] = "gausslegendre",
    return_delta: bool = True,
    chunk_size: int | Literal["auto"] | None = 256,
) -> Float[Array, "batch *in"] | tuple[Float[Array, "batch *in"], Float[Array, " batch"]]:
    """Integrated gradients (Sundararajan et al., 2017).

    `IG_i(x) = (x_i - x'_i) ∫₀¹ ∂y_t/∂x_i (x' + α (x - x')) dα` for the baseline `x'`,
    with the integral taken by a quadrature of `n_steps` points. The attributions satisfy
    completeness, `Σ_i IG_i = y_t(x) - y_t(x')`, up to the quadrature error; `delta`
    reports that error per row.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`.
    - `baseline`: `x'`, a scalar, one sample `in_shape`, or one per row `(B, *in_shape)`.
    - `target`: the output to explain; `"all"`: every output, from the path integral of
        the input Jacobian, `(x - x') ⊙ Σ_k w_k J(x' + α_k (x - x'))` (the `n_steps`
        Jacobians of a row are computed as one batch).
    - `n_steps`: quadrature points (≥ 1; ≥ 2 for `riemann_trapezoid`).
    - `method`: `"gausslegendre"` (default; exact for polynomial paths of degree
        `< 2 n_steps`), `"riemann_trapezoid"`, `"riemann_left"`, `"riemann_right"` or
        `"riemann_middle"`.
    - `return_delta`: also return the completeness error.
    - `chunk_size`: rows per chunk (each row is expanded into `n_steps` points), or
        `"auto"` (the largest chunk that fits the device's memory).

    **Returns:**

    The attributions `(B, *in_shape)`, and if `return_delta` the completeness error
    `delta = Σ_i IG_i - (y_t(x) - y_t(x'))` of shape `(B,)`. For `target="all"`:
    `(B, *out_shape, *in_shape)` and `delta` of shape `(B, *out_shape)`, one per output.
    """
    check_choice(method, "method", IG_METHODS)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise ValueError(f"`n_steps` must be an int >= 1, got {n_steps!r}.")
    if method == "riemann_trapezoid" and n_steps < 2:
        raise ValueError(f"`n_steps` must be >= 2 for method='riemann_trapezoid', got {n_steps}.")
    X, T, chunk_size = _prepare(model, X, target, chunk_size, int(n_steps), "n_steps")
    base = as_float_array(baseline, "baseline").astype(X.dtype)
    try:
        base = jnp.broadcast_to(base, X.shape)
    except ValueError as e:
        raise ValueError(
            f"`baseline` must be a scalar or have shape {X.shape[1:]} or {X.shape}, "
            f"got {base.shape}."
        ) from e
    alphas, weights = _ig_nodes(method, int(n_steps))
    nodes = (jnp.asarray(alphas, X.dtype), jnp.asarray(weights, X.dtype), chunk_size)
    if T is None:  # every output at once: the path integral of the Jacobian
        plan = _path_plan(model, X, int(n_steps), chunk_size)
        attr, delta = _ig_all_impl(plan, model, X, base, *nodes)
    else:
        attr, delta = _ig_impl(model, X, base, T, *nodes)
    return (attr, delta) if return_delta else attr


@eqx.filter_jit
def _smoothgrad_impl(model, X, keys, T, n_samples, stdev, squared, chunk_size):
    grad = jax.grad(_selected(model))

    def one(x, k, t):
        noise = jax.random.normal(k, (n_samples, *x.shape), x.dtype)
        g = jax.vmap(grad, in_axes=(0, None))(x[None] + stdev * noise, t)
        return jnp.mean(g * g if squared else g, axis=0)

    return map_chunks(jax.vmap(one), X, keys, T, chunk_size=chunk_size)


def smoothgrad(
    model: Callable[[Array], Array],
    X: Float[Array, "batch *in"],
    *,
    key: PRNGKeyArray,
    target: Target = None,
    n_samples: int = 50,
    stdev: float = 0.15,
    squared: bool = False,
    chunk_size: int | Literal["auto"] | None = 256,
) -> Float[Array, "batch *in"]:
    """SmoothGrad (Smilkov et al., 2017): the gradient averaged over noisy copies of `x`.

    Row `b` is `(1/n) Σ_k ∂y_t/∂x (X[b] + ε_k)` with `ε_k ~ N(0, stdev² I)`, or the mean
    of the squared gradients with `squared=True` (SmoothGrad-Squared). Noise for row `b`
    comes from `jax.random.split(key, B)[b]`, so results do not depend on `chunk_size`.

    **Arguments:**

    - `model`: callable on one sample.
    - `X`: inputs `(B, *in_shape)`.
    - `key`: a JAX PRNG key (keyword-only, required).
    - `target`: the output to explain; `"all"`: every output, the mean of the input
        Jacobians (or of their squares) at the noisy copies, with the same noise as one
        call per output.
    - `n_samples`: noisy copies per row (≥ 1).
    - `stdev`: standard deviation of the noise, in the units of `X` (≥ 0; 0 gives the
        plain gradient). Scale it to your inputs' range.
    - `squared`: average squared gradients instead.
    - `chunk_size`: rows per chunk (each row is expanded into `n_samples` points), or
        `"auto"`.

    **Returns:**

    `(B, *in_shape)`; `(B, *out_shape, *in_shape)` for `target="all"`.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
        raise ValueError(f"`n_samples` must be an int >= 1, got {n_samples!r}.")
    if not isinstance(stdev, int | float | np.floating) or not (
        stdev >= 0 and math.isfinite(stdev)
    ):
        raise ValueError(f"`stdev` must be a finite number >= 0, got {stdev!r}.")
    if not isinstance(key, jax.Array) or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if not (isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)):
            raise TypeError(f"`key` must be a JAX PRNG key, got {type(key).__name__}.")
    X, T, chunk_size = _prepare(model, X, target, chunk_size, int(n_samples), "n_samples")
    keys = jax.random.split(key, X.shape[0])
    if T is None:
        return _smoothgrad_all_impl(
            _path_plan(model, X, int(n_samples), chunk_size),
            model,
            X,
            keys,
            int(n_samples),
            jnp.asarray(stdev, X.dtype),
            bool(squared),
            chunk_size,
        )
    return _smoothgrad_impl(
        model, X, keys, T, int(n_samples), jnp.asarray(stdev, X.dtype), bool(squared), chunk_size
    )


__all__ = ["saliency", "gradient_x_input", "integrated_gradients", "smoothgrad"]
