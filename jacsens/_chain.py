"""The layer chain of a model, the cost model, and the optimal matrix-chain order.

A feed-forward network with elementwise activations has the input Jacobian

    ∂y/∂x = W_L · diag(f'(z_{L-1})) · W_{L-1} ··· diag(f'(z_1)) · W_1,

a product of *shared* dense factors (the weights) and *per-sample* diagonal factors. The
diagonal factors are kept as vectors and applied as scalings. The dense factors may be
multiplied in any order; the cheapest order is found by the classic matrix-chain dynamic
programme. Reverse mode is the left-to-right order (starting from an identity the size of
the output), forward mode the right-to-left order; on networks with a narrow middle layer
the optimal order splits there and is far cheaper than both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._models import ACTIVATIONS, MLP, Activation


class ChainError(ValueError):
    """Raised when a model's layer chain cannot be read."""


@dataclasses.dataclass(frozen=True)
class LinearStep:
    """An affine layer `z = W a + b`, with `W` as a 2-D `(out, in)` matrix."""

    weight: Array
    bias: Array | None
    # Returns the `eqx.nn.Linear` inside the model: used to map gradients back.
    getter: Callable[[Any], eqx.nn.Linear]

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape


@dataclasses.dataclass(frozen=True)
class ActStep:
    """An elementwise activation: a diagonal Jacobian factor `diag(f'(z))`."""

    activation: Activation


Step = LinearStep | ActStep


