"""Jacobian modes: strategy objects, each owning how it computes and what it costs.

A mode is an `eqx.Module` (as lineax's solvers are): `Rev()`, `Fwd()`, `Chain()`,
`Backprop()`, `Segments()`, and `Auto()`, which selects one of the others for a plan by
the cost model.
Users may pass a mode object or its name (`mode="rev"`); `MODES` is the one list of them.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, Any, ClassVar

import equinox as eqx
import jax
from jaxtyping import Array

from ._cost import (
    MARGIN,
    DeviceModel,
    backprop_estimate,
    chain_order_estimate,
    fwd_estimate,
    rev_estimate,
)
from ._kernel import jacobian_recursion
from ._order import chain_product, optimal_order
from ._program._bracket import Materialise, plan_bracketing, program_costs
from ._program._chain import ChainError, chain_forward, read_chain
from ._program._segments import segments_jacobian
from ._program._trace import model_leaves

if TYPE_CHECKING:
    from ._plan import Plan

Estimate = tuple[float, float, float]  # flops, bytes moved, roofline seconds


class AbstractJacobianMode(eqx.Module):
    """How per-sample input Jacobians are computed.

    Subclasses implement `jacobian` (the batched computation) and `estimate` (the cost
    model's FLOPs, bytes and time, or `None` where the model gives no basis for one), and
    may refuse a plan in `check`.
    """

    name: ClassVar[str]
    needs_chain: ClassVar[bool] = False
    # `auto`'s order of preference (lower first); `None`: never chosen by `auto`.
    auto_rank: ClassVar[int | None] = None

    def check(self, plan: Plan) -> None:
        """Raise a `ValueError` naming `mode` if this mode cannot run `plan`."""

    @abc.abstractmethod
    def jacobian(self, plan: Plan, model: Any, X: Array) -> Array:
        """`(B, *out_shape, *in_shape)` for inputs `X` of shape `(B, *in_shape)`, already in
        the plan's compute dtype. Traceable; no validation."""

    @abc.abstractmethod
    def estimate(
        self, plan: Plan, batch_size: int, itemsize: int, device: DeviceModel
    ) -> Estimate | None:
        """`(flops, bytes, seconds)` for a batch of `batch_size`, or `None`."""


def _chain_estimate(plan: Plan, estimate, batch_size, itemsize, device) -> Estimate | None:
    if plan.chain is None:
        return None
    return estimate(plan.chain.dims, plan.chain.flags, batch_size, itemsize, device)


def _sweep_estimate(plan: Plan, name: str, estimate, batch_size, itemsize, device):
    """rev/fwd: from the layer chain where there is one, else from the traced program."""
    est = _chain_estimate(plan, estimate, batch_size, itemsize, device)
    if est is None and plan.program is not None:
        est = program_costs(plan.program, batch_size, itemsize, device)[name]
    return est


def _reshape(plan: Plan, J: Array, B: int) -> Array:
    return J.reshape(B, *plan.out_shape, *plan.in_shape)


class Rev(AbstractJacobianMode):
    """Reverse mode: `vmap(jacrev(model))`, one reverse pass per output element."""

    name: ClassVar[str] = "rev"
    auto_rank: ClassVar[int | None] = 0

    def jacobian(self, plan, model, X):
        return jax.vmap(jax.jacrev(model))(X)

    def estimate(self, plan, batch_size, itemsize, device):
        return _sweep_estimate(plan, self.name, rev_estimate, batch_size, itemsize, device)


class Fwd(AbstractJacobianMode):
    """Forward mode: `vmap(jacfwd(model))`, one forward pass per input element."""

    name: ClassVar[str] = "fwd"
    auto_rank: ClassVar[int | None] = 3

    def jacobian(self, plan, model, X):
        return jax.vmap(jax.jacfwd(model))(X)

    def estimate(self, plan, batch_size, itemsize, device):
        return _sweep_estimate(plan, self.name, fwd_estimate, batch_size, itemsize, device)


class _NeedsChain(AbstractJacobianMode):
    needs_chain: ClassVar[bool] = True

    def check(self, plan):
        if plan.chain is None:
            why = plan.chain_error or "the model has no readable layer chain"
            raise ChainError(f"`mode={self.name!r}` needs a readable layer chain: {why}")


class Chain(_NeedsChain):
    """The layer Jacobians multiplied in the FLOP-optimal order (matrix-chain dynamic
    programme); the per-sample diagonal factors `f'(z)` are applied as scalings."""

    name: ClassVar[str] = "chain"
    auto_rank: ClassVar[int | None] = 1

    def jacobian(self, plan, model, X):
        chain = read_chain(model)
        spec = plan.chain
        _, cache = chain_forward(chain, X)
        derivs = [cache.input_deriv, *cache.derivs]
        diags = [d if flag else None for d, flag in zip(derivs, spec.flags, strict=True)]
        weights = [s.weight for s in chain.linears]
        order = optimal_order(spec.dims, spec.flags)
        return _reshape(plan, chain_product(order, weights, diags, X.shape[0]), X.shape[0])

    def estimate(self, plan, batch_size, itemsize, device):
        return _chain_estimate(plan, chain_order_estimate, batch_size, itemsize, device)


class Backprop(_NeedsChain):
    """The hand-written kernel (`jacsens.backprop`): `G ← (G · diag(g_l)) W_l` from the
    output side, plain `jax.numpy`, no autodiff."""

    name: ClassVar[str] = "backprop"

    def check(self, plan):
        super().check(plan)
        if len(plan.chain.dims) < 2:
            raise ChainError("`mode='backprop'`: the hand-written kernel needs a linear layer.")

    def jacobian(self, plan, model, X):
        chain = read_chain(model)
        _, cache = chain_forward(chain, X)
        return _reshape(plan, jacobian_recursion(chain, cache), X.shape[0])

    def estimate(self, plan, batch_size, itemsize, device):
        return _chain_estimate(plan, backprop_estimate, batch_size, itemsize, device)


class Segments(AbstractJacobianMode):
    """The structured engine for any traceable model: the program (one sample's jaxpr) is
    cut where the live width is narrow, and the segment Jacobians are obtained and
    multiplied in the cheapest bracketing, with forward/reverse materialisation and
    matrix-free pushes and pulls (`jacsens._program`)."""

    name: ClassVar[str] = "segments"
    auto_rank: ClassVar[int | None] = 2

    def check(self, plan):
        if plan.program is None:
            raise ValueError(f"`mode='segments'` needs a traceable `model`: {plan.program_error}")

    def jacobian(self, plan, model, X):
        itemsize = X.dtype.itemsize
        bracketing = plan_bracketing(plan.program, max(X.shape[0], 1), itemsize, plan.device)
        J = segments_jacobian(plan.program, bracketing, model_leaves(model), X)
        return _reshape(plan, J, X.shape[0])

    def estimate(self, plan, batch_size, itemsize, device):
        if plan.program is None:
            return None
        br = plan_bracketing(plan.program, batch_size, itemsize, device)
        if isinstance(br.tree, Materialise) and br.tree.how in ("rev", "fwd"):
            # one sweep over the whole program: estimated as that plain mode is (from
            # the layer chain where there is one), so the table shows one figure for it
            return MODES[br.tree.how]().estimate(plan, batch_size, itemsize, device)
        est = br.flops, br.bytes, br.seconds
        if plan.chain is not None:
            est = _on_chain_footing(plan, est, batch_size, itemsize, device)
        return est


# Estimated savings smaller than this many kernel overheads (50 µs on the CPU model: about
# one call's dispatch, measured 20-50 µs) are below what the roofline model resolves; on
# a layer chain the segment plan must save more than that to replace chain or rev.
RESOLVED_OPS = 25


def _on_chain_footing(plan: Plan, est: Estimate, batch_size, itemsize, device) -> Estimate:
    """The segment plan's estimate on a layer chain, on the chain model's footing.

    The chain and the segment plan are estimated by two models (`_cost.py` from the layer
    widths, `_bracket.py` from the traced program) that count the same sweep differently:
    the chain model sees a shared seed stay shared through the output layer, the program
    model charges it per sample. Both estimate one and the same computation, the plain
    reverse sweep, so the program model's figures are scaled by the ratio of the two rev
    estimates. Calibrated on this CPU (interleaved medians, both through the same
    compiled dispatch): MLP 784-1024-16-1024-784 B=8, measured rev/segments 20.9 and
    rev/chain 16.3; the program model gives rev/segments 22.6, the chain model rev/chain
    18.3, while the raw estimates (segments 4.56 ms, chain 3.62 ms) rank them the wrong
    way round. On small chains (32-1-8-64-32, 64-2-16-32, B=4) both are within the
    dispatch overhead and chain measured faster (48 vs 58 µs, 19 vs 26 µs): there the
    saving is below `RESOLVED_OPS` kernels and chain is kept.
    """
    rev_chain = Rev().estimate(plan, batch_size, itemsize, device)
    rev_program = program_costs(plan.program, batch_size, itemsize, device)["rev"]
    if rev_chain is None or not 0 < rev_program[2] < math.inf:
        return est
    scale = rev_chain[2] / rev_program[2]
    return est[0], est[1], est[2] * scale


def _is_one_sweep(plan: Plan, batch_size: int, itemsize: int, device) -> bool:
    """The segment plan is one sweep over the whole program, i.e. plain rev or fwd (the
    same computation without interpreting the program's equations), or there is none."""
    if plan.program is None:
        return True
    tree = plan_bracketing(plan.program, batch_size, itemsize, device).tree
    return isinstance(tree, Materialise) and tree.how in ("rev", "fwd")


# The one list of concrete modes. `auto` tries those with an `auto_rank` in that order and
# moves to a later one only if it is estimated faster by more than `MARGIN` (10%): where
# chain's order is the reverse sweep anyway their estimates tie, and measured, jacrev's
# products are as fast or faster; backprop is a cross-check, never auto's pick.
MODES: dict[str, type[AbstractJacobianMode]] = {
    cls.name: cls for cls in (Rev, Fwd, Chain, Backprop, Segments)
}


def _rank(cls: type[AbstractJacobianMode]) -> int:
    return cls.auto_rank if cls.auto_rank is not None else 0


class Auto(AbstractJacobianMode):
    """Select the cheapest mode for a plan by the cost model (`select`)."""

    name: ClassVar[str] = "auto"

    def select(
        self, plan: Plan, batch_size: int, itemsize: int, device: DeviceModel
    ) -> AbstractJacobianMode:
        """The mode `auto` runs for `plan` at `batch_size`: among the modes with a cost
        estimate, the fastest by more than `MARGIN` in preference order; without any
        estimate, rev if the output is no wider than the input, else fwd.

        The segment plan is weighed for every model with a program, layer chains
        included, unless its bracketing is one sweep over the whole program: then it *is*
        rev or fwd, already ranked (`_is_one_sweep`). On a layer chain it is
        calibrated against the chain's estimates (`_on_chain_footing`)."""
        best: tuple[str, float] | None = None
        ranked = sorted((c for c in MODES.values() if c.auto_rank is not None), key=_rank)
        for cls in ranked:
            name = cls.name
            if name == Segments.name and _is_one_sweep(plan, batch_size, itemsize, device):
                continue
            est = cls().estimate(plan, batch_size, itemsize, device)
            if est is None:
                continue
            if name == Segments.name and plan.chain is not None and best is not None:
                if best[1] - est[2] < RESOLVED_OPS * device.op_overhead:
                    continue
            if best is None or MARGIN * est[2] < best[1]:
                best = (name, est[2])
        if best is not None:
            return MODES[best[0]]()
        n_in, n_out = math.prod(plan.in_shape), math.prod(plan.out_shape)
        return Rev() if n_out <= n_in else Fwd()

    def jacobian(self, plan, model, X):
        raise TypeError("Auto is resolved to a concrete mode when the plan is made.")

    def estimate(self, plan, batch_size, itemsize, device):
        return None


MODE_NAMES: tuple[str, ...] = ("auto", *MODES)


_BY_NAME: dict[str, AbstractJacobianMode] = {}


def get_mode(mode: Any, argname: str = "mode") -> AbstractJacobianMode:
    """A mode object from a name (one shared instance per name) or a mode object."""
    if isinstance(mode, AbstractJacobianMode):
        return mode
    if isinstance(mode, str) and mode in MODE_NAMES:
        if mode not in _BY_NAME:
            _BY_NAME[mode] = Auto() if mode == "auto" else MODES[mode]()
        return _BY_NAME[mode]
    raise ValueError(f"Unknown `{argname}` {mode!r}; expected one of {MODE_NAMES}.")
