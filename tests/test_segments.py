"""The structured-Jacobian engine: program view, bracketing DP, batched executor.

Every Jacobian is compared with `vmap(jacrev(model))` (or `vmap(jacfwd)` where reverse mode
does not apply) in float64 to 1e-12 and in float32 to 1e-5 relative; the DP is compared
with brute force over every plan.
"""

from __future__ import annotations

import dataclasses
import math
import random

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import jacsens
from jacsens._order import optimal_order
from jacsens._program._bracket import (
    Materialise,
    Split,
    _all_plans,
    _Model,
    _optimal,
    _plan_cost,
    all_bracketings,
    plan_bracketing,
    program_costs,
)
from jacsens._program._segments import segments_jacobian
from jacsens._program._trace import SegmentInfo, model_leaves, trace_program

from helpers import init_model, random_mlp, rel_err

TOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.float64): 1e-12}
_execute = jax.jit(segments_jacobian, static_argnums=(0, 1))


def _cast(model, dtype):
    def cast(a):
        if isinstance(a, jax.ShapeDtypeStruct):  # a skeleton from eqx.filter_eval_shape
            return jax.ShapeDtypeStruct(a.shape, dtype)
        return a.astype(dtype) if eqx.is_inexact_array(a) else a

    return jax.tree.map(cast, model)


# ---------------------------------------------------------------------------------------
# Model families (small)
# ---------------------------------------------------------------------------------------


class ConvAE(eqx.Module):
    """1×s×s → latent → 1×s×s; s divisible by 4."""

    enc: list
    dec: list
    side: int = eqx.field(static=True)

    def __init__(self, key, side=8, latent=3, ch=(4, 6)):
        k = jax.random.split(key, 6)
        q = side // 4
        self.side = side
        self.enc = [
            eqx.nn.Conv2d(1, ch[0], 3, stride=2, padding=1, key=k[0]),
            eqx.nn.Conv2d(ch[0], ch[1], 3, stride=2, padding=1, key=k[1]),
            eqx.nn.Linear(ch[1] * q * q, latent, key=k[2]),
        ]
        self.dec = [
            eqx.nn.Linear(latent, ch[1] * q * q, key=k[3]),
            eqx.nn.ConvTranspose2d(ch[1], ch[0], 4, stride=2, padding=1, key=k[4]),
            eqx.nn.ConvTranspose2d(ch[0], 1, 4, stride=2, padding=1, key=k[5]),
        ]

    def __call__(self, x):
        h = jax.nn.gelu(self.enc[0](x))
        h = jax.nn.gelu(self.enc[1](h))
        z = self.enc[2](h.reshape(-1))
        q = self.side // 4
        h = jax.nn.gelu(self.dec[0](z)).reshape(-1, q, q)
        h = jax.nn.gelu(self.dec[1](h))
        return self.dec[2](h)


class ResBottleneck(eqx.Module):
    a: list
    b: list
    mid: eqx.nn.Linear
    up: eqx.nn.Linear
    norms: list

    def __init__(self, key, d=12, width=20, latent=3):
        k = jax.random.split(key, 6)
        self.a = [eqx.nn.Linear(d, width, key=k[0]), eqx.nn.Linear(width, d, key=k[1])]
        self.mid = eqx.nn.Linear(d, latent, key=k[2])
        self.up = eqx.nn.Linear(latent, d, key=k[3])
        self.b = [eqx.nn.Linear(d, width, key=k[4]), eqx.nn.Linear(width, d, key=k[5])]
        self.norms = [eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)]

    def __call__(self, x):
        h = x + self.a[1](jax.nn.gelu(self.a[0](self.norms[0](x))))
        h = self.up(self.mid(h))
        return h + self.b[1](jax.nn.gelu(self.b[0](self.norms[1](h))))


class UNetNoSkip(eqx.Module):
    """Conv down (pooling), narrow middle, conv up; no skip connections."""

    down: list
    up: list

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.down = [
            eqx.nn.Conv2d(2, 4, 3, padding=1, key=k[0]),
            eqx.nn.Conv2d(4, 1, 3, stride=2, padding=1, key=k[1]),
        ]
        self.up = [
            eqx.nn.ConvTranspose2d(1, 4, 4, stride=2, padding=1, key=k[2]),
            eqx.nn.Conv2d(4, 2, 3, padding=1, key=k[3]),
        ]

    def __call__(self, x):
        h = jax.nn.relu(self.down[0](x))
        h = eqx.nn.AvgPool2d(2, 2)(h)
        h = jnp.tanh(self.down[1](h))
        h = jax.nn.silu(self.up[0](h))
        h = jax.image.resize(h, (h.shape[0], 8, 8), "linear")
        return self.up[1](h)


