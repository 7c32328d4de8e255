"""The cost model: device roofline constants, FLOP/byte tallies and `JacobianCost`.

Operations are counted as each Jacobian mode executes them; their time on a device is
estimated with a roofline `max(FLOPs / peak, bytes / bandwidth) + overhead`. Only the ratios
between modes matter for `auto`, so typical constants of a device kind do.
"""

from __future__ import annotations

import dataclasses

import jax

from ._order import ChainOrder, optimal_order


@dataclasses.dataclass(frozen=True)
class JacobianCost:
    """The cost model's estimate for each input-Jacobian mode.

    **Fields:**

    - `batch_size`: the batch the numbers are for.
    - `flops`: mode -> floating-point operations (2 per multiply-add) for the whole batch.
    - `bytes`: mode -> bytes moved (operands read, results written), for the batch.
    - `best`: the mode `input_jacobian(mode="auto")` picks.
    - `order`: the bracketing `auto`'s structured modes would use: the optimal
        multiplication order of the dense factors (`chain`), or of the segments found in
        the program (`segments`); `None` if neither applies.
    - `seconds`: mode -> estimated time on the device kind `device` (a roofline model with
        typical constants: for ranking modes, not a promise).
    - `bracketing`: on a layer chain whose program was traced, the segment plan's
        bracketing (which `auto` weighs against chain); `None` otherwise (then `order`
        is the bracketing).
    """

    batch_size: int
    flops: dict[str, float]
    bytes: dict[str, float]
    best: str
    order: str | None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    device: str = ""
    bracketing: str | None = None

    def __str__(self) -> str:
        rows = [f"{'mode':<10}{'GFLOP':>12}{'MB':>12}{'est. time':>12}"]
        for m in self.flops:
            mark = "  <- auto" if m == self.best else ""
            est = self.seconds.get(m)
            t = "" if est is None else format_seconds(est)
            rows.append(
                f"{m:<10}{self.flops[m] / 1e9:>12.4g}{self.bytes[m] / 1e6:>12.4g}{t:>12}{mark}"
            )
        if self.order:
            rows.append(f"order of the products: {self.order}")
        if self.bracketing:
            rows.append(f"segment plan: {self.bracketing}")
        if self.seconds and self.device:
            rows.append(f"(estimated times: roofline model of a typical {self.device})")
        return "\n".join(rows)


def format_seconds(s: float | None) -> str:
    """`1.5 ms`, `320 µs`, ...; `-` for `None`."""
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


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


def _estimate(dims, flags, batch_size, itemsize, device, sweep) -> tuple[float, float, float]:
    t = _Tally(device, itemsize)
    _forward(t, list(dims), list(flags), batch_size)
    sweep(t, list(dims), list(flags), batch_size)
    return t.flops, t.bytes, t.seconds


def rev_estimate(dims, flags, batch_size, itemsize, device) -> tuple[float, float, float]:
    """`(flops, bytes, seconds)` of `vmap(jacrev)` on a chain: the forward pass, then an
    identity seed of `out` rows swept back through the layers (`_sweep`)."""

    def sweep(t, d, f, B):
        _sweep(t, d[::-1], f[::-1], B)

    return _estimate(dims, flags, batch_size, itemsize, device, sweep)


def fwd_estimate(dims, flags, batch_size, itemsize, device) -> tuple[float, float, float]:
    """`vmap(jacfwd)` on a chain: `in` tangents swept forward, at `fwd_efficiency`."""
    flops, nbytes, seconds = _estimate(dims, flags, batch_size, itemsize, device, _sweep)
    return flops, nbytes, seconds / device.fwd_efficiency


def chain_order_estimate(dims, flags, batch_size, itemsize, device) -> tuple[float, float, float]:
    """The chain mode: the dense factors multiplied in the optimal order (`_chain_tree`)."""

    def products(t, d, f, B):
        _chain_tree(t, optimal_order(tuple(d), tuple(f)), f, B)

    return _estimate(dims, flags, batch_size, itemsize, device, products)


def backprop_estimate(dims, flags, batch_size, itemsize, device) -> tuple[float, float, float]:
    """The hand-written kernel's output-side recursion (`_backprop`)."""

    def recursion(t, d, f, B):
        _backprop(t, d, B)

    return _estimate(dims, flags, batch_size, itemsize, device, recursion)
