"""Seed net (52-20-10-1) input Jacobians at large batch against the memory-traffic floor.

The Jacobian of a scalar-output network is one row per sample, so at large batch the job
is bound by memory traffic: read X (B × 52 floats) and write J (B × 52 floats). The floor
is those bytes at the device's bandwidth, measured here as the best time of a jitted
elementwise copy of the same number of bytes (read one array, write another). The script
times rev, chain, auto, backprop and plain `vmap(jacrev)` side by side and prints each
one's ratio to the floor. fwd is left out: it pushes 52 tangents per sample (~27× rev's
time at B=65536 in `jacobian_modes.py`), far from memory-bound.

    python benchmarks/memory_floor.py                  # B = 1M (CPU: about a minute)
    python benchmarks/memory_floor.py --batch 4194304  # bigger, e.g. on a GPU
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp

from harness import (
    NetSpec,
    default_path,
    format_seconds,
    format_table,
    jacobian_fns,
    make_model,
    metadata,
    time_fns,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
SEED = NetSpec("seed", 52, (20, 10), "scalar", 0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/...)")
    args = parser.parse_args(argv)

    B = args.batch
    model = make_model(SEED)
    X = jax.random.normal(jax.random.key(1), (B, SEED.in_size), jnp.float32)
    fns = jacobian_fns(model, X, ("rev", "chain", "auto", "backprop", "plain_rev"))
    # The floor: read B×52 floats, write B×52 floats, nothing else.
    fns["copy (floor)"] = (jax.jit(lambda X: X * 1.0 + 0.0), (X,))
    timings = time_fns(fns, repeats=args.repeats)

    moved = 2 * X.size * X.dtype.itemsize
    floor = timings["copy (floor)"].min_s
    rows, cases = [], {}
    for name, t in timings.items():
        ratio = t.median_s / floor if t.ok and floor else None
        cases[name] = {**t.to_dict(), "ratio_to_floor": ratio}
        rows.append(
            {
                "mode": name,
                "median": format_seconds(t.median_s),
                "GB/s": f"{moved / t.median_s / 1e9:.1f}" if t.ok else "-",
                "× floor": f"{ratio:.2f}" if ratio else "-",
            }
        )
    meta = metadata()
    result = {
        "suite": "memory_floor",
        "meta": meta,
        "network": "52-20-10-1",
        "batch": B,
        "bytes_moved": moved,
        "floor_s": floor,
        "floor_bandwidth_GBps": moved / floor / 1e9,
        "cases": cases,
    }
    print(f"seed net 52-20-10-1, B={B:,}: {moved / 1e6:.0f} MB moved (read X + write J)")
    print(format_table(rows, ["mode", "median", "GB/s", "× floor"]))
    path = write_json(result, args.out or default_path("memory_floor", meta, ROOT))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