class MixerBlock(eqx.Module):
    """Attention + token mixing + channel MLP, with LayerNorm and residuals."""

    attn: eqx.nn.MultiheadAttention
    tok: eqx.nn.Linear
    ch: list
    norms: list

    def __init__(self, key, seq=4, d=6):
        k = jax.random.split(key, 4)
        self.attn = eqx.nn.MultiheadAttention(2, d, key=k[0])
        self.tok = eqx.nn.Linear(seq, seq, key=k[1])
        self.ch = [eqx.nn.Linear(d, 2 * d, key=k[2]), eqx.nn.Linear(2 * d, d, key=k[3])]
        self.norms = [eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)]

    def __call__(self, x):
        h = jax.vmap(self.norms[0])(x)
        x = x + self.attn(h, h, h)
        x = x + jax.vmap(self.tok)(x.T).T
        h = jax.vmap(self.norms[1])(x)
        return x + jax.vmap(lambda r: self.ch[1](jax.nn.gelu(self.ch[0](r))))(h)


class CNN(eqx.Module):
    convs: list
    head: eqx.nn.Linear

    def __init__(self, key, side=8, classes=3):
        k = jax.random.split(key, 3)
        self.convs = [
            eqx.nn.Conv2d(1, 4, 3, padding=1, key=k[0]),
            eqx.nn.Conv2d(4, 4, 3, padding=1, groups=4, key=k[1]),  # depthwise
        ]
        self.head = eqx.nn.Linear(4 * (side // 2) ** 2, classes, key=k[2])

    def __call__(self, x):
        h = jax.nn.relu(self.convs[0](x))
        h = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(self.convs[1](h)))
        return jax.nn.log_softmax(self.head(h.reshape(-1)))


class ScanRNN(eqx.Module):
    cell: eqx.nn.GRUCell
    out: eqx.nn.Linear
    steps: int = eqx.field(static=True)

    def __init__(self, key, steps=5, feat=3, hidden=4, out=6):
        k = jax.random.split(key, 2)
        self.cell = eqx.nn.GRUCell(feat, hidden, key=k[0])
        self.out = eqx.nn.Linear(hidden, out, key=k[1])
        self.steps = steps

    def __call__(self, x):
        x = x.reshape(self.steps, -1)
        h0 = jnp.zeros(self.cell.hidden_size, x.dtype)
        h, _ = jax.lax.scan(lambda h, xt: (self.cell(xt, h), None), h0, x)
        return jnp.tanh(self.out(h))


class CondModel(eqx.Module):
    lin: eqx.nn.Linear
    lin2: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 2)
        self.lin = eqx.nn.Linear(6, 2, key=k[0])
        self.lin2 = eqx.nn.Linear(2, 7, key=k[1])

    def __call__(self, x):
        z = self.lin(jnp.sin(x))
        z = jax.lax.cond(z.sum() > 0, lambda a: jnp.tanh(a) * 2.0, lambda a: a**3, z)
        return self.lin2(z)


@jax.custom_jvp
def _softsign(x):
    return x / (1.0 + jnp.abs(x))


@_softsign.defjvp
def _softsign_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _softsign(x), t / (1.0 + jnp.abs(x)) ** 2


class CustomJVPNet(eqx.Module):
    layers: list

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.layers = [
            eqx.nn.Linear(7, 9, key=k[0]),
            eqx.nn.Linear(9, 2, key=k[1]),
            eqx.nn.Linear(2, 8, key=k[2]),
        ]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = _softsign(layer(x))
        return self.layers[-1](x)


FAMILIES = {
    "conv_ae": (ConvAE, (1, 8, 8)),
    "res_ln": (ResBottleneck, (12,)),
    "unet_noskip": (UNetNoSkip, (2, 8, 8)),
    "mixer": (MixerBlock, (4, 6)),
    "cnn": (CNN, (1, 8, 8)),
    "jacsens_mlp": (lambda k: jacsens.MLP(9, (12, 2, 12), 9, "tanh", key=k), (9,)),
    "eqx_mlp": (lambda k: eqx.nn.MLP(5, 3, 8, 2, jax.nn.softplus, key=k), (5,)),
    "scan_rnn": (ScanRNN, (15,)),
    "cond": (CondModel, (6,)),
    "custom_jvp": (CustomJVPNet, (7,)),
}


def _make(name, dtype=jnp.float64):
    # parameters drawn by numpy (no JAX random op, so no compilation), scaled down so
    # that deep random nets stay in a range where relative errors mean something
    build, in_shape = FAMILIES[name]
    model = init_model(build, jax.random.key(sum(map(ord, name))))
    model = jax.tree.map(lambda a: a * 0.5 if eqx.is_inexact_array(a) else a, model)
    return _cast(model, dtype), in_shape