@dataclasses.dataclass(frozen=True)
class Chain:
    """The layers of a model, from input to output."""

    steps: tuple[Step, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def in_width(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_width(self) -> int:
        return math.prod(self.out_shape)

    @property
    def linears(self) -> list[LinearStep]:
        return [s for s in self.steps if isinstance(s, LinearStep)]

    @property
    def dims(self) -> list[int]:
        """Widths `p_0, ..., p_n` around the `n` dense factors."""
        lin = self.linears
        if not lin:
            return [self.in_width]
        return [lin[0].shape[1]] + [s.shape[0] for s in lin]


# ---------------------------------------------------------------------------------------
# Reading the chain
# ---------------------------------------------------------------------------------------


def _known_callables() -> dict[int, str]:
    table = {
        jnp.tanh: "tanh",
        jax.nn.sigmoid: "sigmoid",
        jax.nn.relu: "relu",
        jax.nn.softplus: "softplus",
        jax.nn.gelu: "gelu",
        jax.nn.silu: "silu",
        jax.nn.elu: "elu",
        jax.nn.leaky_relu: "leaky_relu",
        jnp.sin: "sin",
    }
    if hasattr(jax.nn, "swish"):
        table[jax.nn.swish] = "silu"
    try:  # equinox's own defaults for eqx.nn.MLP
        from equinox.nn import _mlp

        table[_mlp._identity] = "identity"
        table[_mlp._relu] = "relu"
    except (ImportError, AttributeError):
        pass
    return {id(k): v for k, v in table.items()}


@functools.cache
def _callables_by_id() -> dict[int, str]:
    return _known_callables()


def _identify(fn: Any) -> Activation | None:
    if isinstance(fn, Activation):
        return fn
    if isinstance(fn, eqx.nn.Lambda):
        return _identify(fn.fn)
    name = _callables_by_id().get(id(fn))
    if name is None:
        wrapped = getattr(fn, "__wrapped__", None)
        name = _callables_by_id().get(id(wrapped)) if wrapped is not None else None
    return None if name is None else ACTIVATIONS[name]


def _linear_step(layer: eqx.nn.Linear, getter) -> LinearStep:
    # eqx.nn.Linear always stores a 2-D (out, in) weight and a 1-D bias, also for
    # "scalar" sizes (as width 1), so no reshape (and no eager array op) is needed here.
    return LinearStep(layer.weight, layer.bias, getter)


def _compose(outer, inner):
    return lambda m: inner(outer(m))


def _plain(model: Any, cls: type) -> bool:
    """`model` is a `cls` whose forward pass is `cls`'s own.

    A subclass that overrides `__call__` (a scaled output, a residual connection, ...)
    computes something the layer chain does not describe: it is not read as a chain.
    """
    return isinstance(model, cls) and type(model).__call__ is cls.__call__


def _read(model: Any, getter, where: str) -> list[Step]:
    if isinstance(model, MLP | eqx.nn.MLP | eqx.nn.Sequential | eqx.nn.Linear | eqx.nn.Identity):
        base = next(
            c
            for c in (MLP, eqx.nn.MLP, eqx.nn.Sequential, eqx.nn.Linear, eqx.nn.Identity)
            if isinstance(model, c)
        )
        if not _plain(model, base):
            raise ChainError(
                f"{where}: {type(model).__name__} overrides {base.__name__}.__call__, so its "
                "layer chain cannot be read; use an autodiff mode (rev/fwd)."
            )
    if isinstance(model, eqx.nn.Linear):
        return [_linear_step(model, getter)]
    if isinstance(model, MLP):
        steps: list[Step] = []
        act = ACTIVATIONS[model.activation]
        for i, layer in enumerate(model.layers):
            if i > 0:
                steps.append(ActStep(act))
            steps.append(_linear_step(layer, _compose(getter, lambda m, i=i: m.layers[i])))
        if model.final_activation is not None:
            steps.append(ActStep(ACTIVATIONS[model.final_activation]))
        return steps
    if isinstance(model, eqx.nn.MLP):
        if getattr(model, "scan", False):
            raise ChainError(f"{where}: eqx.nn.MLP(scan=True) has no readable layer chain.")
        act = _identify(model.activation)
        fin = _identify(model.final_activation)
        if act is None or fin is None:
            raise ChainError(
                f"{where}: eqx.nn.MLP activation {model.activation!r} / final_activation "
                f"{model.final_activation!r} is not a known elementwise activation."
            )
        steps = []
        for i, layer in enumerate(model.layers):
            if i > 0:
                steps.append(ActStep(act))
            steps.append(_linear_step(layer, _compose(getter, lambda m, i=i: m.layers[i])))
        if fin.name != "identity":
            steps.append(ActStep(fin))
        return steps
    if isinstance(model, eqx.nn.Sequential):
        steps = []
        for i, layer in enumerate(model.layers):
            sub = _compose(getter, lambda m, i=i: m.layers[i])
            steps.extend(_read(layer, sub, f"{where}.layers[{i}]"))
        return steps
    if isinstance(model, eqx.nn.Identity):
        return []
    act = _identify(model)
    if act is not None:
        return [ActStep(act)]
    raise ChainError(
        f"{where}: cannot read a layer chain from {type(model).__name__}; supported are "
        "jacsens.MLP, eqx.nn.MLP, eqx.nn.Linear and eqx.nn.Sequential of those with "
        "known elementwise activations."
    )


def read_chain(model: Any) -> Chain:
    """Read the layer chain of `model`.

    **Raises:** `ChainError` (a `ValueError`) if the model is not a chain of affine layers
    and known elementwise activations.
    """
    steps = tuple(_read(model, lambda m: m, "model"))
    lin = [s for s in steps if isinstance(s, LinearStep)]
    for a, b in zip(lin[:-1], lin[1:], strict=True):
        if a.shape[0] != b.shape[1]:
            raise ChainError(f"model: layer widths do not match: {a.shape} then {b.shape}.")
    in_shape = _io_shape(model, "in")
    out_shape = _io_shape(model, "out")
    if lin:
        if math.prod(in_shape) != lin[0].shape[1] or math.prod(out_shape) != lin[-1].shape[0]:
            raise ChainError("model: input/output sizes do not match the layer chain.")
    elif in_shape is None:
        raise ChainError("model: a chain without linear layers has no known input size.")
    return Chain(steps, in_shape, out_shape)


def _io_shape(model: Any, which: str) -> tuple[int, ...] | None:
    """Per-sample input/output shape of a chain model; `()` for "scalar" sizes."""
    if isinstance(model, MLP | eqx.nn.MLP):
        size = model.in_size if which == "in" else model.out_size
        return () if size == "scalar" else (size,)
    if isinstance(model, eqx.nn.Linear):
        size = model.in_features if which == "in" else model.out_features
        return () if size == "scalar" else (size,)
    if isinstance(model, eqx.nn.Sequential):
        layers = list(model.layers) if which == "in" else list(reversed(model.layers))
        for layer in layers:
            shape = _io_shape(layer, which)
            if shape is not None:
                return shape
    return None


def try_read_chain(model: Any) -> Chain | None:
    """`read_chain`, or `None` if the model has no readable chain."""
    try:
        return read_chain(model)
    except ChainError:
        return None


# ---------------------------------------------------------------------------------------
# Forward pass through the chain (batched)
# ---------------------------------------------------------------------------------------


def chain_forward(chain: Chain, X: Array) -> tuple[Array, list[Array | None]]:
    """Batched forward pass. Returns the output `(B, out_width)` and, for each dense factor
    boundary `k = 0..n`, the product of the activation derivatives there, `(B, p_k)`, or
    `None` where no activation sits between the factors."""
    h = X.reshape(X.shape[0], chain.in_width)  # not -1: B may be 0
    diags: list[Array | None] = [None]
    for step in chain.steps:
        if isinstance(step, LinearStep):
            h = h @ step.weight.T
            if step.bias is not None:
                h = h + step.bias
            diags.append(None)
        else:
            d = step.activation.deriv(h)
            diags[-1] = d if diags[-1] is None else diags[-1] * d
            h = step.activation.fn(h)
    return h, diags


# ---------------------------------------------------------------------------------------
# Matrix-chain order and the cost model
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChainOrder:
    """Optimal parenthesisation of the dense factors `W_1 .. W_n` (1-based)."""

    dims: tuple[int, ...]
    split: dict[tuple[int, int], int]
    cost: int  # multiply-adds per sample, products and scalings

    def describe(self, i: int | None = None, j: int | None = None) -> str:
        i = 1 if i is None else i
        j = len(self.dims) - 1 if j is None else j
        if i == j:
            return f"W{i}"
        k = self.split[(i, j)]
        left, right = self.describe(k + 1, j), self.describe(i, k)
        left = left if k + 1 == j else f"({left})"
        right = right if i == k else f"({right})"
        return f"{left} · {right}"


def optimal_order(dims: tuple[int, ...], has_diag: tuple[bool, ...]) -> ChainOrder:
    """Matrix-chain dynamic programme over dense factors `W_k: p_{k-1} -> p_k`.

    `has_diag[k]` says whether a per-sample diagonal sits between `W_k` and `W_{k+1}`; it is
    applied as a scaling of whichever neighbouring product is smaller. Costs are per sample.
    """
    n = len(dims) - 1
    best: dict[tuple[int, int], int] = {(i, i): 0 for i in range(1, n + 1)}
    split: dict[tuple[int, int], int] = {}
    for length in range(2, n + 1):
        for i in range(1, n - length + 2):
            j = i + length - 1
            options = []
            for k in range(i, j):
                c = best[(i, k)] + best[(k + 1, j)] + dims[j] * dims[k] * dims[i - 1]
                if has_diag[k]:
                    c += min(dims[j], dims[i - 1]) * dims[k]
                options.append((c, k))
            best[(i, j)], split[(i, j)] = min(options)
    return ChainOrder(tuple(dims), split, best[(1, n)] if n else 0)


def _chain_order(chain: Chain) -> ChainOrder:
    return optimal_order(tuple(chain.dims), tuple(_diag_flags(chain)))


JACOBIAN_MODES = ("rev", "fwd", "chain", "backprop")


@dataclasses.dataclass(frozen=True)
class JacobianCost:
    """The cost model's estimate for each input-Jacobian mode.

    **Fields:**

    - `batch_size`: the batch the numbers are for.
    - `flops`: mode -> floating-point operations (2 per multiply-add) for the whole batch.
    - `bytes`: mode -> bytes moved (operands read, results written), for the batch.
    - `best`: the mode `input_jacobian(mode="auto")` picks.
    - `order`: the optimal multiplication order of the dense factors (`chain` mode), or
        `None` for models without a readable chain.
    """

    batch_size: int
    flops: dict[str, float]
    bytes: dict[str, float]
    best: str
    order: str | None

    def __str__(self) -> str:
        rows = [f"{'mode':<9}{'GFLOP':>12}{'MB':>12}"]
        for m in self.flops:
            mark = "  <- auto" if m == self.best else ""
            rows.append(f"{m:<9}{self.flops[m] / 1e9:>12.4g}{self.bytes[m] / 1e6:>12.4g}{mark}")
        return "\n".join(rows)


@dataclasses.dataclass(frozen=True)
class DeviceModel:
    """Roofline constants of a kind of device, used to rank the Jacobian modes.

    An operation moving `b` bytes and doing `f` FLOPs is taken to last
    `max(f / peak_flops, b / bandwidth) + op_overhead` seconds. Only the ratios between modes
    matter for `auto`, so typical figures of the device kind do: the machine balance
    `peak_flops / bandwidth` and the overhead decide between a FLOP-lean order with large
    intermediates and a FLOP-heavier one with small intermediates. `fwd_efficiency` is the
    speed of `vmap(jacfwd)`'s tangent products relative to the same products in the other
    modes (their layout, tangent axis inside the batch axis, is slower on XLA:CPU; measured
    2-4x in `benchmarks/`; GPU and TPU figures await a measurement and are neutral).
    """

    name: str
    peak_flops: float  # float32 FLOP/s
    bandwidth: float  # bytes/s
    op_overhead: float  # seconds per kernel
    fwd_efficiency: float = 1.0


DEVICE_MODELS = {
    "cpu": DeviceModel("cpu", 2.0e11, 2.0e10, 2.0e-6, fwd_efficiency=0.5),
    "gpu": DeviceModel("gpu", 5.0e13, 2.0e12, 5.0e-6),
    "tpu": DeviceModel("tpu", 1.0e14, 1.0e12, 5.0e-6),
}

# `auto` prefers rev, then chain, then fwd, and moves down that list only for an estimated
# gain of more than 10%: where chain's order is the reverse sweep anyway their estimates tie,
# and measured, jacrev's products are as fast or faster (scalar outputs especially).
MARGIN = 1.1


def device_model(platform: str | None = None) -> DeviceModel:
    """The `DeviceModel` for a JAX platform name (`"cpu"`, `"gpu"`, `"cuda"`, `"rocm"`,
    `"tpu"`); `None` means `jax.default_backend()`. Unknown platforms count as GPUs."""
    platform = jax.default_backend() if platform is None else platform.lower()
    if platform in ("cuda", "rocm"):
        platform = "gpu"
    return DEVICE_MODELS.get(platform, DEVICE_MODELS["gpu"])


@dataclasses.dataclass
class _Tally:
    """FLOPs, bytes moved and roofline seconds of a sequence of operations."""

    device: DeviceModel
    itemsize: int
    flops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0

    def op(self, flops: float, elems: float) -> None:
        nbytes = float(elems) * self.itemsize
        self.flops += flops
        self.bytes += nbytes
        self.seconds += (
            max(flops / self.device.peak_flops, nbytes / self.device.bandwidth)
            + self.device.op_overhead
        )

    def matmul(self, m: int, k: int, n: int, batch: int, lb: bool, rb: bool) -> None:
        """`(m, k) @ (k, n)`, each operand per sample (`lb`, `rb`) or shared."""
        out = batch if (lb or rb) else 1
        self.op(
            2.0 * out * m * k * n,
            (batch if lb else 1) * m * k + (batch if rb else 1) * k * n + out * m * n,
        )

    def scale(self, elems: int, batch: int, batched: bool) -> None:
        """Scale `elems` entries per sample by a per-sample diagonal (a broadcast if the
        operand was shared)."""
        self.op(float(batch * elems), (batch if batched else 1) * elems + 2 * batch * elems)


def _diag_flags(chain: Chain) -> list[bool]:
    """`flags[k]`: a per-sample diagonal sits after dense factor `k` (`0`: on the input)."""
    flags = [False] * (len(chain.linears) + 1)
    k = 0
    for step in chain.steps:
        if isinstance(step, LinearStep):
            k += 1
        else:
            flags[k] = True
    return flags


def _forward(t: _Tally, dims: list[int], flags: list[bool], batch: int) -> None:
    """The forward pass with activation derivatives (common to every mode)."""
    if flags[0]:
        t.op(4.0 * batch * dims[0], 3 * batch * dims[0])
    for k in range(1, len(dims)):
        t.matmul(batch, dims[k - 1], dims[k], 1, True, False)
        if flags[k]:
            t.op(4.0 * batch * dims[k], 3 * batch * dims[k])


def _sweep(t: _Tally, widths: list[int], flags: list[bool], batch: int) -> None:
    """One autodiff sweep pushing an identity seed of `widths[0]` rows through the layers.

    The seed is shared by the whole batch, so products stay unbatched (done once) until
    the first per-sample diagonal; this is how `vmap(jacrev)` / `vmap(jacfwd)` execute.
    """
    rows = widths[0]
    batched = False
    for j in range(len(widths) - 1):
        if flags[j]:
            t.scale(rows * widths[j], batch, batched)
            batched = True
        t.matmul(rows, widths[j], widths[j + 1], batch, batched, False)
    if flags[-1]:
        t.scale(rows * widths[-1], batch, batched)
        batched = True
    if not batched:
        t.op(0.0, batch * rows * widths[-1])


def _backprop(t: _Tally, dims: list[int], batch: int) -> None:
    """`jacsens.backprop`'s recursion: `G = diag(g_n) W_n`, `G <- (G diag(g_k)) W_k`, then
    the input-side scaling; every diagonal is applied (ones where there is no activation)."""
    n = len(dims) - 1
    rows = dims[-1]
    if n == 0:
        t.scale(rows * dims[0], batch, False)
        return
    t.scale(rows * dims[n - 1], batch, False)
    for k in range(n - 1, 0, -1):
        t.scale(rows * dims[k], batch, True)
        t.matmul(rows, dims[k], dims[k - 1], batch, True, False)
    t.scale(rows * dims[0], batch, True)


def _chain_tree(t: _Tally, order: ChainOrder, flags: list[bool], batch: int) -> None:
    """The operations of `chain_jacobian` for the order `order` (mirrors its recursion)."""
    dims = order.dims
    n = len(dims) - 1

    def product(i: int, j: int) -> bool:
        if i == j:
            return False
        k = order.split[(i, j)]
        lb = product(k + 1, j)
        rb = product(i, k)
        if flags[k]:
            if dims[j] <= dims[i - 1]:
                t.scale(dims[j] * dims[k], batch, lb)
                lb = True
            else:
                t.scale(dims[k] * dims[i - 1], batch, rb)
                rb = True
        t.matmul(dims[j], dims[k], dims[i - 1], batch, lb, rb)
        return lb or rb

    batched = product(1, n) if n else False
    jac = dims[-1] * dims[0]
    if not batched:
        t.op(0.0, batch * jac)
    for k in (n, 0):
        if flags[k]:
            t.scale(jac, batch, True)


def chain_estimates(
    chain: Chain, batch_size: int, itemsize: int, platform: str | None = None
) -> dict[str, tuple[float, float, float]]:
    """Per mode: `(flops, bytes moved, roofline seconds)` for the whole batch.

    Every mode includes the forward pass. rev and fwd are the autodiff sweeps from an
    identity seed (`_sweep`); chain is `chain_jacobian`'s order; backprop is the output-side
    recursion of `jacsens.backprop` (`_backprop`).
    """
    key = _shape_key(chain, batch_size, itemsize, platform)
    return dict(_estimates(*key))


def chain_cost(
    chain: Chain, batch_size: int, itemsize: int, platform: str | None = None
) -> JacobianCost:
    """Cost model for a model with a readable chain (shapes and the platform only).

    FLOPs and bytes moved are counted operation by operation as each mode executes
    (`chain_estimates`); `best` is the mode with the smallest roofline time on the
    platform's `DeviceModel`, where rev is preferred to chain and chain to fwd unless the
    latter is estimated faster by more than the factor `MARGIN`.
    """
    cached = _cost(*_shape_key(chain, batch_size, itemsize, platform))
    # fresh dicts: the cached estimate must not be changed through the returned object
    return dataclasses.replace(cached, flops=dict(cached.flops), bytes=dict(cached.bytes))


def _shape_key(chain: Chain, batch_size: int, itemsize: int, platform: str | None):
    # Everything the cost model depends on, hashable: `auto` calls it on every
    # `input_jacobian`, so the estimate is cached per shape signature.
    platform = jax.default_backend() if platform is None else platform
    return tuple(chain.dims), tuple(_diag_flags(chain)), batch_size, itemsize, platform


@functools.lru_cache(maxsize=512)
def _estimates(dims, flags, batch_size, itemsize, platform):
    dims, flags = list(dims), list(flags)
    device = device_model(platform)
    B = batch_size
    out: list[tuple[str, tuple[float, float, float]]] = []
    for mode in JACOBIAN_MODES:
        t = _Tally(device, itemsize)
        _forward(t, dims, flags, B)
        if mode == "rev":
            _sweep(t, dims[::-1], flags[::-1], B)
        elif mode == "fwd":
            _sweep(t, dims, flags, B)
            t.seconds /= device.fwd_efficiency
        elif mode == "chain":
            _chain_tree(t, optimal_order(tuple(dims), tuple(flags)), flags, B)
        else:
            _backprop(t, dims, B)
        out.append((mode, (t.flops, t.bytes, t.seconds)))
    return tuple(out)


@functools.lru_cache(maxsize=512)
def _cost(dims, flags, batch_size, itemsize, platform) -> JacobianCost:
    est = dict(_estimates(dims, flags, batch_size, itemsize, platform))
    flops = {m: est[m][0] for m in JACOBIAN_MODES}
    nbytes = {m: est[m][1] for m in JACOBIAN_MODES}
    seconds = {m: est[m][2] for m in JACOBIAN_MODES}
    best = "rev"
    for mode in ("chain", "fwd"):
        if MARGIN * seconds[mode] < seconds[best]:
            best = mode
    order = optimal_order(dims, flags).describe() if len(dims) > 1 else None
    return JacobianCost(batch_size, flops, nbytes, best, order)


# ---------------------------------------------------------------------------------------
# The chain-mode Jacobian
# ---------------------------------------------------------------------------------------


def chain_jacobian(chain: Chain, X: Array) -> Array:
    """Per-sample Jacobians `(B, out_width, in_width)` by the optimal matrix-chain order.

    Shared weights stay unbatched until they meet a per-sample factor, so products of a
    weight with a batch of matrices are single large matrix multiplications.
    """
    _, diags = chain_forward(chain, X)
    weights = [s.weight for s in chain.linears]
    B = X.shape[0]
    n = len(weights)
    if n == 0:
        d = diags[0] if diags[0] is not None else jnp.ones((B, chain.in_width), X.dtype)
        return jax.vmap(jnp.diag)(d)
    order = _chain_order(chain)

    def product(i: int, j: int) -> tuple[Array, bool]:
        """Product W_j D_{j-1} ... D_i W_i; returns (array, is_batched)."""
        if i == j:
            return weights[i - 1], False
        k = order.split[(i, j)]
        left, lb = product(k + 1, j)
        right, rb = product(i, k)
        d = diags[k]
        ls = "bjk" if lb else "jk"
        rs = "bki" if rb else "ki"
        if d is None:
            if not (lb or rb):
                return jnp.einsum(f"{ls},{rs}->ji", left, right), False
            return jnp.einsum(f"{ls},{rs}->bji", left, right), True
        # Scale the smaller neighbour by the diagonal, then multiply.
        if left.shape[-2] <= right.shape[-1]:
            left = left * d[:, None, :]
            ls = "bjk"
        else:
            right = d[:, :, None] * right
            rs = "bki"
        return jnp.einsum(f"{ls},{rs}->bji", left, right), True

    J, batched = product(1, n)
    if not batched:
        J = jnp.broadcast_to(J, (B, *J.shape))
    if diags[n] is not None:
        J = diags[n][:, :, None] * J
    if diags[0] is not None:
        J = J * diags[0][:, None, :]
    return J
