"""The benchmark harness (`jacsens._bench`) and the roofline cost model (`jacsens._chain`)."""

import io
import json
import math

import jax
import jax.numpy as jnp
import pytest
from helpers import random_mlp

import jacsens
from jacsens import _bench
from jacsens._chain import (
    DEVICE_MODELS,
    MARGIN,
    chain_cost,
    chain_estimates,
    device_model,
    read_chain,
)

TINY = _bench.NetSpec("tiny", 6, (8,), 3, 4)


# ---------------------------------------------------------------------------------------
# Timing and failure recording
# ---------------------------------------------------------------------------------------


def test_time_fns_statistics_and_failures():
    x = jnp.arange(8.0)

    def boom(x):
        raise RuntimeError("out of memory (simulated)")

    calls = []

    def counted(x):
        calls.append(1)
        return x * 2

    res = _bench.time_fns(
        {"ok": (jax.jit(lambda x: x + 1), (x,)), "boom": (boom, (x,)), "counted": (counted, (x,))},
        repeats=3,
        warmup=1,
        min_sample_s=0.0,
        rewarm_s=0.0,
    )
    assert list(res) == ["ok", "boom", "counted"]
    ok = res["ok"]
    assert ok.ok and ok.repeats == 3 and len(ok.samples) == 3
    assert ok.min_s <= ok.q1_s <= ok.median_s <= ok.q3_s <= ok.max_s
    assert ok.first_s is not None and ok.first_s > 0
    assert not res["boom"].ok
    assert "RuntimeError: out of memory (simulated)" in res["boom"].error
    assert res["boom"].median_s is None
    # first call + 1 warmup + 3 repeats with one call each
    assert len(calls) == 5 and res["counted"].number == 1
    calls.clear()
    _bench.time_fns({"counted": (counted, (x,))}, repeats=3, min_sample_s=0.0, rewarm_s=10.0)
    assert len(calls) == 1 + 1 + 3 * 2  # and an untimed call before each sample
    with pytest.raises(ValueError, match="repeats"):
        _bench.time_fns({"ok": (lambda: 0, ())}, repeats=0)
    with pytest.raises(ValueError, match="Unknown mode 'sideways'"):
        _bench.jacobian_fns(None, x, ["sideways"])


def test_time_fn_memory_analysis():
    x = jnp.ones((64, 64))
    t = _bench.time_fn(lambda x: (x @ x).sum(), x, repeats=2)
    assert t.ok and t.repeats == 2
    t = _bench.time_fns({"f": (lambda x: x @ x @ x, (x,))}, repeats=1, memory=True)["f"]
    assert t.temp_bytes is None or t.temp_bytes >= 0
    assert t.out_bytes is None or t.out_bytes == x.size * x.dtype.itemsize
    assert t.peak_bytes is None or t.peak_bytes > 0  # None on CPU


def test_paired_ratio():
    a = _bench.Timing(samples=[2.0, 4.0, 9.0])
    b = _bench.Timing(samples=[1.0, 2.0, 3.0])
    assert _bench.paired_ratio(a, b) == 2.0  # median of 2, 2, 3
    assert _bench.paired_ratio(a, _bench.Timing(ok=False)) is None


# ---------------------------------------------------------------------------------------
# The Jacobian suite and its JSON
# ---------------------------------------------------------------------------------------


def _check_case(case, modes):
    assert set(case["timings"]) == set(modes)
    for t in case["timings"].values():
        assert set(t) >= {"ok", "error", "skipped", "median_s", "min_s", "max_s", "samples"}
    assert case["auto_choice"] in ("rev", "fwd", "chain")
    assert set(case["cost"]["flops"]) == {"rev", "fwd", "chain", "backprop"}


def test_jacobian_suite_json_roundtrip(tmp_path):
    bad = _bench.NetSpec("bad", 0, (4,), 2, 2)  # MLP refuses in_size=0: recorded, not raised
    suite = _bench.run_jacobian_suite(
        [TINY, bad], repeats=2, modes=_bench.KNOWN_MODES, max_flops=None
    )
    ok, failed = suite["cases"]
    _check_case(ok, _bench.KNOWN_MODES)
    assert ok["rev_jit_over_plain_rev"] > 0
    assert all(t["ok"] for t in ok["timings"].values())
    assert ok["fastest"] in ("rev", "fwd", "chain")
    assert isinstance(ok["auto_within_10pct"], bool)
    assert ok["rev_over_plain_rev"] > 0
    assert "error" in failed and failed["timings"] == {}
    assert suite["summary"]["auto_cases"] == 1

    results = {"meta": _bench.metadata(), **suite}
    path = _bench.write_json(results, tmp_path / "sub" / "r.json")
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary files left
    loaded = json.loads(path.read_text())
    assert loaded["meta"]["backend"] == jax.default_backend()
    assert loaded["meta"]["jax"] == jax.__version__
    assert loaded["cases"][0]["timings"]["rev"]["ok"] is True
    assert loaded["cases"][1]["error"].startswith("ValueError")


def test_skipped_modes_are_recorded():
    case = _bench.run_jacobian_case(TINY, repeats=1, modes=("rev", "fwd", "chain"), max_flops=1.0)
    for t in case["timings"].values():
        assert t["skipped"] and not t["ok"] and t["error"].startswith("skipped: predicted")
    assert "fastest" not in case


def test_run_bench_prints_and_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(_bench, "quick_specs", lambda: [TINY])
    buf = io.StringIO()
    out = tmp_path / "bench.json"
    results = _bench.run_bench(quick=True, out=out, file=buf)
    text = buf.getvalue()
    assert "6-8-3" in text and "plain_rev" in text and "auto within 10%" in text
    assert json.loads(out.read_text())["cases"][0]["net"] == "6-8-3"
    assert results["summary"]["auto_cases"] == 1


def test_default_path_and_table():
    meta = {"backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3", "date": "2026-01-02T03:04"}
    p = _bench.default_path("jacobian_modes", meta, "/x")
    assert str(p) == "/x/benchmarks/results/nvidia-h100-80gb-hbm3-2026-01-02-jacobian_modes.json"
    table = _bench.format_table([{"a": 1, "b": None}], ["a", "b"])
    assert table.splitlines()[2].split() == ["1", "-"]
    assert _bench.format_seconds(0.0015) == "1.5 ms"


# ---------------------------------------------------------------------------------------
# The roofline cost model
# ---------------------------------------------------------------------------------------


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