def _check(model, in_shape, dtype, B=3, cuts="auto", reference=None):
    model = _cast(model, dtype)
    X = jax.random.normal(jax.random.key(7), (B, *in_shape), dtype)
    program = trace_program(model, jax.ShapeDtypeStruct(in_shape, dtype), cuts=cuts)
    br = plan_bracketing(program, B, jnp.dtype(dtype).itemsize)
    J = _execute(program, br, model_leaves(model), X)
    ref = (reference or jax.jacrev)(model)
    Jr = jax.jit(jax.vmap(ref))(X).reshape(J.shape)
    assert J.dtype == jnp.dtype(dtype)
    err = rel_err(J, Jr)
    assert err <= TOL[jnp.dtype(dtype)], (err, br.describe())
    return program, br


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_families_match_jacrev(name, dtype):
    model, in_shape = _make(name, dtype)
    _check(model, in_shape, dtype)


@pytest.mark.parametrize("name", ["conv_ae", "scan_rnn"])
def test_every_candidate_cut_matches_jacrev(name):
    # unpruned cuts: more segments, so more of the executor's node kinds are exercised
    model, in_shape = _make(name)
    _check(model, in_shape, jnp.float64, cuts="candidates")


def test_narrow_models_split_at_the_narrow_layer():
    # the reference models of the issue, at full size (tracing only)
    for model, in_shape, narrow in [
        (lambda k: ConvAE(k, side=28, latent=16, ch=(8, 16)), (1, 28, 28), 16),
        (lambda k: ResBottleneck(k, d=256, width=512, latent=8), (256,), 8),
    ]:
        model = _cast(eqx.filter_eval_shape(model, jax.random.key(0)), jnp.float32)
        program = trace_program(model, jax.ShapeDtypeStruct(in_shape, jnp.float32))
        assert len(program.segments) == 2
        assert [program.widths[c] for c in program.cuts] == [narrow]
        assert program.segments[0].info.out_width == narrow
        br = plan_bracketing(program, 8, 4)
        costs = program_costs(program, 8, 4)
        assert costs["segments"][2] == pytest.approx(br.seconds)
        # a factor of the narrow width on each side: far cheaper than either sweep
        assert costs["segments"][0] * 10 < min(costs["rev"][0], costs["fwd"][0])
        assert br.describe() in ("fwd(S2) · rev(S1)", "rev(S2) ∘ vjp(S1)", "jvp(S2) ∘ rev(S1)")


def test_no_useful_cut_collapses_to_one_segment():
    build = lambda k: CNN(k, side=28, classes=10)  # noqa: E731
    model = _cast(eqx.filter_eval_shape(build, jax.random.key(0)), jnp.float32)
    program = trace_program(model, jax.ShapeDtypeStruct((1, 28, 28), jnp.float32))
    assert len(program.segments) == 1
    br = plan_bracketing(program, 32, 4)
    assert br.describe() == "rev(S1)"
    costs = program_costs(program, 32, 4)
    assert costs["segments"] == costs["rev"]


def test_every_bracketing_is_correct():
    # widths 6 -> 10 -> 2 | +b, tanh (diagonal) | 2 -> 10 -> 3 -> 8: three segments
    k = jax.random.split(jax.random.key(3), 5)
    lins = [
        eqx.nn.Linear(a, b, key=kk)
        for (a, b), kk in zip([(6, 10), (10, 2), (2, 10), (10, 3), (3, 8)], k, strict=True)
    ]

    def f(ls, x):
        h = jnp.tanh(ls[1](jnp.tanh(ls[0](x))))
        h = ls[3](jax.nn.gelu(ls[2](h)))
        return ls[4](jnp.sin(h))

    model = jax.tree_util.Partial(f, [_cast(m, jnp.float64) for m in lins])
    struct = jax.ShapeDtypeStruct((6,), jnp.float64)
    full = trace_program(model, struct, cuts="candidates")
    narrow = [p for p in full.candidates if full.widths[p] == 2]
    program = trace_program(model, struct, cuts=narrow)
    assert len(program.segments) == 3
    assert [s.info.diagonal for s in program.segments] == [False, True, False]
    plans = all_bracketings(program)
    kinds = {type(p.tree).__name__ for p in plans} | {
        p.tree.how for p in plans if isinstance(p.tree, Materialise)
    }
    assert {"Split", "Push", "Pull", "rev", "fwd"} <= kinds
    assert any("diag(S2)" in p.describe() for p in plans)
    assert len(plans) == 84  # every tree over 3 segments, diag(S2) included
    X = jax.random.normal(jax.random.key(4), (2, 6), jnp.float64)
    Jr = jax.vmap(jax.jacrev(model))(X)
    leaves = model_leaves(model)

    @jax.jit
    def all_jacobians(leaves, X):
        return jnp.stack([segments_jacobian(program, p, leaves, X) for p in plans])

    Js = all_jacobians(leaves, X)
    for p, J in zip(plans, Js, strict=True):
        assert rel_err(J, Jr) <= 1e-12, p.describe()


