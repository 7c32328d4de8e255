"""The bracketing of a segment chain: plans, their costs, and the dynamic programme.

A program cut into segments `S1..SK` has the per-sample Jacobian `J = J_K ⋯ J_1`, where
`J_k` is `n_k × n_{k-1}`. Cut indices `0..K` lie between segments; `J_{i..j}` is the
Jacobian of segments `i+1..j`. Every way of obtaining `J_{0..K}` is a tree whose nodes are

- `fwd(i..j)` / `rev(i..j)`: materialise `J_{i..j}` by forward mode (`n_i` JVPs) or reverse
  mode (`n_j` VJPs) through the segments;
- `diag(i..j)`: the segments are elementwise on one value: one JVP with a seed of ones
  gives the diagonal, used as a scaling;
- `A · B`: split at `k` and multiply `J_{k..j} · J_{i..k}`;
- `jvp(k..j) ∘ B`: push the `n_i` columns of `B = J_{i..k}` through segments `k+1..j` by
  JVP, matrix-free;
- `A ∘ vjp(i..k)`: pull the `n_j` rows of `A = J_{k..j}` back through segments `i+1..k`.

The cheapest tree is a dynamic programme over sub-chains (Naumann's Jacobian chain
product with matrix-free options), O(K³). Costs are roofline seconds on a device model
(`peak_flops`, `bandwidth`, `op_overhead`, `fwd_efficiency`) for the whole batch.
Factors of affine segments (input-independent Jacobians) are counted once per batch, not
per sample: the executor (`_segments.py`) runs the per-sample tree under `vmap`, which
computes products that do not involve the sample only once. This module needs only the
segments' `SegmentInfo`s, never the program's equations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .._cost import device_model

if TYPE_CHECKING:
    from ._trace import Program, SegmentInfo


def _default_device(device: Any) -> Any:
    return device_model() if device is None else device


# ---------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Materialise:
    """`J_{i..j}` by `how` = `"fwd"`, `"rev"` or `"diag"` through segments `i+1..j`."""

    i: int
    j: int
    how: str


@dataclasses.dataclass(frozen=True)
class Split:
    """`J_{k..j} · J_{i..k}` (`left` covers `k..j`, `right` covers `i..k`)."""

    i: int
    k: int
    j: int
    left: Node
    right: Node


@dataclasses.dataclass(frozen=True)
class Push:
    """`right` (`J_{i..k}`) pushed through segments `k+1..j` by JVP."""

    i: int
    k: int
    j: int
    right: Node


@dataclasses.dataclass(frozen=True)
class Pull:
    """`left` (`J_{k..j}`) pulled back through segments `i+1..k` by VJP."""

    i: int
    k: int
    j: int
    left: Node


Node = Materialise | Split | Push | Pull


def _span(i: int, j: int) -> str:
    return f"S{j}" if j == i + 1 else f"S{i + 1}..S{j}"


def describe_node(node: Node) -> str:
    """A readable bracketing, e.g. `rev(S3..S4) · fwd(S1..S2)`: `·` multiplies two
    materialised factors, `∘` applies a segment run matrix-free (`jvp`/`vjp`)."""

    def wrap(n: Node) -> str:
        s = describe_node(n)
        return s if isinstance(n, Materialise) else f"({s})"

    if isinstance(node, Materialise):
        return f"{node.how}({_span(node.i, node.j)})"
    if isinstance(node, Split):
        return f"{wrap(node.left)} · {wrap(node.right)}"
    if isinstance(node, Push):
        return f"jvp({_span(node.k, node.j)}) ∘ {wrap(node.right)}"
    return f"{wrap(node.left)} ∘ vjp({_span(node.i, node.k)})"


def _cuts_used(node: Node) -> set[int]:
    if isinstance(node, Materialise):
        return set()
    if isinstance(node, Split):
        return {node.k} | _cuts_used(node.left) | _cuts_used(node.right)
    if isinstance(node, Push):
        return {node.k} | _cuts_used(node.right)
    return {node.k} | _cuts_used(node.left)


# ---------------------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------------------


class Cost(NamedTuple):
    """FLOPs, bytes moved and roofline seconds for the whole batch; `peak` is the largest
    block (bytes) one step holds."""

    flops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0
    peak: float = 0.0

    def __add__(self, other: Cost) -> Cost:  # type: ignore[override]
        return Cost(
            self.flops + other.flops,
            self.bytes + other.bytes,
            self.seconds + other.seconds,
            max(self.peak, other.peak),
        )


_INF = Cost(math.inf, math.inf, math.inf, math.inf)


@dataclasses.dataclass(frozen=True)
class _Model:
    infos: tuple[SegmentInfo, ...]
    batch: int
    itemsize: int
    device: Any

    def op(self, flops: float, elems: float, kernels: float, slow: float = 1.0) -> Cost:
        nbytes = elems * self.itemsize
        dev = self.device
        t = max(flops / dev.peak_flops, nbytes / dev.bandwidth) / slow
        return Cost(flops, nbytes, t + kernels * dev.op_overhead, nbytes)

    def width(self, c: int) -> int:
        return self.infos[0].in_width if c == 0 else self.infos[c - 1].out_width

    def all(self, i: int, j: int, flag: str) -> bool:
        return all(getattr(s, flag) for s in self.infos[i:j])

    def batched(self, i: int, j: int) -> bool:
        """`J_{i..j}` differs between samples (some segment in it is not affine)."""
        return not self.all(i, j, "affine")

    def sweep(self, i: int, j: int, seeds: int, forward: bool, seed_batched: bool) -> Cost:
        """Push `seeds` tangents (forward) or cotangents (reverse) through segments
        `i+1..j`, with the primal pass; a shared seed stays shared through affine
        segments."""
        segs = self.infos[i:j] if forward else self.infos[i:j][::-1]
        batched = seed_batched
        total = Cost()
        slow = self.device.fwd_efficiency if forward else 1.0
        B = self.batch
        for s in segs:
            batched = batched or not s.affine
            tb = B if batched else 1
            # the reverse pass stores the primal residuals and reads them back
            residual = 1.0 if forward else 2.0
            total = total + self.op(B * s.flops, s.param_elems + residual * B * s.act_elems, s.ops)
            tangent = self.op(
                tb * seeds * s.flops,
                s.param_elems + tb * seeds * s.act_elems,
                s.ops * (1.0 if forward else 2.0),
                slow,
            )
            block = tb * seeds * s.max_width * self.itemsize
            total = total + tangent._replace(peak=max(tangent.peak, block))
        return total

    def product(self, p: int, q: int, r: int, lk: str, lb: bool, rk: str, rb: bool) -> Cost:
        """`(p × q) · (q × r)`, each factor dense or diagonal, per sample or shared."""
        B = self.batch
        bl, br = (B if lb else 1), (B if rb else 1)
        bp = B if (lb or rb) else 1
        if lk == "diag" and rk == "diag":
            return self.op(bp * p, bl * p + br * p + bp * p, 1)
        if lk == "diag":
            return self.op(bp * p * r, bl * p + br * q * r + bp * p * r, 1)
        if rk == "diag":
            return self.op(bp * p * r, bl * p * q + br * q + bp * p * r, 1)
        return self.op(2.0 * bp * p * q * r, bl * p * q + br * q * r + bp * p * r, 1)

    def densify(self, n: int, batched: bool) -> Cost:
        return self.op(0.0, (self.batch if batched else 1) * n * n, 1)

    def materialise(self, i: int, j: int, how: str) -> Cost:
        if how == "fwd":
            ok = self.all(i, j, "fwd_ok")
            return self.sweep(i, j, self.width(i), True, False) if ok else _INF
        if how == "rev":
            ok = self.all(i, j, "rev_ok")
            return self.sweep(i, j, self.width(j), False, False) if ok else _INF
        ok = self.all(i, j, "diagonal") and self.all(i, j, "fwd_ok")
        return self.sweep(i, j, 1, True, False) if ok else _INF

    def push(self, i: int, k: int, j: int, rk: str) -> Cost:
        if not self.all(k, j, "fwd_ok"):
            return _INF
        rb = self.batched(i, k)
        extra = self.densify(self.width(k), rb) if rk == "diag" else Cost()
        return extra + self.sweep(k, j, self.width(i), True, rb)

    def pull(self, i: int, k: int, j: int, lk: str) -> Cost:
        if not self.all(i, k, "rev_ok"):
            return _INF
        lb = self.batched(k, j)
        extra = self.densify(self.width(k), lb) if lk == "diag" else Cost()
        return extra + self.sweep(i, k, self.width(j), False, lb)

    def split(self, i: int, k: int, j: int, lk: str, rk: str) -> Cost:
        p, q, r = self.width(j), self.width(k), self.width(i)
        return self.product(p, q, r, lk, self.batched(k, j), rk, self.batched(i, k))

    def finish(self, kind: str) -> Cost:
        """Lay out the root as `(B, m, n)`: broadcast a shared result, densify a diagonal."""
        K = len(self.infos)
        m, n = self.width(K), self.width(0)
        if kind == "diag":
            return self.densify(n, True)
        if not self.batched(0, K):
            return self.op(0.0, self.batch * m * n, 1)
        return Cost()


def _evaluate(node: Node, model: _Model) -> tuple[Cost, str]:
    """The cost of a plan and the kind of its result (`"dense"` or `"diag"`)."""
    if isinstance(node, Materialise):
        return model.materialise(node.i, node.j, node.how), (
            "diag" if node.how == "diag" else "dense"
        )
    if isinstance(node, Split):
        lc, lk = _evaluate(node.left, model)
        rc, rk = _evaluate(node.right, model)
        kind = "diag" if lk == rk == "diag" else "dense"
        return lc + rc + model.split(node.i, node.k, node.j, lk, rk), kind
    if isinstance(node, Push):
        rc, rk = _evaluate(node.right, model)
        return rc + model.push(node.i, node.k, node.j, rk), "dense"
    lc, lk = _evaluate(node.left, model)
    return lc + model.pull(node.i, node.k, node.j, lk), "dense"


def _plan_cost(node: Node, model: _Model) -> Cost:
    cost, kind = _evaluate(node, model)
    return cost + model.finish(kind)


def _optimal(model: _Model) -> tuple[Cost, Node]:
    """The dynamic programme: for each sub-chain and each result kind, the cheapest plan.

    The cost of a plan depends on a sub-plan only through the sub-plan's cost and result
    kind (whether a sub-product is per sample or shared is fixed by its segments), so the
    best plan per `(i, j, kind)` composes into the best plan overall.
    """
    K = len(model.infos)
    best: dict[tuple[int, int], dict[str, tuple[Cost, Node]]] = {}

    def offer(table: dict[str, tuple[Cost, Node]], kind: str, cost: Cost, node: Node) -> None:
        if cost.seconds < math.inf and (kind not in table or cost.seconds < table[kind][0].seconds):
            table[kind] = (cost, node)

    for length in range(1, K + 1):
        for i in range(0, K - length + 1):
            j = i + length
            table: dict[str, tuple[Cost, Node]] = {}
            # rev first: on ties the plain reverse sweep wins (as vmap(jacrev) measures best)
            for how in ("rev", "fwd", "diag"):
                kind = "diag" if how == "diag" else "dense"
                offer(table, kind, model.materialise(i, j, how), Materialise(i, j, how))
            for k in range(i + 1, j):
                for lk, (lc, ln) in best[(k, j)].items():
                    for rk, (rc, rn) in best[(i, k)].items():
                        kind = "diag" if lk == rk == "diag" else "dense"
                        c = lc + rc + model.split(i, k, j, lk, rk)
                        offer(table, kind, c, Split(i, k, j, ln, rn))
                for rk, (rc, rn) in best[(i, k)].items():
                    offer(table, "dense", rc + model.push(i, k, j, rk), Push(i, k, j, rn))
                for lk, (lc, ln) in best[(k, j)].items():
                    offer(table, "dense", lc + model.pull(i, k, j, lk), Pull(i, k, j, ln))
            best[(i, j)] = table
    options = [(c + model.finish(kind), n) for kind, (c, n) in best[(0, K)].items()]
    if not options:
        raise ValueError(
            "program: no segment plan can differentiate this model: a segment needs "
            "forward mode (it holds a custom_vjp) and reverse mode (it holds a while loop)."
        )
    return min(options, key=lambda o: o[0].seconds)


def _all_plans(model: _Model, i: int, j: int) -> Iterator[Node]:
    """Every feasible plan for `J_{i..j}` (exponentially many: for tests on short chains)."""
    for how in ("rev", "fwd", "diag"):
        if model.materialise(i, j, how).seconds < math.inf:
            yield Materialise(i, j, how)
    for k in range(i + 1, j):
        for left in _all_plans(model, k, j):
            for right in _all_plans(model, i, k):
                yield Split(i, k, j, left, right)
        if model.all(k, j, "fwd_ok"):
            for right in _all_plans(model, i, k):
                yield Push(i, k, j, right)
        if model.all(i, k, "rev_ok"):
            for left in _all_plans(model, k, j):
                yield Pull(i, k, j, left)


# ---------------------------------------------------------------------------------------
# Public-facing (private module) API
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bracketing:
    """A plan for the Jacobian of a segment chain, with its estimated cost.

    Hashable by value: a static argument under `jit`.

    **Fields:**

    - `tree`: the plan (`Materialise`, `Split`, `Push`, `Pull` nodes over cut indices).
    - `n_segments`: the number of segments of the program it was made for.
    - `batch_size`, `itemsize`: what the estimates are for.
    - `flops`, `bytes`, `seconds`: estimated for the whole batch (roofline seconds on the
        device model; for ranking plans, not a promise).
    - `peak_bytes`: the largest block one step holds (tangents of a sweep, a product).
    """

    tree: Node
    n_segments: int
    batch_size: int
    itemsize: int
    flops: float
    bytes: float
    seconds: float
    peak_bytes: float

    def describe(self) -> str:
        """The plan as text, e.g. `rev(S3..S4) · fwd(S1..S2)`."""
        return describe_node(self.tree)

    def __str__(self) -> str:
        return (
            f"{self.describe()}  [{self.flops / 1e9:.4g} GFLOP, {self.bytes / 1e6:.4g} MB, "
            f"est. {self.seconds * 1e3:.3g} ms for B={self.batch_size}]"
        )


def _model(infos: Sequence[SegmentInfo], batch_size: int, itemsize: int, device: Any) -> _Model:
    return _Model(tuple(infos), max(int(batch_size), 1), int(itemsize), _default_device(device))


def _bracketing(tree: Node, model: _Model, batch_size: int) -> Bracketing:
    c = _plan_cost(tree, model)
    return Bracketing(
        tree, len(model.infos), batch_size, model.itemsize, c.flops, c.bytes, c.seconds, c.peak
    )


def plan_bracketing(
    program: Program, batch_size: int, itemsize: int, device: Any = None
) -> Bracketing:
    """The cheapest plan for `program`'s Jacobian on a batch of `batch_size` samples.

    **Arguments:**

    - `program`: from `trace_program`.
    - `batch_size`: samples per call (shared factors are counted once per batch).
    - `itemsize`: bytes per element of the Jacobian's dtype (4 for float32).
    - `device`: a device model (`peak_flops`, `bandwidth`, `op_overhead`,
        `fwd_efficiency`); `None` for the default backend's.

    **Returns:**

    A `Bracketing`; `describe()` gives the plan as text.

    **Raises:**

    `ValueError` naming `program` if no plan can differentiate it.
    """
    model = _model(program.infos, batch_size, itemsize, device)
    _, tree = _optimal(model)
    return _bracketing(tree, model, batch_size)


def all_bracketings(
    program: Program, batch_size: int = 1, itemsize: int = 4, device: Any = None
) -> list[Bracketing]:
    """Every feasible plan for `program` (exponentially many; for tests and studies)."""
    model = _model(program.infos, batch_size, itemsize, device)
    return [_bracketing(t, model, batch_size) for t in _all_plans(model, 0, len(model.infos))]


def program_costs(
    program: Program, batch_size: int, itemsize: int, device: Any = None
) -> dict[str, tuple[float, float, float]]:
    """Estimated `(flops, bytes, seconds)` for the whole batch of three ways to the Jacobian:
    `"rev"` (`vmap(jacrev)`: `m` cotangents through the whole program), `"fwd"`
    (`vmap(jacfwd)`: `n` tangents) and `"segments"` (the optimal bracketing), each with
    its forward pass. A mode that cannot differentiate the program costs `inf`."""
    model = _model(program.infos, batch_size, itemsize, device)
    K = len(model.infos)
    out = {}
    for mode in ("rev", "fwd"):
        c = _plan_cost(Materialise(0, K, mode), model)
        out[mode] = (c.flops, c.bytes, c.seconds)
    c, _ = _optimal(model)
    out["segments"] = (c.flops, c.bytes, c.seconds)
    return out


PRUNE_BATCH = 32
PRUNE_TOLERANCE = 0.02


def prune_cuts(
    infos_for: Callable[[Sequence[int]], tuple[SegmentInfo, ...]],
    positions: Sequence[int],
    device: Any = None,
) -> tuple[int, ...]:
    """Drop cuts that gain nothing: those the optimal plan does not use, then, greedily,
    each whose removal raises the estimated time (batch `PRUNE_BATCH`, float32) by less
    than `PRUNE_TOLERANCE`. `infos_for(positions)` gives the segment infos for a cut set."""

    def solve(ps: Sequence[int]) -> tuple[Cost, Node]:
        return _optimal(_model(infos_for(ps), PRUNE_BATCH, 4, device))

    cur = list(positions)
    if not cur:
        return ()
    _, tree = solve(cur)
    used = _cuts_used(tree)
    cur = [p for idx, p in enumerate(cur) if idx + 1 in used]
    base, _ = solve(cur)
    while cur:
        trials = [(solve(cur[:t] + cur[t + 1 :])[0].seconds, t) for t in range(len(cur))]
        secs, t = min(trials)
        if secs > base.seconds * (1.0 + PRUNE_TOLERANCE):
            break
        cur.pop(t)
        base, _ = solve(cur)
    return tuple(cur)
