"""The program view of a model: one sample's jaxpr, its live-width profile, cuts, segments.

For one sample `f: R^n → R^m`, the jaxpr's top-level equations are in topological order.
Between two equations, the *live width* is the total size of the floating-point values that
depend on the input, are already defined and are still used later: the width a Jacobian
must carry across that point (`n` at the start, `m` at the end). Where the width dips well
below `min(n, m)` (an encoder's latent, a bottleneck), the program splits into segments and
`J = J_K ⋯ J_1`; `_segments.py` chooses how to multiply the factors.

The model's arrays are *inputs* of the traced jaxpr (the array leaves of
`eqx.partition(model, eqx.is_array)`), so one `Program` serves every model of the same
structure and input shape, also inside `jit` where the weights are tracers; constants
created inside the model body stay as jaxpr constants. Equations that do not depend on the
input (weights reshaped or normalised inside the model) are *parameter equations*: the
executor evaluates them once per batch, outside the per-sample map.

Higher-order primitives (`scan`, `while`, `cond`, `jit`, `custom_jvp_call`,
`custom_vjp_call`, `checkpoint`, ...) are single top-level equations and are never inlined,
so no cut falls inside them; JAX differentiates them as usual.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from ._bracket import prune_cuts

Var = Any  # jax.extend.core.Var (kept loose: the type moved between JAX versions)

# Elementwise primitives (the output element i depends on operand elements i only): a run
# of them on one input-dependent value has a diagonal Jacobian.
_ELEMENTWISE = frozenset(
    """abs acos acosh add add_any asin asinh atan atan2 atanh cbrt ceil clamp
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2
    expm1 floor ge gt igamma integer_pow is_finite le lgamma log log1p logistic lt max min
    mul ne neg nextafter not pow real reduce_precision rem round rsqrt select_n sign sin
    sinh sqrt square stop_gradient sub tan tanh and or xor""".split()
)
# Primitives linear in their input-dependent operands whatever they are (structural moves,
# sums); a segment of these (and of the `_LINEAR_IN_ONE` below) has an input-independent
# Jacobian, which vmap computes once for the whole batch.
_LINEAR = frozenset(
    """add add_any sub neg reshape transpose broadcast_in_dim squeeze expand_dims slice
    concatenate reduce_sum copy copy_p rev pad cumsum real imag
    convert_element_type reduce_precision""".split()
)
# Linear when exactly one operand depends on the input (a product with a weight).
_LINEAR_IN_ONE = frozenset({"mul", "dot_general", "conv_general_dilated"})
# Primitives whose cost is a pass over their input (reductions, scans of an axis).
_REDUCTIONS = frozenset(
    """reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin
    cumsum cumprod cummax cummin cumlogsumexp reduce_precision""".split()
)
# Structural primitives: no arithmetic, only data movement.
_MOVES = frozenset(
    """reshape transpose broadcast_in_dim squeeze expand_dims slice concatenate pad rev
    gather dynamic_slice dynamic_update_slice scatter scatter-add copy copy_p iota
    convert_element_type select_and_gather_add""".split()
)
# Kernels that are not fused into their neighbours (each costs a launch / loop overhead).
_HEAVY = frozenset(
    """dot_general conv_general_dilated reduce_sum reduce_max reduce_min reduce_prod argmax
    argmin cumsum cumprod cummax cummin gather scatter scatter-add sort reduce_window_sum
    reduce_window_max reduce_window reduce_window_min select_and_scatter_add fft
    dynamic_update_slice""".split()
)


class TraceError(ValueError):
    """Raised when a model cannot be traced into a program (a `ValueError`)."""


@dataclasses.dataclass(frozen=True)
class SegmentInfo:
    """What the bracketing needs to know about a segment (or a run of them), per sample.

    **Fields:**

    - `in_width`, `out_width`: sizes of the live input-dependent values at its start / end.
    - `flops`: forward FLOPs, counted from the jaxpr (see `trace_program`).
    - `act_elems`: elements of input-dependent values read and written by its equations.
    - `param_elems`: elements of input-independent operands (weights) its equations read.
    - `ops`: kernels that XLA does not fuse (dot, conv, reduction, gather, loop bodies ×
        trip count); elementwise runs count as one.
    - `max_width`: the largest live width inside it (the widest tangent block a sweep holds).
    - `diagonal`: its Jacobian is diagonal (elementwise operations on one value).
    - `affine`: its Jacobian does not depend on the input (linear layers, convolutions,
        reshapes, sums).
    - `fwd_ok`, `rev_ok`: forward (JVP) and reverse (VJP) mode apply: `custom_vjp` rules
        have no JVP, `while` loops have no VJP.
    """

    in_width: int
    out_width: int
    flops: float
    act_elems: float
    param_elems: float
    ops: float
    max_width: int
    diagonal: bool = False
    affine: bool = False
    fwd_ok: bool = True
    rev_ok: bool = True


@dataclasses.dataclass(frozen=True, eq=False)
class Segment:
    """A run of top-level equations `eqns[start:stop]` of a program, with the live
    input-dependent values at its start (`in_vars`, floating point, flattened into one
    vector of `in_width` entries; `in_aux`, integer/boolean values that carry no
    derivative) and at its end (`out_vars`, `out_aux`)."""

    index: int  # 1-based, as in `describe()`: S1, S2, ...
    start: int
    stop: int
    in_vars: tuple[Var, ...]
    in_aux: tuple[Var, ...]
    out_vars: tuple[Var, ...]
    out_aux: tuple[Var, ...]
    info: SegmentInfo


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """One sample's program, cut into segments. Hashed by identity: a static value under
    `jit`, built once per (model structure, input shape and dtype) by the caller.

    It holds no array of the model: the executor takes the current array leaves
    (`model_leaves(model)`) as an argument.

    **Fields:**

    - `jaxpr`, `consts`: the traced jaxpr of `(leaves, x) -> model(x)` and its constants.
    - `n_leaves`: how many array leaves the model has (the jaxpr's first inputs).
    - `param_eqns`: equations that do not depend on the input, in order.
    - `eqns`: the input-dependent equations, in order; positions `0..len(eqns)` lie
        between them.
    - `in_struct`, `out_struct`: one sample's input / output, as pytrees of
        `jax.ShapeDtypeStruct`.
    - `in_width`, `out_width`: `n` and `m`, the flattened sizes.
    - `dtype`: the dtype of the Jacobian (the promoted input/output floating dtype).
    - `widths`: the live width at each position `0..len(eqns)`.
    - `candidates`: positions that are local minima of the width below `min(n, m)`.
    - `segments`: the segments between the chosen cuts.
    - `out_rows`: per output leaf, its offset in the last segment's output vector, or
        `None` where the output does not depend on the input (zero rows).
    """

    jaxpr: Any
    consts: tuple[Any, ...]
    n_leaves: int
    param_eqns: tuple[Any, ...]
    eqns: tuple[Any, ...]
    in_vars: tuple[Var, ...]
    in_struct: Any
    out_struct: Any
    in_width: int
    out_width: int
    dtype: Any
    widths: tuple[int, ...]
    candidates: tuple[int, ...]
    segments: tuple[Segment, ...]
    out_rows: tuple[int | None, ...]

    @property
    def cuts(self) -> tuple[int, ...]:
        """Positions of the cuts between segments."""
        return tuple(s.start for s in self.segments[1:])

    @property
    def infos(self) -> tuple[SegmentInfo, ...]:
        return tuple(s.info for s in self.segments)

    def describe(self) -> str:
        """A table of the segments: equations, widths, FLOPs and their structure."""
        rows = [
            f"program: in {self.in_width}, out {self.out_width}, {len(self.eqns)} "
            f"input-dependent equations, {len(self.segments)} segment(s)",
            f"{'seg':<5}{'eqns':>11}{'in':>9}{'out':>9}{'MFLOP':>11}  kind",
        ]
        for s in self.segments:
            i = s.info
            kind = "diagonal" if i.diagonal else "affine" if i.affine else "general"
            notes = ([] if i.fwd_ok else ["no jvp"]) + ([] if i.rev_ok else ["no vjp"])
            kind += f" ({', '.join(notes)})" if notes else ""
            rows.append(
                f"S{s.index:<4}{f'{s.start}:{s.stop}':>11}{i.in_width:>9}{i.out_width:>9}"
                f"{i.flops / 1e6:>11.4g}  {kind}"
            )
        return "\n".join(rows)


def model_leaves(model: Any) -> list[Any]:
    """The array leaves of `model`, in the order a `Program` of it expects them."""
    return jax.tree.leaves(eqx.filter(model, eqx.is_array))


# ---------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------

_UNTRACEABLE = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
    jax.errors.NonConcreteBooleanIndexError,
)


def _is_leaf_array(x: Any) -> bool:
    # a skeleton's ShapeDtypeStructs (`eqx.filter_eval_shape`) stand for the arrays
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _size(aval: Any) -> int:
    return math.prod(aval.shape)


def _is_float(aval: Any) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.floating)


def _is_literal(v: Any) -> bool:
    return isinstance(v, jex.core.Literal)


def _is_drop(v: Any) -> bool:
    return isinstance(v, jex.core.DropVar)


def trace_program(
    model: Callable[..., Any],
    x_struct: Any,
    *,
    cuts: Literal["auto", "candidates"] | Sequence[int] = "auto",
    device: Any = None,
) -> Program:
    """Trace one sample of `model` into a `Program` cut into segments.

    The live-width profile is taken between the top-level input-dependent equations.
    Candidate cuts are its local minima (a plateau counts by both its ends) strictly below
    `min(n, m)`; at most 12, the narrowest. With `cuts="auto"` they are then pruned with the
    bracketing cost model (`_bracket.prune_cuts`, batch of 32 on `device`): a cut that no
    optimal bracketing uses, or whose removal costs less than 2% of the estimated time, is
    dropped, so a model without a useful narrow point is one segment.

    FLOPs are counted from the jaxpr (2 per multiply-add of `dot_general` and
    `conv_general_dilated`, 1 per output element of elementwise operations, 1 per input
    element of reductions; `scan` bodies × length, `cond` its dearest branch, `while`
    bodies once since the trip count is unknown): it needs no compilation, so it is cheap
    enough to run on every new shape, and it is exact for the dense kernels that dominate.
    XLA's cost analysis would need each candidate segment lowered and compiled.

    **Arguments:**

    - `model`: a callable on one sample, usually an `eqx.Module` (its arrays may be
        `jax.ShapeDtypeStruct`s, as from `eqx.filter_eval_shape`: only shapes are read).
    - `x_struct`: one sample's input: a `jax.ShapeDtypeStruct` or array (or a pytree of
        them), floating point.
    - `cuts`: `"auto"` (pruned candidates), `"candidates"` (every candidate), or explicit
        positions in `0 < p < len(program.eqns)`.
    - `device`: a device model (`peak_flops`, `bandwidth`, `op_overhead`,
        `fwd_efficiency`) for pruning; `None` for the default backend's.

    **Returns:**

    A `Program`.

    **Raises:**

    `ValueError` naming `model` if it cannot be traced (Python control flow on values,
    data-dependent shapes) or its output is not floating point; `ValueError` naming
    `x_struct` if the input is not floating point; `ValueError` naming `cuts` for
    positions outside the program.
    """
    x_leaves, in_tree = jax.tree.flatten(x_struct)
    if not x_leaves:
        raise ValueError("x_struct: expected an array or a pytree of arrays, got no leaves.")
    x_structs = []
    for leaf in x_leaves:
        shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        if shape is None or dtype is None:
            raise ValueError(f"x_struct: expected ShapeDtypeStructs or arrays, got {leaf!r}.")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"x_struct: expected a floating dtype, got {jnp.dtype(dtype)}.")
        x_structs.append(jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype)))
    x_tree = jax.tree.unflatten(in_tree, x_structs)

    params, static = eqx.partition(model, _is_leaf_array)
    leaves, leaf_tree = jax.tree.flatten(params)
    leaf_structs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]

    def call(leaves, x):
        return eqx.combine(jax.tree.unflatten(leaf_tree, leaves), static)(x)

    try:
        closed, out_shape = jax.make_jaxpr(call, return_shape=True)(leaf_structs, x_tree)
    except _UNTRACEABLE as e:
        raise ValueError(
            "model: cannot be traced into one program (Python control flow on values or "
            f"data-dependent shapes); use jax.lax.cond / jnp.where instead. JAX said: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    out_leaves = jax.tree.leaves(out_shape)
    for o in out_leaves:
        if not jnp.issubdtype(o.dtype, jnp.floating):
            raise ValueError(f"model: expected floating outputs, got {jnp.dtype(o.dtype)}.")
    if not out_leaves:
        raise ValueError("model: expected an array output, got no arrays.")

    jaxpr = closed.jaxpr
    n_leaves = len(leaves)
    in_vars = tuple(jaxpr.invars[n_leaves:])
    dtype = jnp.result_type(*[s.dtype for s in x_structs], *[o.dtype for o in out_leaves])

    dep: set[Var] = set(in_vars)
    param_eqns, eqns = [], []
    for e in jaxpr.eqns:
        if any(not _is_literal(v) and v in dep for v in e.invars):
            eqns.append(e)
            dep.update(v for v in e.outvars if not _is_drop(v))
        else:
            param_eqns.append(e)

    E = len(eqns)
    # last_use[v] = position of the last equation reading v (E for outputs); def_pos[v]
    # = the position right after the equation defining it (0 for inputs).
    def_pos: dict[Var, int] = {v: 0 for v in in_vars}
    last_use: dict[Var, int] = {}
    for i, e in enumerate(eqns):
        for v in e.invars:
            if not _is_literal(v) and v in dep:
                last_use[v] = i
        for v in e.outvars:
            if not _is_drop(v):
                def_pos[v] = i + 1
    out_dep: list[Var] = []
    out_rows: list[int | None] = []
    offset = 0
    offsets: dict[Var, int] = {}
    for v in jaxpr.outvars:
        if _is_literal(v) or v not in dep:
            out_rows.append(None)
            continue
        last_use[v] = E
        if v not in offsets:
            offsets[v] = offset
            out_dep.append(v)
            offset += _size(v.aval)
        out_rows.append(offsets[v])

    widths, blocked = _profile(def_pos, last_use, E)
    n = sum(_size(s) for s in x_structs)
    m = sum(_size(o) for o in out_leaves)
    widths[0], widths[E] = n, offset
    candidates = _candidates(widths, blocked, min(n, m))

    base = dict(
        jaxpr=jaxpr,
        consts=tuple(closed.consts),
        n_leaves=n_leaves,
        param_eqns=tuple(param_eqns),
        eqns=tuple(eqns),
        in_vars=in_vars,
        in_struct=x_tree,
        out_struct=jax.tree.map(lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype), out_shape),
        in_width=n,
        out_width=m,
        dtype=jnp.dtype(dtype),
        widths=tuple(widths),
        candidates=tuple(candidates),
        out_rows=tuple(out_rows),
    )
    ctx = _Context(eqns, in_vars, tuple(out_dep), def_pos, last_use, dep, widths)

    if isinstance(cuts, str):
        if cuts not in ("auto", "candidates"):
            raise ValueError(f"cuts: expected 'auto', 'candidates' or positions, got {cuts!r}.")
        positions = list(candidates)
        if cuts == "auto" and positions:
            positions = list(prune_cuts(lambda ps: ctx.infos(ps), positions, device))
    else:
        positions = sorted({int(p) for p in cuts})
        bad = [p for p in positions if not 0 < p < E or blocked[p]]
        if bad:
            raise ValueError(
                f"cuts: expected positions strictly between 0 and {E} where no complex "
                f"value is live, got {bad}."
            )
    return Program(segments=ctx.segments(positions), **base)


def _profile(
    def_pos: dict[Var, int], last_use: dict[Var, int], E: int
) -> tuple[list[int], list[bool]]:
    """Live width at each position `0..E`, and whether a non-float inexact (complex)
    value is live there (no cut: it cannot join the real Jacobian vector)."""
    diff = np.zeros(E + 2, dtype=np.int64)
    block = np.zeros(E + 2, dtype=np.int64)
    for v, u in last_use.items():
        d = def_pos[v]
        if u < d:
            continue
        if _is_float(v.aval):
            diff[d] += _size(v.aval)
            diff[u + 1] -= _size(v.aval)
        elif jnp.issubdtype(v.aval.dtype, jnp.inexact):
            block[d] += 1
            block[u + 1] -= 1
    return np.cumsum(diff)[: E + 1].tolist(), (np.cumsum(block)[: E + 1] > 0).tolist()


MAX_CANDIDATES = 12


def _candidates(widths: list[int], blocked: list[bool], limit: int) -> list[int]:
    """Local minima of the width strictly below `limit`: for each plateau lower than both
    neighbours, its first and last position (the run between them is often an activation,
    a diagonal segment of its own). At most `MAX_CANDIDATES`, the narrowest."""
    E = len(widths) - 1
    found: list[int] = []
    p = 1
    while p < E:
        q = p
        while q + 1 < E and widths[q + 1] == widths[p]:
            q += 1
        w = widths[p]
        if w < limit and widths[p - 1] > w and widths[q + 1] > w:
            found.extend(x for x in {p, q} if not blocked[x])
        p = q + 1
    found = sorted(set(found), key=lambda x: (widths[x], x))[:MAX_CANDIDATES]
    return sorted(found)


@dataclasses.dataclass
class _Context:
    """Everything needed to build segments between arbitrary cut positions."""

    eqns: list[Any]
    in_vars: tuple[Var, ...]
    out_dep: tuple[Var, ...]
    def_pos: dict[Var, int]
    last_use: dict[Var, int]
    dep: set[Var]
    widths: list[int]
    # pruning asks for the same segments under many cut sets
    _infos: dict[tuple[int, int], SegmentInfo] = dataclasses.field(default_factory=dict)

    def live(self, p: int) -> tuple[tuple[Var, ...], tuple[Var, ...]]:
        """The float and the non-float input-dependent values live at position `p`
        (`0 < p < E`), in order of definition."""
        live = [v for v, u in self.last_use.items() if self.def_pos[v] <= p <= u]
        live.sort(key=lambda v: self.def_pos[v])
        return (
            tuple(v for v in live if _is_float(v.aval)),
            tuple(v for v in live if not _is_float(v.aval)),
        )

    def live_in(self, p: int) -> tuple[tuple[Var, ...], tuple[Var, ...]]:
        """Live values entering a segment that starts at `p`: all inputs at the start."""
        return (self.in_vars, ()) if p == 0 else self.live(p)

    def live_out(self, p: int) -> tuple[tuple[Var, ...], tuple[Var, ...]]:
        """Live values leaving a segment that stops at `p`: the outputs at the end."""
        return (self.out_dep, ()) if p == len(self.eqns) else self.live(p)

    def info(self, a: int, b: int) -> SegmentInfo:
        if (a, b) not in self._infos:
            ins, _ = self.live_in(a)
            outs, _ = self.live_out(b)
            self._infos[(a, b)] = _segment_info(
                self.eqns[a:b], ins, outs, self.dep, self.widths[a : b + 1]
            )
        return self._infos[(a, b)]

    def infos(self, positions: Sequence[int]) -> tuple[SegmentInfo, ...]:
        bounds = [0, *positions, len(self.eqns)]
        return tuple(self.info(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True))

    def segments(self, positions: Sequence[int]) -> tuple[Segment, ...]:
        bounds = [0, *positions, len(self.eqns)]
        segs = []
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            ins, in_aux = self.live_in(a)
            outs, out_aux = self.live_out(b)
            segs.append(Segment(k + 1, a, b, ins, in_aux, outs, out_aux, self.info(a, b)))
        return tuple(segs)


# ---------------------------------------------------------------------------------------
# Per-segment analysis: FLOPs, bytes, structure
# ---------------------------------------------------------------------------------------


def _subjaxprs(eqn: Any) -> list[Any]:
    return list(jex.core.jaxprs_in_params(eqn.params))


def _eqn_flops(eqn: Any) -> float:
    name = eqn.primitive.name
    outs = [v.aval for v in eqn.outvars if hasattr(v.aval, "shape")]
    out_size = float(sum(_size(a) for a in outs))
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        return 2.0 * out_size * math.prod(lhs.shape[d] for d in lc)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval
        out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
        return 2.0 * out_size * _size(rhs) / max(rhs.shape[out_feature_dim], 1)
    if name == "scan":
        return eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
    if name == "cond":
        return max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
    subs = _subjaxprs(eqn)
    if subs:
        return sum(_jaxpr_flops(j) for j in subs)
    if name in _REDUCTIONS or name.startswith("reduce_window"):
        return float(sum(_size(v.aval) for v in eqn.invars if hasattr(v.aval, "shape")))
    if name in _MOVES:
        return 0.0
    return out_size


def _jaxpr_flops(jaxpr: Any) -> float:
    return sum(_eqn_flops(e) for e in jaxpr.eqns)


def _eqn_ops(eqn: Any) -> float:
    name = eqn.primitive.name
    if name == "scan":
        return eqn.params["length"] * (1.0 + _jaxpr_ops(eqn.params["jaxpr"].jaxpr))
    if name == "cond":
        return 1.0 + max(_jaxpr_ops(b.jaxpr) for b in eqn.params["branches"])
    if name == "while":
        return 1.0 + sum(_jaxpr_ops(j) for j in _subjaxprs(eqn))
    subs = _subjaxprs(eqn)
    if subs:
        return sum(_jaxpr_ops(j) for j in subs)
    return 1.0 if name in _HEAVY else 0.0


def _jaxpr_ops(jaxpr: Any) -> float:
    return sum(_eqn_ops(e) for e in jaxpr.eqns)


def _walk(jaxpr: Any):
    for e in jaxpr.eqns:
        yield e
        for j in _subjaxprs(e):
            yield from _walk(j)


def _elementwise_jaxpr(jaxpr: Any, shape: tuple[int, ...]) -> bool:
    """Every equation of a nested jaxpr is elementwise over `shape` (or a scalar)."""
    for e in jaxpr.eqns:
        if not _elementwise_eqn(e, shape, None):
            return False
    return True


def _elementwise_eqn(eqn: Any, shape: tuple[int, ...], dep: set[Var] | None) -> bool:
    """The equation maps its input-dependent operands of `shape` elementwise to outputs
    of `shape` (operands that do not depend on the input may be scalars or of `shape`)."""
    for v in eqn.outvars:
        if not _is_drop(v) and tuple(v.aval.shape) != shape:
            return False
    for v in eqn.invars:
        s = tuple(getattr(v.aval, "shape", ()))
        is_dep = dep is None or (not _is_literal(v) and v in dep)
        if s != shape and (is_dep or s != ()):
            return False
    name = eqn.primitive.name
    if name in _ELEMENTWISE:
        return True
    if name in ("custom_jvp_call", "custom_vjp_call", "jit", "pjit", "closed_call", "checkpoint"):
        return all(_elementwise_jaxpr(j, shape) for j in _subjaxprs(eqn))
    return False


def _affine_eqn(eqn: Any, dep: set[Var]) -> bool:
    name = eqn.primitive.name
    dep_in = [i for i, v in enumerate(eqn.invars) if not _is_literal(v) and v in dep]
    if any(not _is_float(v.aval) for v in eqn.outvars if not _is_drop(v)):
        return False
    if name in _LINEAR:
        return True
    if name in _LINEAR_IN_ONE:
        return len(dep_in) == 1
    if name == "div":
        return dep_in == [0]
    if name == "select_n":
        return 0 not in dep_in
    if name in ("dynamic_slice", "gather"):
        return dep_in == [0]
    if name in ("jit", "pjit", "closed_call"):
        inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        inner = getattr(inner, "jaxpr", inner)
        if inner is None:
            return False
        inner_dep = {inner.invars[i] for i in dep_in}
        for e in inner.eqns:
            if any(not _is_literal(v) and v in inner_dep for v in e.invars):
                if not _affine_eqn(e, inner_dep):
                    return False
                inner_dep.update(v for v in e.outvars if not _is_drop(v))
        return True
    return False


def _segment_info(
    eqns: Sequence[Any],
    ins: tuple[Var, ...],
    outs: tuple[Var, ...],
    dep: set[Var],
    widths: Sequence[int],
) -> SegmentInfo:
    flops = act = param = ops = 0.0
    fwd_ok = rev_ok = True
    for e in eqns:
        flops += _eqn_flops(e)
        ops += _eqn_ops(e)
        for v in (*e.invars, *e.outvars):
            if _is_literal(v) or _is_drop(v) or not hasattr(v.aval, "shape"):
                continue
            if v in dep:
                act += _size(v.aval)
            else:
                param += _size(v.aval)
        for inner in (e, *(x for j in _subjaxprs(e) for x in _walk(j))):
            name = inner.primitive.name
            if name.startswith("custom_vjp_call"):
                fwd_ok = False
            if name == "while":
                rev_ok = False
    in_width = sum(_size(v.aval) for v in ins)
    out_width = sum(_size(v.aval) for v in outs)
    diagonal = (
        len(ins) == 1
        and len(outs) == 1
        and tuple(ins[0].aval.shape) == tuple(outs[0].aval.shape)
        and all(_elementwise_eqn(e, tuple(ins[0].aval.shape), dep) for e in eqns)
    )
    affine = all(_affine_eqn(e, dep) for e in eqns)
    return SegmentInfo(
        in_width=in_width,
        out_width=out_width,
        flops=flops,
        act_elems=act,
        param_elems=param,
        ops=max(ops, 1.0),
        max_width=max(widths) if len(widths) else max(in_width, out_width),
        diagonal=diagonal,
        affine=affine,
        fwd_ok=fwd_ok,
        rev_ok=rev_ok,
    )


# ---------------------------------------------------------------------------------------
# Interpretation
# ---------------------------------------------------------------------------------------


def _bind(eqn: Any, invals: list[Any]) -> list[Any]:
    """Apply one equation like `jax.core.eval_jaxpr` does (higher-order primitives
    included), so that jvp, vjp, vmap and jit trace through it."""
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
        invals = [*subfuns, *invals]
    with eqn.ctx.manager:
        ans = eqn.primitive.bind(*invals, **params)
    return list(ans) if eqn.primitive.multiple_results else [ans]


def param_env(program: Program, leaves: Sequence[Any]) -> dict[Var, Any]:
    """Values of everything that does not depend on the input: the model's leaves, the
    jaxpr's constants, and the parameter equations (evaluated once, unbatched)."""
    if len(leaves) != program.n_leaves:
        raise ValueError(
            f"leaves: expected the {program.n_leaves} array leaves of the model the program "
            f"was traced from, got {len(leaves)}."
        )
    jaxpr = program.jaxpr
    env: dict[Var, Any] = dict(zip(jaxpr.constvars, program.consts, strict=True))
    env.update(zip(jaxpr.invars[: program.n_leaves], leaves, strict=True))
    for e in program.param_eqns:
        vals = _bind(e, [v.val if _is_literal(v) else env[v] for v in e.invars])
        for v, x in zip(e.outvars, vals, strict=True):
            if not _is_drop(v):
                env[v] = x
    return env