# ---------------------------------------------------------------------------------------
# The dynamic programme against brute force
# ---------------------------------------------------------------------------------------


class _Device:
    peak_flops, bandwidth, op_overhead, fwd_efficiency = 2e11, 2e10, 2e-6, 0.5


def _random_infos(rng: random.Random, K: int) -> tuple[SegmentInfo, ...]:
    widths = [rng.choice([1, 2, 3, 8, 40, 200]) for _ in range(K + 1)]
    infos = []
    for k in range(K):
        diag = widths[k] == widths[k + 1] and rng.random() < 0.5
        infos.append(
            SegmentInfo(
                in_width=widths[k],
                out_width=widths[k + 1],
                flops=rng.uniform(1e2, 1e6),
                act_elems=rng.uniform(1e1, 1e4),
                param_elems=rng.uniform(0, 1e5),
                ops=rng.choice([1.0, 3.0, 10.0]),
                max_width=max(widths[k], widths[k + 1]) * rng.choice([1, 4]),
                diagonal=diag,
                affine=rng.random() < 0.3,
                fwd_ok=rng.random() < 0.9,
                rev_ok=rng.random() < 0.9,
            )
        )
    return tuple(infos)


@pytest.mark.parametrize("seed", range(40))
def test_dp_equals_brute_force(seed):
    rng = random.Random(seed)
    K = 1 + seed % 4
    model = _Model(_random_infos(rng, K), rng.choice([1, 8, 64]), rng.choice([4, 8]), _Device())
    plans = list(_all_plans(model, 0, K))
    if not plans:
        with pytest.raises(ValueError, match="program"):
            _optimal(model)
        return
    brute = min(_plan_cost(p, model).seconds for p in plans)
    cost, tree = _optimal(model)
    assert cost.seconds == pytest.approx(brute, rel=1e-12)
    assert _plan_cost(tree, model).seconds == pytest.approx(brute, rel=1e-12)


def test_dp_single_segment_is_plain_rev_or_fwd():
    wide_out = SegmentInfo(4, 100, 1e5, 1e3, 1e4, 2.0, 100)
    wide_in = SegmentInfo(100, 4, 1e5, 1e3, 1e4, 2.0, 100)
    _, t = _optimal(_Model((wide_out,), 8, 4, _Device()))
    assert t == Materialise(0, 1, "fwd")
    _, t = _optimal(_Model((wide_in,), 8, 4, _Device()))
    assert t == Materialise(0, 1, "rev")


def test_dp_splits_an_mlp_like_the_matrix_chain_order():
    # a bottleneck chain 100 -> 100 -> 2 -> 100 -> 100: every optimal order multiplies
    # across the width-2 cut, never through it with 100 seeds
    dims = [100, 100, 2, 100, 100]
    infos = tuple(
        SegmentInfo(a, b, 2.0 * a * b, a + b, a * b, 1.0, max(a, b))
        for a, b in zip(dims[:-1], dims[1:], strict=True)
    )
    model = _Model(infos, 16, 4, _Device())
    cost, tree = _optimal(model)
    assert 2 in {getattr(tree, "k", None)}
    whole = min(_plan_cost(Materialise(0, 4, h), model).seconds for h in ("rev", "fwd"))
    assert cost.seconds * 5 < whole


# ---------------------------------------------------------------------------------------
# Tracing: static reuse, pytrees, errors, control flow
# ---------------------------------------------------------------------------------------


def test_program_reused_with_traced_weights_and_inside_jit():
    m1, in_shape = _make("res_ln")
    m2 = jax.tree.map(lambda a: a * 1.5 if eqx.is_inexact_array(a) else a, m1)
    struct = jax.ShapeDtypeStruct(in_shape, jnp.float64)
    program = trace_program(m1, struct)
    br = plan_bracketing(program, 2, 8)
    X = jax.random.normal(jax.random.key(1), (2, *in_shape), jnp.float64)

    @eqx.filter_jit
    def jac(model, X):
        return segments_jacobian(program, br, model_leaves(model), X)

    @eqx.filter_jit
    def traced_inside(model, X):  # the program built from a model of tracers
        p = trace_program(model, struct)
        return segments_jacobian(p, plan_bracketing(p, 2, 8), model_leaves(model), X)

    for m in (m1, m2):
        Jr = jax.vmap(jax.jacrev(m))(X)
        assert rel_err(jac(m, X), Jr) <= 1e-12
        assert rel_err(traced_inside(m, X), Jr) <= 1e-12
    assert not any(isinstance(c, jax.Array) and c.size > 1 for c in program.consts), (
        "the program must not hold the model's weights"
    )


