"""Streaming sensitivity analysis: throughput and peak memory against a naive full pass.

For the seed net 52-20-10-1 and an MNIST-shaped 784-512-512-10 MLP, over growing numbers of
samples N drawn from `jacsens.uniform`:

- `stream`: `jacsens.sensitivity(model, sampler, chunk_size=...)`, which draws, differentiates
  and reduces one chunk at a time (memory independent of N);
- `naive`: draw all N inputs, materialise all N Jacobians with `jacsens.input_jacobian`, then
  reduce them (mean, mean |.|, mean square, std, max) — memory grows with N.

Every (net, method, N) runs in its own subprocess, so that the peak resident set size
(`resource.getrusage(...).ru_maxrss`) of one case does not contaminate the next. Inside the
worker the first run (tracing and compilation) is a warm-up and excluded; every timed run
ends with `block_until_ready` (the streaming result is already on the host); the median of
the repeats is reported. Device memory statistics (`memory_stats()["peak_bytes_in_use"]`) are
recorded where the backend has them (not on CPU). Naive cases whose arrays would not fit in
`--naive-max-gib` are recorded as skipped.

    python benchmarks/sensitivity_stream.py --quick     # under a minute
    python benchmarks/sensitivity_stream.py             # N up to 10M for the seed net

Writes `benchmarks/results/sensitivity_stream-<device>-<date>.json` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NETS = {
    "seed 52-20-10-1": dict(in_size=52, widths=(20, 10), out_size="scalar", chunk=4096),
    "mnist 784-512-512-10": dict(in_size=784, widths=(512, 512), out_size=10, chunk=512),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _device_peak():
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def worker(case: dict) -> dict:
    """Run one case in this (fresh) process and return its measurements."""
    import jax

    jax.config.update("jax_enable_x64", case["x64"])
    import jax.numpy as jnp
    import numpy as np

    import jacsens

    spec = NETS[case["net"]]
    model = jacsens.MLP(
        spec["in_size"], spec["widths"], spec["out_size"], "tanh", key=jax.random.key(0)
    )
    bounds = np.tile([-1.0, 1.0], (spec["in_size"], 1))
    key = jax.random.key(1)
    n, chunk = case["n"], spec["chunk"]
    rss_start = _rss_mib()

    if case["method"] == "stream":

        def run(n):
            return jacsens.sensitivity(
                model, jacsens.uniform(bounds, n, key), chunk_size=chunk, progress=False
            )

        t0 = time.perf_counter()
        run(chunk)  # the same chunk shape: compiles everything the timed runs use
        warm_s = time.perf_counter() - t0
    else:

        @jax.jit
        def reduce(J):
            a = jnp.abs(J)
            return (J.mean(0), a.mean(0), (J * J).mean(0), J.std(0, ddof=1), a.max(0))

        def run(n):
            X = jacsens.uniform(bounds, n, key).chunk(0, n)  # all N inputs at once
            J = jacsens.input_jacobian(model, X)  # all N Jacobians at once
            return jax.block_until_ready(reduce(J))

        t0 = time.perf_counter()
        run(n)  # shapes depend on N: the warm-up is the full size
        warm_s = time.perf_counter() - t0
    rss_warm = _rss_mib()
    times = []
    for _ in range(case["repeats"]):
        t0 = time.perf_counter()
        jax.block_until_ready(run(n))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        **case,
        "chunk_size": chunk if case["method"] == "stream" else None,
        "warmup_s": warm_s,
        "times_s": times,
        "median_s": med,
        "samples_per_s": n / med,
        "rss_start_mib": rss_start,
        "rss_after_warmup_mib": rss_warm,
        "peak_rss_mib": _rss_mib(),
        "device_peak_bytes": _device_peak(),
    }


def naive_bytes(net: str, n: int, itemsize: int) -> int:
    spec = NETS[net]
    n_out = 1 if spec["out_size"] == "scalar" else spec["out_size"]
    # inputs + Jacobians + the temporaries of the reduction (|J|, J², ...)
    return n * spec["in_size"] * itemsize * (1 + 3 * n_out)


def run_case(case: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(case)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        return {**case, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def grid(quick: bool) -> list[tuple[str, int]]:
    if quick:
        return [("seed 52-20-10-1", n) for n in (10**4, 10**5)] + [
            ("mnist 784-512-512-10", n) for n in (500, 2000)
        ]
    return [("seed 52-20-10-1", n) for n in (10**4, 10**5, 10**6, 10**7)] + [
        ("mnist 784-512-512-10", n) for n in (10**3, 10**4, 3 * 10**4)
    ]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N, one repeat")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 3)")
    ap.add_argument("--x64", action="store_true", help="float64 model and inputs")
    ap.add_argument("--naive-max-gib", type=float, default=6.0, help="skip larger naive cases")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    ap.add_argument("--out", type=Path, default=None, help="JSON path")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from harness import device_tag, format_table, metadata, write_json

    meta = metadata()
    meta["x64"] = args.x64
    repeats = args.repeats or (1 if args.quick else 3)
    itemsize = 8 if args.x64 else 4
    results = []
    for net, n in grid(args.quick):
        for method in ("stream", "naive"):
            case = {"net": net, "method": method, "n": n, "repeats": repeats, "x64": args.x64}
            need = naive_bytes(net, n, itemsize)
            if method == "naive" and need > args.naive_max_gib * 2**30:
                res = {**case, "skipped": f"needs ~{need / 2**30:.1f} GiB"}
            else:
                res = run_case(case, args.timeout)
            results.append(res)
            print(_row_text(res), flush=True)

    rows = [_row(r) for r in results]
    cols = ["net", "method", "N", "samples/s", "median", "peak RSS MiB", "RSS growth MiB", "note"]
    print()
    print(format_table(rows, cols))
    path = args.out or (
        ROOT
        / "benchmarks"
        / "results"
        / f"sensitivity_stream-{device_tag(meta)}-{meta['date'][:10]}.json"
    )
    write_json({"suite": "sensitivity_stream", "meta": meta, "results": results}, path)
    print(f"\nwrote {path}")


def _row(r: dict) -> dict:
    ok = "median_s" in r
    return {
        "net": r["net"],
        "method": r["method"],
        "N": f"{r['n']:,}",
        "samples/s": f"{r['samples_per_s']:,.0f}" if ok else None,
        "median": f"{r['median_s']:.3g} s" if ok else None,
        "peak RSS MiB": f"{r['peak_rss_mib']:.0f}" if ok else None,
        "RSS growth MiB": f"{r['peak_rss_mib'] - r['rss_start_mib']:.0f}" if ok else None,
        "note": r.get("skipped") or r.get("error") or "",
    }


def _row_text(r: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in _row(r).items() if v)


if __name__ == "__main__":
    main()
