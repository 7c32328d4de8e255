"""Three-way cross-check: autodiff modes vs the hand-written kernel vs finite differences."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import backprop
from ._grads import weight_grad
from ._jacobian import input_jacobian
from ._modes import MODES
from ._plan import make_plan
from ._validate import as_float_array, check_choice

# Tolerances on the relative error max|A − B| / max(|A|, |B|), in float64.
EXACT_RTOL = 1e-10
FD_RTOL = 1e-6

_KERNEL_LOSS_GRADS = {
    "half_squared_error": backprop.squared_error_grad,
    "cross_entropy": backprop.softmax_cross_entropy_grad,
}


class CrosscheckError(AssertionError):
    """Raised by `crosscheck(..., strict=True)` when two methods disagree."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One pair of methods compared on the same quantity."""

    quantity: str
    a: str
    b: str
    max_abs: float
    max_rel: float
    rtol: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel <= self.rtol)


@dataclasses.dataclass(frozen=True)
class CrosscheckReport:
    """Result of `crosscheck`: every pair of methods with its errors.

    **Fields:**

    - `comparisons`: a tuple of `Comparison(quantity, a, b, max_abs, max_rel, rtol)`.
    - `methods`: the methods that were run.

    `passed` is true when every comparison is within its tolerance; `str(report)` is a
    readable table.
    """

    comparisons: tuple[Comparison, ...]
    methods: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.comparisons), default=0.0)

    def failures(self) -> tuple[Comparison, ...]:
        return tuple(c for c in self.comparisons if not c.passed)

    def __str__(self) -> str:
        head = f"{'quantity':<16}{'a':<10}{'b':<10}{'max abs':>12}{'max rel':>12}{'rtol':>10}  ok"
        lines = [head, "-" * len(head)]
        for c in self.comparisons:
            ok = "yes" if c.passed else "NO"
            lines.append(
                f"{c.quantity:<16}{c.a:<10}{c.b:<10}{c.max_abs:>12.3e}{c.max_rel:>12.3e}"
                f"{c.rtol:>10.0e}  {ok}"
            )
        verdict = "all agree" if self.passed else f"{len(self.failures())} disagreement(s)"
        lines.append(f"crosscheck: {verdict} (float64)")
        return "\n".join(lines)


def _to_f64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree)


def finite_difference_jacobian(
    model: Callable[[Array], Array], X: Float[Array, "batch *in"], step: float | None = None
) -> Float[Array, "batch *out *in"]:
    """Per-sample input Jacobians by central differences, `(f(x + h e_k) − f(x − h e_k)) / 2h`.

    The step is `h = step · max(1, |x_k|)`, with `step` defaulting to `ε^{1/3}` of the
    dtype (about 6e-6 in float64), which balances truncation and round-off error.

    **Returns:** `(B, *out_shape, *in_shape)`.
    """
    X = as_float_array(X, "X")
    out_shape = make_plan(model, X, None).out_shape
    if step is None:
        step = float(jnp.finfo(X.dtype).eps) ** (1.0 / 3.0)
    elif isinstance(step, bool) or not isinstance(step, int | float) or not step > 0:
        raise ValueError(f"`step` must be a positive number or None, got {step!r}.")
    return _fd_impl(model, X, step, out_shape)


@eqx.filter_jit
def _fd_impl(model, X, step, out_shape):
    in_shape = X.shape[1:]
    n = int(np.prod(in_shape))
    flat = X.reshape(X.shape[0], n)
    h = step * jnp.maximum(1.0, jnp.abs(flat))  # (B, n)
    E = jnp.eye(n, dtype=X.dtype)

    def one(x, hx):
        plus = (x[None, :] + hx[:, None] * E).reshape(n, *in_shape)
        minus = (x[None, :] - hx[:, None] * E).reshape(n, *in_shape)
        diff = jax.vmap(model)(plus) - jax.vmap(model)(minus)  # (n, *out)
        cols = diff.reshape(n, -1) / (2 * hx[:, None])  # (n, out)
        return cols.T.reshape(*out_shape, *in_shape)

    return jax.vmap(one)(flat, h)