def test_pytree_input_and_output():
    k = jax.random.split(jax.random.key(5), 3)
    lin_a = eqx.nn.Linear(3, 2, key=k[0])
    lin_b = eqx.nn.Linear(4, 2, key=k[1])
    lin_c = eqx.nn.Linear(2, 5, key=k[2])

    def f(mods, x):
        z = jnp.tanh(mods[0](x["a"]) + mods[1](x["b"].reshape(-1)))
        return {"y": mods[2](z), "const": jnp.ones(2), "z": z}

    model = jax.tree_util.Partial(f, [_cast(m, jnp.float64) for m in (lin_a, lin_b, lin_c)])
    struct = {
        "a": jax.ShapeDtypeStruct((3,), jnp.float64),
        "b": jax.ShapeDtypeStruct((2, 2), jnp.float64),
    }
    X = {
        "a": jax.random.normal(jax.random.key(1), (4, 3), jnp.float64),
        "b": jax.random.normal(jax.random.key(2), (4, 2, 2), jnp.float64),
    }
    program = trace_program(model, struct, cuts="candidates")
    J = _execute(program, plan_bracketing(program, 4, 8), model_leaves(model), X)

    def flat(x):
        out = model({"a": x[:3], "b": x[3:].reshape(2, 2)})
        return jnp.concatenate([v.reshape(-1) for v in jax.tree.leaves(out)])

    Xf = jnp.concatenate([X["a"], X["b"].reshape(4, -1)], axis=1)
    Jr = jax.vmap(jax.jacrev(flat))(Xf)
    assert J.shape == (4, 9, 7)
    assert rel_err(J, Jr) <= 1e-12
    assert np.all(np.asarray(J[:, :2]) == 0.0)  # "const", the first leaf (keys sorted)


def test_while_loop_uses_forward_mode_and_custom_vjp_reverse_mode():
    k = jax.random.split(jax.random.key(6), 2)
    lin1, lin2 = eqx.nn.Linear(5, 2, key=k[0]), eqx.nn.Linear(2, 6, key=k[1])

    @jax.custom_vjp
    def clip_grad(x):
        return jnp.sin(x)

    clip_grad.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))

    def f(mods, x):
        z = mods[0](x)
        z = jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, jnp.tanh(c[1])), (0, z))[1]
        return mods[1](z)

    def g(mods, x):
        return mods[1](clip_grad(mods[0](x)))

    for fn, ref, forbidden in ((f, jax.jacfwd, "rev"), (g, jax.jacrev, "fwd")):
        model = jax.tree_util.Partial(fn, [_cast(m, jnp.float64) for m in (lin1, lin2)])
        program, br = _check(model, (5,), jnp.float64, cuts="candidates", reference=ref)
        assert len(program.segments) >= 2
        flag = "rev_ok" if forbidden == "rev" else "fwd_ok"
        assert [getattr(s.info, flag) for s in program.segments].count(False) == 1
        assert program_costs(program, 3, 8)[forbidden][2] == math.inf


@pytest.mark.parametrize(
    "body",
    [
        lambda x: x * 2 if x.sum() > 0 else x,  # Python control flow on a value
        lambda x: x[x > 0].sum() * x,  # data-dependent shape
    ],
)
def test_untraceable_model_names_model(body):
    with pytest.raises(ValueError, match="model"):
        trace_program(body, jax.ShapeDtypeStruct((4,), jnp.float32))


def test_bad_arguments_are_named():
    model = _cast(eqx.nn.Linear(3, 2, key=jax.random.key(0)), jnp.float32)
    with pytest.raises(ValueError, match="x_struct"):
        trace_program(model, jax.ShapeDtypeStruct((3,), jnp.int32))
    with pytest.raises(ValueError, match="model"):
        trace_program(lambda x: (x > 0).astype(jnp.int32), jax.ShapeDtypeStruct((3,), jnp.float32))
    program = trace_program(model, jax.ShapeDtypeStruct((3,), jnp.float32))
    with pytest.raises(ValueError, match="cuts"):
        trace_program(model, jax.ShapeDtypeStruct((3,), jnp.float32), cuts=[99])
    br = plan_bracketing(program, 2, 4)
    with pytest.raises(ValueError, match="X"):
        segments_jacobian(program, br, model_leaves(model), jnp.ones((2, 4), jnp.float32))
    with pytest.raises(ValueError, match="leaves"):
        segments_jacobian(program, br, [], jnp.ones((2, 3), jnp.float32))


