"""The benchmark harness of the scripts in `benchmarks/` (`benchmarks/harness.py`)."""

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# The harness is not part of the package: load it from its file, as the scripts do.
_HARNESS = Path(__file__).resolve().parent.parent / "benchmarks" / "harness.py"
_spec = importlib.util.spec_from_file_location("harness", _HARNESS)
_bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("harness", _bench)
_spec.loader.exec_module(_bench)

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


def _sleeper(seconds):
    def fn(x):
        time.sleep(seconds)
        return x

    return fn


def test_time_fns_measures_known_durations():
    """Sleeps of 10 and 30 ms: the statistics bracket them, and their ratio is ~3."""
    x = jnp.zeros(3, jnp.float32)
    res = _bench.time_fns(
        {"short": (_sleeper(0.01), (x,)), "long": (_sleeper(0.03), (x,))},
        repeats=3,
        min_sample_s=0.0,
        rewarm_s=0.0,
    )
    for name, seconds in (("short", 0.01), ("long", 0.03)):
        t = res[name]
        assert seconds <= t.min_s <= t.median_s <= t.max_s < seconds + 0.1
        assert t.first_s >= seconds and t.number == 1 and t.repeats == 3
    assert 1.5 < _bench.paired_ratio(res["long"], res["short"]) < 4


def test_time_fn_memory_analysis():
    x = jnp.ones((64, 64), jnp.float32)
    t = _bench.time_fn(lambda x: (x @ x).sum(), x, repeats=2)
    assert t.ok and t.repeats == 2 and len(t.samples) == 2 and t.median_s > 0
    t = _bench.time_fns(
        {"f": (lambda x: x @ x @ x, (x,)), "g": (lambda x: x + 1, (x,))}, repeats=1, memory=True
    )
    # the output of both is one (64, 64) float32 array
    assert t["f"].out_bytes == t["g"].out_bytes == 64 * 64 * 4
    assert t["f"].temp_bytes >= 0 and t["g"].temp_bytes >= 0
    if jax.default_backend() == "cpu":
        assert t["f"].peak_bytes is None  # the CPU backend reports no memory statistics
    else:
        assert t["f"].peak_bytes >= 2 * 64 * 64 * 4


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
    assert case["auto_choice"] in ("rev", "fwd", "chain", "segments")
    # layer chains are traced as programs too: the segment plan has an estimate beside chain
    assert set(case["cost"]["flops"]) == {"rev", "fwd", "chain", "segments", "backprop"}


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


def test_write_json_is_strict_and_atomic(tmp_path):
    data = {"a": float("nan"), "b": np.float32(0.5), "t": _bench.Timing(samples=[1.0])}
    path = _bench.write_json(data, tmp_path / "deep" / "er" / "r.json")
    assert os.listdir(path.parent) == ["r.json"]
    loaded = json.loads(path.read_text())
    assert loaded["a"] is None and loaded["b"] == 0.5 and loaded["t"]["samples"] == [1.0]


def test_default_path_and_table():
    meta = {"backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3", "date": "2026-01-02T03:04"}
    p = _bench.default_path("jacobian_modes", meta, "/x")
    assert str(p) == "/x/benchmarks/results/nvidia-h100-80gb-hbm3-2026-01-02-jacobian_modes.json"
    table = _bench.format_table([{"a": 1, "b": None}], ["a", "b"])
    assert table.splitlines()[2].split() == ["1", "-"]
    assert _bench.format_seconds(0.0015) == "1.5 ms"