def _compare(quantity: str, a: str, b: str, A, Bv, rtol: float) -> Comparison:
    A = np.asarray(A)
    Bv = np.asarray(Bv)
    max_abs = float(np.max(np.abs(A - Bv))) if A.size else 0.0
    scale = max(float(np.max(np.abs(A), initial=0.0)), float(np.max(np.abs(Bv), initial=0.0)))
    max_rel = max_abs / scale if scale > 0 else max_abs
    return Comparison(quantity, a, b, max_abs, max_rel, rtol)


def crosscheck(
    model: Any,
    X: Float[Array, "batch *in"],
    Y: Array | None = None,
    *,
    modes: Sequence[str] | None = None,
    finite_differences: bool = True,
    loss: str = "half_squared_error",
    rtol: float = EXACT_RTOL,
    fd_rtol: float = FD_RTOL,
    strict: bool = False,
) -> CrosscheckReport:
    """Compare every Jacobian mode, the hand-written kernel and finite differences.

    Everything is recomputed in float64 (the model's parameters and `X` are cast), so
    disagreements above round-off are bugs, not precision.

    **Arguments:**

    - `model`: a model on one sample. Models with a readable layer chain are also checked
        in `chain` and `backprop` modes.
    - `X`: inputs `(B, *in_shape)`; keep `B` small (finite differences cost `2·in` model
        evaluations per sample).
    - `Y`: optional targets; if given, parameter gradients of `loss` from autodiff
        (`weight_grad`) and from the kernel (`backprop.weight_grads`) are compared too.
    - `modes`: Jacobian modes to run (default: every mode the model supports).
    - `finite_differences`: also compare against central differences.
    - `loss`: `"half_squared_error"` or `"cross_entropy"` (one-hot `Y`) for the
        parameter-gradient check.
    - `rtol`: tolerance between exact methods; `fd_rtol`: tolerance against finite
        differences.
    - `strict`: raise `CrosscheckError` with the report if any comparison fails.

    **Returns:**

    A `CrosscheckReport`.
    """
    X = as_float_array(X, "X")
    if X.ndim >= 1 and X.shape[0] == 0:
        raise ValueError(f"`X` must hold at least one sample to cross-check, got shape {X.shape}.")
    with jax.enable_x64(True):  # the plan of the float64 copy that is checked
        plan = make_plan(_to_f64(model), jax.ShapeDtypeStruct(X.shape, jnp.float64), None)
    for name, value in (("rtol", rtol), ("fd_rtol", fd_rtol)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"`{name}` must be a non-negative number, got {value!r}.")
    supported = tuple(
        name for name, cls in MODES.items() if plan.chain is not None or not cls.needs_chain
    )
    if modes is None:
        modes = supported
    for m in modes:
        check_choice(m, "modes[i]", supported)
    check_choice(loss, "loss", tuple(_KERNEL_LOSS_GRADS))

    with jax.enable_x64(True):
        model64 = _to_f64(model)
        X64 = jnp.asarray(np.asarray(X, dtype=np.float64))
        results = {m: input_jacobian(model64, X64, mode=m) for m in modes}
        if finite_differences:
            results["fd"] = finite_difference_jacobian(model64, X64)
        comparisons = []
        for a, b in itertools.combinations(results, 2):
            tol = fd_rtol if "fd" in (a, b) else rtol
            comparisons.append(_compare("input_jacobian", a, b, results[a], results[b], tol))
        if Y is not None:
            if plan.chain is None:
                raise ValueError(
                    "`Y` was given, but the parameter-gradient check needs a model with a "
                    "readable layer chain for the hand-written kernel."
                )
            Y64 = jnp.asarray(Y)
            if jnp.issubdtype(Y64.dtype, jnp.floating):
                Y64 = Y64.astype(jnp.float64)
            auto = weight_grad(model64, loss, X64, Y64)
            kern = backprop.weight_grads(model64, _KERNEL_LOSS_GRADS[loss], X64, Y64)
            la, lk = jax.tree.leaves(auto), jax.tree.leaves(kern)
            flat_a = np.concatenate([np.ravel(x) for x in la])
            flat_k = np.concatenate([np.ravel(x) for x in lk])
            comparisons.append(
                _compare("weight_grad", "autodiff", "backprop", flat_a, flat_k, rtol)
            )
    report = CrosscheckReport(tuple(comparisons), tuple(results))
    if strict and not report.passed:
        raise CrosscheckError("jacsens.crosscheck found disagreements:\n" + str(report))
    return report