def test_constant_and_identity_outputs():
    X = jax.random.normal(jax.random.key(0), (2, 3), jnp.float64)
    for fn in (lambda x: x, lambda x: jnp.ones(4, x.dtype) * 2.0, lambda x: jnp.stack([x, x])):
        program = trace_program(fn, jax.ShapeDtypeStruct((3,), jnp.float64))
        J = segments_jacobian(program, plan_bracketing(program, 2, 8), [], X)
        Jr = jax.vmap(jax.jacrev(fn))(X).reshape(J.shape)
        assert rel_err(J, Jr) <= 1e-12


# ---------------------------------------------------------------------------------------
# Random architectures
# ---------------------------------------------------------------------------------------


class _RandomNet(eqx.Module):
    layers: list
    kinds: tuple = eqx.field(static=True)

    def __call__(self, x):
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            if kind == "linear":
                x = layer(x)
            elif kind == "act":
                x = jax.nn.gelu(x)
            elif kind == "norm":
                x = layer(x)
            elif kind == "res":
                x = x + layer[1](jnp.tanh(layer[0](x)))
            elif kind == "conv":
                c = layer.in_channels
                x = layer(x.reshape(c, -1)).reshape(-1)
            elif kind == "double":  # two branches of different widths live together
                x = jnp.concatenate([layer[0](x), jnp.sin(layer[1](x))])
        return x


@st.composite
def _architectures(draw):
    width = draw(st.sampled_from([4, 6, 8]))
    n = width
    kinds, specs = [], []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["linear", "act", "norm", "res", "conv", "double"]))
        if kind == "linear":
            new = draw(st.sampled_from([1, 2, 3, 6, 8, 12]))
            specs.append((width, new))
            width = new
        elif kind == "conv":
            if width % 2:
                continue
            specs.append((width,))
        elif kind == "double":
            a, b = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            specs.append((width, a, b))
            width = a + b
        else:
            specs.append((width,))
        kinds.append(kind)
    return n, tuple(kinds), tuple(specs), draw(st.integers(0, 2**16))


def _build(kinds, specs, seed):
    key = jax.random.key(seed)
    layers = []
    for kind, spec in zip(kinds, specs, strict=True):
        key, k1, k2 = jax.random.split(key, 3)
        if kind == "linear":
            layers.append(eqx.nn.Linear(spec[0], spec[1], key=k1))
        elif kind == "norm":
            layers.append(eqx.nn.LayerNorm(spec[0]))
        elif kind == "res":
            layers.append([eqx.nn.Linear(spec[0], 5, key=k1), eqx.nn.Linear(5, spec[0], key=k2)])
        elif kind == "conv":
            layers.append(eqx.nn.Conv1d(2, 2, 3, padding=1, key=k1))
        elif kind == "double":
            layers.append(
                [eqx.nn.Linear(spec[0], spec[1], key=k1), eqx.nn.Linear(spec[0], spec[2], key=k2)]
            )
        else:
            layers.append(None)
    return _RandomNet(layers, kinds)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_architectures(), st.sampled_from(["auto", "candidates"]))
def test_random_architectures_match_jacrev(arch, cuts):
    n, kinds, specs, seed = arch
    model = _build(kinds, specs, seed)
    program = trace_program(
        _cast(model, jnp.float64), jax.ShapeDtypeStruct((n,), jnp.float64), cuts=cuts
    )
    X = jax.random.normal(jax.random.key(seed), (2, n), jnp.float64)
    m64 = _cast(model, jnp.float64)
    J = _execute(program, plan_bracketing(program, 2, 8), model_leaves(m64), X)
    Jr = jax.jit(jax.vmap(jax.jacrev(m64)))(X).reshape(J.shape)
    assert rel_err(J, Jr) <= 1e-12, (kinds, program.describe())


def test_segment_structure_flags_and_flops():
    # one segment each (no cuts): the flags the DP relies on, and FLOPs counted by hand
    W = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)))
    x = jax.ShapeDtypeStruct((5,), jnp.float64)

    def info(f):
        return trace_program(f, x, cuts=()).infos[0]

    lin = info(lambda v: W @ v)
    assert lin.affine and not lin.diagonal
    assert lin.flops == 2 * 3 * 5  # a multiply-add is two FLOPs
    square = info(lambda v: (W @ v) * (W @ v))  # both factors depend on the input
    assert not square.affine and not square.diagonal
    scaled = info(lambda v: 2.0 * v)
    assert scaled.affine and scaled.diagonal
    elementwise = info(lambda v: jnp.sin(v) * v)
    assert elementwise.diagonal and not elementwise.affine


