"""Evaluate a jaxpr with NumPy, for small one-off checks.

The chain check (`_chain._verify`) runs a model and its layer chain once, on one random
sample. Compiling that with XLA costs most of a second on a cold start; evaluating it
eagerly with JAX compiles every operation on its own (seconds). NumPy evaluates the traced
program in milliseconds. Only the primitives dense layers, elementwise activations and
their glue use are covered; `Unsupported` tells the caller to fall back to XLA.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Unsupported(Exception):
    """The jaxpr uses a primitive this evaluator does not implement."""


def _erf(x):
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - scipy is optional
        raise Unsupported("erf") from None
    return erf(x)


def _broadcast_in_dim(x, *, shape, broadcast_dimensions, **_):
    expanded = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        expanded[d] = x.shape[i]
    return np.broadcast_to(np.reshape(x, expanded), shape)


def _dot_general(a, b, *, dimension_numbers, preferred_element_type=None, **_):
    (lc, rc), (lb, rb) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    la = [next(letters) for _ in range(a.ndim)]
    lbs = [next(letters) for _ in range(b.ndim)]
    for i, j in zip(lc, rc, strict=True):
        lbs[j] = la[i]
    for i, j in zip(lb, rb, strict=True):
        lbs[j] = la[i]
    batch = [la[i] for i in lb]
    free_a = [la[i] for i in range(a.ndim) if i not in lc and i not in lb]
    free_b = [lbs[j] for j in range(b.ndim) if j not in rc and j not in rb]
    out = "".join(batch + free_a + free_b)
    res = np.einsum(f"{''.join(la)},{''.join(lbs)}->{out}", a, b)
    return res if preferred_element_type is None else res.astype(preferred_element_type)


def _reduce(fn):
    return lambda x, *, axes, **_: fn(x, axis=tuple(axes))


_UNARY = {
    "neg": np.negative,
    "tanh": np.tanh,
    "exp": np.exp,
    "exp2": np.exp2,
    "log": np.log,
    "log1p": np.log1p,
    "expm1": np.expm1,
    "logistic": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "sin": np.sin,
    "cos": np.cos,
    "abs": np.abs,
    "sign": np.sign,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "square": np.square,
    "erf": _erf,
    "not": np.logical_not,
    "stop_gradient": lambda x: x,
}
_BINARY = {
    "add": np.add,
    "add_any": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.maximum,
    "min": np.minimum,
    "pow": np.power,
    "gt": np.greater,
    "ge": np.greater_equal,
    "lt": np.less,
    "le": np.less_equal,
    "eq": np.equal,
    "ne": np.not_equal,
    "and": np.logical_and,
    "or": np.logical_or,
}
_WITH_PARAMS = {
    "integer_pow": lambda x, *, y: x**y,
    "convert_element_type": lambda x, *, new_dtype, **_: np.asarray(x).astype(new_dtype),
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": lambda x, *, new_sizes, **_: np.reshape(x, new_sizes),
    "squeeze": lambda x, *, dimensions: np.squeeze(x, tuple(dimensions)),
    "expand_dims": lambda x, *, dimensions: np.expand_dims(x, tuple(dimensions)),
    "transpose": lambda x, *, permutation: np.transpose(x, permutation),
    "dot_general": _dot_general,
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "select_n": lambda pred, *cases: np.choose(np.asarray(pred, np.int64), cases),
    "slice": lambda x, *, start_indices, limit_indices, strides=None: x[
        tuple(
            slice(a, b, c)
            for a, b, c in zip(
                start_indices, limit_indices, strides or (1,) * len(start_indices), strict=True
            )
        )
    ],
    "concatenate": lambda *xs, dimension: np.concatenate(xs, axis=dimension),
    "copy": lambda x: np.copy(x),
    "copy_p": lambda x: np.copy(x),
}
# Primitives holding a jaxpr that is simply called (nested jit, custom rules' primal).
_CALLS = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}


def _literal(v: Any) -> bool:
    return hasattr(v, "val") and not hasattr(v, "count")


def eval_jaxpr(jaxpr: Any, consts: list[Any], *args: Any) -> list[Any]:
    """The outputs of `jaxpr` on NumPy `args`; raises `Unsupported` where it cannot."""
    env: dict[Any, Any] = {}

    def read(v):
        return np.asarray(v.val) if _literal(v) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = np.asarray(c)
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = np.asarray(a)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        invals = [read(v) for v in eqn.invars]
        params = dict(eqn.params)
        if name in _CALLS:
            sub = params.get(_CALLS[name])
            if sub is None:
                raise Unsupported(name)
            inner = getattr(sub, "jaxpr", sub)
            outs = eval_jaxpr(inner, list(getattr(sub, "consts", [])), *invals)
        elif name in _UNARY:
            outs = [_UNARY[name](*invals)]
        elif name in _BINARY:
            outs = [_BINARY[name](*invals)]
        elif name in _WITH_PARAMS:
            try:
                outs = [_WITH_PARAMS[name](*invals, **params)]
            except TypeError as e:  # parameters of another JAX version
                raise Unsupported(f"{name}: {e}") from None
        else:
            raise Unsupported(name)
        for v, val in zip(eqn.outvars, outs, strict=True):
            env[v] = np.asarray(val)
    return [read(v) for v in jaxpr.outvars]


def evaluate(fn: Any, *args: Any) -> list[Any]:
    """Trace `fn(*args)` and evaluate it with NumPy; `Unsupported` where it cannot."""
    import jax

    closed = jax.make_jaxpr(fn)(*args)
    return eval_jaxpr(closed.jaxpr, list(closed.consts), *jax.tree.leaves(args))
