"""The roofline cost model: FLOP counts by hand, the modes it picks, the device models."""

import math

import jax
import jax.numpy as jnp
import pytest

import jacsens
from jacsens import _cost
from jacsens._cost import DEVICE_MODELS, MARGIN, device_model
from jacsens._modes import Auto
from jacsens._plan import Plan
from jacsens._program._chain import read_chain

from helpers import random_mlp


def chain_estimates(chain, B, itemsize, platform=None):
    """Per mode `(flops, bytes, seconds)` of a chain's Jacobian for a batch of `B`."""
    spec = chain.spec
    fns = {
        "rev": _cost.rev_estimate,
        "fwd": _cost.fwd_estimate,
        "chain": _cost.chain_order_estimate,
        "backprop": _cost.backprop_estimate,
    }
    args = (spec.dims, spec.flags, B, itemsize, device_model(platform))
    return {name: fn(*args) for name, fn in fns.items()}


def chain_cost(chain, B, itemsize, platform=None):
    """The `JacobianCost` a plan for a model with this chain reports (and auto follows)."""
    dtype = jnp.dtype(jnp.float32 if itemsize == 4 else jnp.float64)
    plan = Plan(chain.in_shape, chain.out_shape, dtype, dtype, dtype, B, chain.spec, None, Auto())
    return plan.cost(B, platform)


def test_flops_hand_count(getkey):
    """2-3-1 tanh net, B = 1, counted by hand (2 FLOPs per multiply-add, 1 per scaling,
    4 per activation value and derivative)."""
    m = random_mlp(getkey(), 2, (3,), 1, "tanh")
    cost = jacsens.jacobian_cost(m, 1)
    forward = 2 * 2 * 3 + 4 * 3 + 2 * 3 * 1  # W1 x, tanh and tanh', W2 a
    # rev: seed 1×1 @ W2 (1×3), scale by tanh' (3), then (1×3) @ W1 (3×2)
    assert cost.flops["rev"] == forward + 2 * 3 + 3 + 2 * 3 * 2
    # fwd: seed 2×2 @ W1ᵀ (2×3), scale (2·3), then (2×3) @ W2ᵀ (3×1)
    assert cost.flops["fwd"] == forward + 2 * 2 * 2 * 3 + 6 + 2 * 2 * 3
    # chain: scale W2 (the smaller neighbour, 1×3), then (1×3) @ W1 — no seed product
    assert cost.flops["chain"] == forward + 3 + 2 * 3 * 2
    # backprop: G = diag(g2) W2 (3), G diag(g1) (3), G W1 (1×3 @ 3×2), input scaling (2)
    assert cost.flops["backprop"] == forward + 3 + 3 + 2 * 3 * 2 + 2


@pytest.mark.parametrize("B", [1, 7, 1024])
def test_rev_fwd_flops_formula(getkey, B):
    """rev = forward + the seed product once + per sample `out` passes through the rest."""
    dims = [5, 7, 4, 3]
    m = random_mlp(getkey(), dims[0], dims[1:-1], dims[-1], "tanh")
    cost = jacsens.jacobian_cost(m, B)
    forward = sum(2 * B * a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
    forward += sum(4 * B * w for w in dims[1:-1])
    n_out, n_in = dims[-1], dims[0]
    rev = 2 * n_out * dims[3] * dims[2] + sum(
        2 * B * n_out * dims[k] * dims[k - 1] + B * n_out * dims[k] for k in (1, 2)
    )
    fwd = 2 * n_in * dims[0] * dims[1] + sum(
        2 * B * n_in * dims[k] * dims[k + 1] + B * n_in * dims[k] for k in (1, 2)
    )
    assert cost.flops["rev"] == forward + rev
    assert cost.flops["fwd"] == forward + fwd


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("B", [1, 64, 4096])
def test_bottleneck_picks_chain(getkey, platform, B):
    m = random_mlp(getkey(), 784, (1024, 16, 1024), 784, "tanh", dtype=jnp.float32)
    cost = chain_cost(read_chain(m), B, 4, platform)
    assert cost.best == "chain"
    est = chain_estimates(read_chain(m), B, 4, platform)
    # several times faster once the batch is large enough to fill the device
    speedup = 3 if B >= 64 else 1.2
    assert speedup * est["chain"][2] < min(est["rev"][2], est["fwd"][2])


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
@pytest.mark.parametrize(
    "in_size, widths, out_size, B",
    [
        (52, (20, 10), "scalar", 1_000_000),
        (52, (20, 10), "scalar", 16),
        (784, (512, 512), 10, 256),
        (2048, (256, 256), 4, 512),
        (4, (256, 256), 2048, 512),
        (64, (256, 256, 256), 256, 128),
    ],
)
def test_auto_choice_is_near_minimal(getkey, platform, in_size, widths, out_size, B):
    """`best` has the least estimated time of rev/fwd/chain, up to the margin, and never the
    mode that is orders of magnitude off (fwd on tall nets, rev on wide ones)."""
    m = random_mlp(getkey(), in_size, widths, out_size, "tanh", dtype=jnp.float32)
    chain = read_chain(m)
    cost = chain_cost(chain, B, 4, platform)
    seconds = {k: v[2] for k, v in chain_estimates(chain, B, 4, platform).items()}
    fastest = min(seconds[k] for k in ("rev", "fwd", "chain"))
    assert seconds[cost.best] <= MARGIN * fastest
    n_in, n_out = chain.in_width, chain.out_width
    if n_in >= 10 * n_out:
        assert cost.best != "fwd"
    if n_out >= 10 * n_in:
        assert cost.best != "rev"


def test_preference_on_ties(getkey):
    """Where chain's order is the reverse sweep (one output), rev is kept; where it is the
    forward sweep (one input), chain is taken over jacfwd on CPU."""
    tall = read_chain(random_mlp(getkey(), 100, (50, 50), 1, "tanh", dtype=jnp.float32))
    wide = read_chain(random_mlp(getkey(), 1, (50, 50), 100, "tanh", dtype=jnp.float32))
    assert chain_cost(tall, 256, 4, "cpu").best == "rev"
    assert chain_cost(wide, 256, 4, "cpu").best == "chain"
    assert chain_cost(wide, 256, 4, "gpu").best in ("chain", "fwd")


def test_device_model_and_roofline(getkey):
    assert device_model("cuda") is DEVICE_MODELS["gpu"]
    assert device_model("CPU") is DEVICE_MODELS["cpu"]
    assert device_model(None) is device_model(jax.default_backend())
    m = random_mlp(getkey(), 16, (32,), 8, "tanh", dtype=jnp.float32)
    chain = read_chain(m)
    dev = DEVICE_MODELS["cpu"]
    for flops, nbytes, seconds in chain_estimates(chain, 64, 4, "cpu").values():
        # a sum over operations of max(compute, memory) + overhead: between the two bounds
        lower = max(flops / dev.peak_flops, nbytes / dev.bandwidth)
        upper = flops / dev.peak_flops + nbytes / dev.bandwidth + 50 * dev.op_overhead
        assert lower <= seconds <= upper
    # float64 moves twice the bytes, same FLOPs
    c32, c64 = chain_cost(chain, 64, 4), chain_cost(chain, 64, 8)
    assert c32.flops == c64.flops
    assert all(math.isclose(2 * c32.bytes[k], c64.bytes[k]) for k in c32.bytes)