def flatten_vars(vals: Sequence[Any], dtype: Any) -> Any:
    """Concatenate values (one sample) into one vector of `dtype`."""
    if len(vals) == 1:
        return jnp.reshape(vals[0], (-1,)).astype(dtype)
    if not vals:
        return jnp.zeros((0,), dtype)
    return jnp.concatenate([jnp.reshape(x, (-1,)).astype(dtype) for x in vals])


def unflatten_vars(vec: Any, vars_: Sequence[Var]) -> list[Any]:
    """Split a vector back into values of the shapes and dtypes of `vars_`."""
    out, o = [], 0
    for v in vars_:
        s = _size(v.aval)
        out.append(vec[o : o + s].reshape(v.aval.shape).astype(v.aval.dtype))
        o += s
    return out


def range_function(
    program: Program, a: int, b: int, params: dict[Var, Any]
) -> Callable[[Any, tuple[Any, ...]], tuple[Any, tuple[Any, ...]]]:
    """The function of segments `a+1..b` (cut indices `0 ≤ a < b ≤ K`) on one sample:
    `(vector at cut a, aux values at cut a) -> (vector at cut b, aux values at cut b)`."""
    first, last = program.segments[a], program.segments[b - 1]
    eqns = program.eqns[first.start : last.stop]
    dtype = program.dtype

    def fn(vec: Any, aux: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        env: dict[Var, Any] = dict(zip(first.in_aux, aux, strict=True))
        env.update(zip(first.in_vars, unflatten_vars(vec, first.in_vars), strict=True))

        def read(v: Any) -> Any:
            if _is_literal(v):
                return v.val
            return env[v] if v in env else params[v]

        for e in eqns:
            vals = _bind(e, [read(v) for v in e.invars])
            for v, x in zip(e.outvars, vals, strict=True):
                if not _is_drop(v):
                    env[v] = x
        return (
            flatten_vars([read(v) for v in last.out_vars], dtype),
            tuple(read(v) for v in last.out_aux),
        )

    return fn