def test_forward_sweeps_are_costed_at_fwd_efficiency():
    # the tangent products of a forward sweep run at `fwd_efficiency` of the speed of the
    # same products in reverse mode: halving it adds exactly their roofline time once more
    info = SegmentInfo(12, 3, flops=4e5, act_elems=30.0, param_elems=36.0, ops=2.0, max_width=12)
    B, itemsize = 8, 4

    class Neutral(_Device):
        fwd_efficiency = 1.0

    slow, neutral = _Model((info,), B, itemsize, _Device()), _Model((info,), B, itemsize, Neutral())
    tangent = max(
        B * info.in_width * info.flops / _Device.peak_flops,
        (info.param_elems + B * info.in_width * info.act_elems) * itemsize / _Device.bandwidth,
    )
    fwd_slow = slow.materialise(0, 1, "fwd").seconds
    fwd_neutral = neutral.materialise(0, 1, "fwd").seconds
    assert fwd_slow - fwd_neutral == pytest.approx(tangent * (1 / _Device.fwd_efficiency - 1))
    # reverse sweeps do not depend on it
    assert slow.materialise(0, 1, "rev") == neutral.materialise(0, 1, "rev")


def test_pruning_keeps_exactly_the_cut_the_optimal_plan_uses():
    # dense layers 100 -> 50 -> 2 -> 50 -> 100 (positions 0..4), candidate cuts 1, 2, 3:
    # the optimal plan multiplies across the width-2 cut and no other cut pays for itself
    from jacsens._cost import DEVICE_MODELS
    from jacsens._program._bracket import prune_cuts

    w = [100, 50, 2, 50, 100]

    def infos_for(ps):
        bounds = [0, *ps, len(w) - 1]
        infos = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            layers = range(a, b)
            infos.append(
                SegmentInfo(
                    w[a],
                    w[b],
                    flops=sum(2.0 * w[i] * w[i + 1] for i in layers),
                    act_elems=float(sum(w[i] + w[i + 1] for i in layers)),
                    param_elems=float(sum(w[i] * w[i + 1] for i in layers)),
                    ops=float(b - a),
                    max_width=max(w[a : b + 1]),
                )
            )
        return tuple(infos)

    cpu = DEVICE_MODELS["cpu"]
    assert prune_cuts(infos_for, [1, 2, 3], cpu) == (2,)
    assert prune_cuts(infos_for, [2], cpu) == (2,)
    assert prune_cuts(infos_for, [], cpu) == ()


# ---------------------------------------------------------------------------------------
# Layer chains: the DP reproduces the matrix-chain order; auto weighs the segment plan
# ---------------------------------------------------------------------------------------


class _FlopsOnly:
    """A device on which time is FLOPs: no bandwidth limit, no kernel overhead."""

    peak_flops, bandwidth, op_overhead, fwd_efficiency = 1.0, math.inf, 0.0, 1.0


def _mlp_segments(dims):
    """The segments of an MLP `W_n ⋯ diag ⋯ W_2 diag W_1`: dense layers (affine, 2pq
    FLOPs per sample) and activations between them (diagonal, a FLOP per element)."""
    infos = []
    for k in range(1, len(dims)):
        a, b = dims[k - 1], dims[k]
        infos.append(SegmentInfo(a, b, 2.0 * a * b, a + b, a * b, 1.0, max(a, b), affine=True))
        if k < len(dims) - 1:
            infos.append(SegmentInfo(b, b, float(b), 2.0 * b, 0.0, 1.0, b, diagonal=True))
    return tuple(infos)


def _chain_order_as_plan(order, model):
    """`optimal_order`'s bracketing as a segment plan (W_k is segment 2k-1, the diagonal
    after it segment 2k): each split multiplies across its diagonal, applied as a scaling
    of the smaller neighbour, exactly as `chain_product` does; returns the plan and the
    elements the chain's scalings touch per sample."""
    dims = order.dims
    scaled = 0

    def leaf(k):
        options = [Materialise(2 * k - 2, 2 * k - 1, how) for how in ("rev", "fwd")]
        return min(options, key=lambda t: _plan_cost(t, model).seconds)

    def product(i, j):
        nonlocal scaled
        if i == j:
            return leaf(i)
        k = order.split[(i, j)]
        left, right, diag = product(k + 1, j), product(i, k), Materialise(2 * k - 1, 2 * k, "diag")
        lo, hi = 2 * i - 2, 2 * j - 1
        scaled += min(dims[j], dims[i - 1]) * dims[k]
        if dims[j] <= dims[i - 1]:
            return Split(lo, 2 * k - 1, hi, Split(2 * k - 1, 2 * k, hi, left, diag), right)
        return Split(lo, 2 * k, hi, left, Split(lo, 2 * k - 1, 2 * k, diag, right))

    return product(1, len(dims) - 1), scaled


