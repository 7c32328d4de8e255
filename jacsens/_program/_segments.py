"""The batched executor of a segment chain's bracketing (see `_bracket.py` for the plans
and the dynamic programme that chooses one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._bracket import Bracketing, Materialise, Node, Push, Split
from ._trace import Program, param_env, range_function

# ---------------------------------------------------------------------------------------
# Executor
# ---------------------------------------------------------------------------------------


def _as_dense(J: Array, kind: str) -> Array:
    return jnp.diag(J) if kind == "diag" else J


def segments_jacobian(
    program: Program, bracketing: Bracketing, leaves: Sequence[Array], X: Any
) -> Float[Array, "batch out in"]:
    """Per-sample Jacobians of the program by the plan `bracketing`.

    Runs the plan for one sample under `vmap` over the batch: materialised factors come
    from `vmap(jvp)` over identity columns or `vmap(vjp)` over identity rows, matrix-free
    applications push a factor's columns by `vmap(jvp)` or pull its rows by `vmap(vjp)`;
    the primal values at the cuts are computed once, along the plan. Jit-able with
    `program` and `bracketing` static and `leaves`, `X` traced.

    **Arguments:**

    - `program`: from `trace_program`.
    - `bracketing`: from `plan_bracketing` (or `all_bracketings`) for this program.
    - `leaves`: the model's current array leaves (`model_leaves(model)`).
    - `X`: a batch of inputs, `(B, *in_shape)` (or a pytree of such leaves).

    **Returns:**

    An array `(B, out_width, in_width)` of `program.dtype`: output and input flattened
    (pytree leaves concatenated in order); the caller reshapes.

    **Raises:**

    `ValueError` naming `X`, `leaves` or `bracketing` if they do not fit the program.
    """
    if bracketing.n_segments != len(program.segments):
        raise ValueError(
            f"bracketing: made for {bracketing.n_segments} segments, the program has "
            f"{len(program.segments)}."
        )
    x_leaves = jax.tree.leaves(X)
    expected = jax.tree.leaves(program.in_struct)
    if jax.tree.structure(X) != jax.tree.structure(program.in_struct) or any(
        x.ndim != len(e.shape) + 1 or tuple(x.shape[1:]) != tuple(e.shape)
        for x, e in zip(x_leaves, expected, strict=True)
    ):
        got = [tuple(x.shape) for x in x_leaves]
        want = [("B", *e.shape) for e in expected]
        raise ValueError(f"X: expected a batch of shape(s) {want}, got {got}.")
    B = x_leaves[0].shape[0]
    if any(x.shape[0] != B for x in x_leaves):
        raise ValueError(f"X: leaves have different batch sizes {[x.shape[0] for x in x_leaves]}.")
    dtype = program.dtype
    n, m_live = program.in_width, program.widths[-1]
    if m_live == 0 or n == 0:
        return jnp.zeros((B, program.out_width, n), dtype)

    params = param_env(program, leaves)
    fns: dict[tuple[int, int], Callable] = {}

    def fn(a: int, b: int) -> Callable:
        if (a, b) not in fns:
            fns[(a, b)] = range_function(program, a, b, params)
        return fns[(a, b)]

    def width(c: int) -> int:
        segs = program.segments
        return segs[0].info.in_width if c == 0 else segs[c - 1].info.out_width

    def push(f: Callable, z: Array, T: Array) -> tuple[tuple[Array, tuple], Array]:
        """`f(z)` and `∂f(z) · T` for the columns of `T`."""

        def one(t: Array) -> tuple[tuple[Array, tuple], Array]:
            primal, (dy, _) = jax.jvp(f, (z,), (t,))
            return primal, dy

        return jax.vmap(one, in_axes=1, out_axes=(None, 1))(T)

    def run(node: Node, z: Array, aux: tuple) -> tuple[Array, tuple, Array, str]:
        """`(primal at the node's end, aux there, J_{i..j}, kind)` for one sample."""
        if isinstance(node, Materialise):
            f = fn(node.i, node.j)

            def g(v: Array) -> tuple[Array, tuple]:
                return f(v, aux)

            if node.how == "rev":
                y, pull_back, a = jax.vjp(g, z, has_aux=True)
                (J,) = jax.vmap(pull_back)(jnp.eye(width(node.j), dtype=dtype))
                return y, a, J, "dense"
            if node.how == "fwd":
                (y, a), J = push(g, z, jnp.eye(width(node.i), dtype=dtype))
                return y, a, J, "dense"
            (y, a), (d, _) = jax.jvp(g, (z,), (jnp.ones_like(z),))
            return y, a, d, "diag"
        if isinstance(node, Split):
            zk, ak, R, rk = run(node.right, z, aux)
            y, a, L, lk = run(node.left, zk, ak)
            if lk == rk == "diag":
                return y, a, L * R, "diag"
            if lk == "diag":
                return y, a, L[:, None] * R, "dense"
            if rk == "diag":
                return y, a, L * R[None, :], "dense"
            return y, a, L @ R, "dense"
        if isinstance(node, Push):
            zk, ak, R, rk = run(node.right, z, aux)
            f = fn(node.k, node.j)
            (y, a), J = push(lambda v: f(v, ak), zk, _as_dense(R, rk))
            return y, a, J, "dense"
        f = fn(node.i, node.k)
        zk, pull_back, ak = jax.vjp(lambda v: f(v, aux), z, has_aux=True)
        y, a, L, lk = run(node.left, zk, ak)
        (J,) = jax.vmap(pull_back)(_as_dense(L, lk))
        return y, a, J, "dense"

    def per_sample(x: Array) -> Array:
        _, _, J, kind = run(bracketing.tree, x, ())
        return _as_dense(J, kind)

    Xv = jnp.concatenate([x.reshape(B, -1).astype(dtype) for x in x_leaves], axis=1)
    J = jax.vmap(per_sample)(Xv)
    return _assemble(program, J)


def _assemble(program: Program, J: Array) -> Array:
    """Rows of the output leaves from the rows of the live outputs (zeros where an output
    does not depend on the input; a repeated output repeats its rows)."""
    sizes = [math.prod(o.shape) for o in jax.tree.leaves(program.out_struct)]
    offsets = program.out_rows
    if offsets == (0,) and sizes[0] == J.shape[1]:
        return J
    B, _, n = J.shape
    pieces = [
        jnp.zeros((B, s, n), J.dtype) if o is None else J[:, o : o + s]
        for o, s in zip(offsets, sizes, strict=True)
    ]
    return jnp.concatenate(pieces, axis=1)
