"""Engine paths the mutation campaign (`benchmarks/mutants.py`) found covered by a single
(or no) test: activations applied to the input itself and at the output of a Sequential,
for every chain-based mode, against float64 autodiff; the forward-mode slowdown in the
chain cost model."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import jacsens
from jacsens import _cost

from helpers import assert_close, init_model, random_inputs


def _sequential(key, dtype):
    # sin on the input (the input-side diagonal g_0), two activations in a row in the
    # middle, softplus on the output: every diagonal factor of the chain is non-trivial
    def build(k):
        k1, k2 = jax.random.split(k)
        return eqx.nn.Sequential(
            [
                eqx.nn.Lambda(jnp.sin),
                eqx.nn.Linear(4, 6, key=k1, dtype=dtype),
                eqx.nn.Lambda(jnp.tanh),
                eqx.nn.Lambda(jax.nn.sigmoid),
                eqx.nn.Linear(6, 3, use_bias=False, key=k2, dtype=dtype),
                eqx.nn.Lambda(jax.nn.softplus),
            ]
        )

    return init_model(build, key)


@pytest.mark.parametrize("mode", ["chain", "backprop", "rev", "fwd", "auto"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_input_and_output_activations_in_every_chain_mode(getkey, mode, dtype):
    model = _sequential(getkey(), dtype)
    X = random_inputs(getkey(), 5, (4,), dtype=dtype)
    J = jacsens.input_jacobian(model, X, mode=mode)
    assert J.dtype == dtype and J.shape == (5, 3, 4)
    m64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
    want = jax.vmap(jax.jacrev(m64))(X.astype(jnp.float64))
    assert_close(J, want, 1e-5 if dtype == jnp.float32 else 1e-12)


def test_fwd_estimate_is_slowed_by_fwd_efficiency_only():
    # vmap(jacfwd)'s tangent layout runs at `fwd_efficiency` of the speed of the other
    # modes' products: its estimated time is the roofline time divided by it, its FLOPs
    # and bytes unchanged, and no other mode's estimate depends on it
    dims, flags = (30, 20, 5), (False, True, False)
    cpu = _cost.DEVICE_MODELS["cpu"]
    assert cpu.fwd_efficiency == 0.5
    neutral = dataclasses.replace(cpu, fwd_efficiency=1.0)
    slow, fast = (_cost.fwd_estimate(dims, flags, 16, 4, d) for d in (cpu, neutral))
    assert slow[:2] == fast[:2]
    assert slow[2] == pytest.approx(fast[2] / cpu.fwd_efficiency, rel=1e-12)
    assert _cost.rev_estimate(dims, flags, 16, 4, cpu) == _cost.rev_estimate(
        dims, flags, 16, 4, neutral
    )