@pytest.mark.parametrize("seed", range(4))
def test_dp_reproduces_the_matrix_chain_order_on_mlp_chains(seed):
    # Today's chain mode multiplies the dense factors in `optimal_order`'s bracketing. On
    # the same chain, as segments, the DP must find a plan exactly as cheap in products:
    # never dearer than that order, and cheaper at most by what the chain spends on the
    # diagonals (their extraction and its scalings, which the DP may fold into sweeps or
    # apply to a narrower neighbour). A huge batch makes the shared factors (a lone dense
    # layer, materialised once per batch) free per sample, as the chain's count has them.
    rng = random.Random(seed)
    B = 10**9
    for _ in range(25):
        dims = tuple(
            rng.choice([1, 2, 3, 5, 8, 16, 32, 64, 100, 300]) for _ in range(rng.randint(2, 7))
        )
        flags = (False, *([True] * (len(dims) - 2)), False)
        order = optimal_order(dims, flags)
        model = _Model(_mlp_segments(dims), B, 4, _FlopsOnly())
        plan, scaled = _chain_order_as_plan(order, model)
        chain_cost = _plan_cost(plan, model).seconds
        dp_cost = _optimal(model)[0].seconds
        diagonals = (sum(dims[1:-1]) + scaled) * B
        assert dp_cost <= chain_cost * (1 + 1e-12), (dims, order.describe())
        assert dp_cost >= (chain_cost - diagonals) * (1 - 1e-12), (dims, order.describe())


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_auto_weighs_the_segment_plan_on_layer_chains(dtype):
    from jacsens import _plan
    from jacsens._modes import MARGIN, Auto, Chain

    itemsize = jnp.dtype(dtype).itemsize
    # the benchmark's bottleneck MLP, B=8: the segment plan (a factor of width 16 on each
    # side) is estimated >10% below chain on the chain's footing, and auto runs it
    m = random_mlp(jax.random.key(5), 784, (1024, 16, 1024), 784, dtype=dtype)
    X = jax.random.normal(jax.random.key(1), (8, 784), dtype)
    plan = _plan.make_plan(m, X, "auto")
    assert plan.chain is not None and plan.program is not None
    assert plan.mode.name == "segments"
    cost = plan.cost()
    assert cost.best == "segments" and cost.bracketing == "fwd(S2) · rev(S1)"
    assert MARGIN * cost.seconds["segments"] < cost.seconds["chain"]
    J = jacsens.input_jacobian(m, X)
    Jr = jax.jit(jax.vmap(jax.jacrev(m)))(X)
    assert J.dtype == jnp.dtype(dtype) and rel_err(J, Jr) <= TOL[jnp.dtype(dtype)]
    # without the program view (today's chain analysis) the choice was chain
    plain = Auto().select(dataclasses.replace(plan, program=None), 8, itemsize, plan.device)
    assert plain == Chain()
    # small MLPs: every estimated saving of the segment plan is within the dispatch
    # overhead, and auto makes the choice it makes from the layer chain alone
    rng = random.Random(0)
    for _ in range(8):
        dims = [rng.choice([1, 2, 3, 8, 16, 32, 64]) for _ in range(rng.randint(2, 5))]
        small = random_mlp(jax.random.key(0), dims[0], dims[1:-1], dims[-1], dtype=dtype)
        B = rng.choice([1, 4, 32])
        p = _plan.make_plan(small, jax.ShapeDtypeStruct((B, dims[0]), dtype), "auto")
        assert p.program is not None
        without = Auto().select(dataclasses.replace(p, program=None), B, itemsize, p.device)
        assert p.mode == without, (dims, B)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_auto_on_a_model_without_a_useful_cut_is_rev(dtype):
    from jacsens import _plan

    model, in_shape = _make("cnn", dtype)
    X = jax.random.normal(jax.random.key(2), (4, *in_shape), dtype)
    plan = _plan.make_plan(model, X, "auto")
    assert plan.chain is None and len(plan.program.segments) == 1
    assert plan.mode.name == "rev"
    J = jacsens.input_jacobian(model, X)
    Jr = jax.jit(jax.vmap(jax.jacrev(model)))(X)
    assert J.dtype == jnp.dtype(dtype) and rel_err(J, Jr) <= TOL[jnp.dtype(dtype)]
