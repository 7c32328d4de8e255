"""Forward vs reverse: time `jacsens.input_jacobian` in every mode against plain JAX.

Modes: `input_jacobian(mode=...)` for rev, fwd, chain, auto and backprop, and the baselines
`jax.jit(jax.vmap(jax.jacrev(model)))` (plain_rev) and `jax.jit(jax.vmap(jax.jacfwd(model)))`
(plain_fwd). Networks: the seed net 52-20-10-1 at several batch sizes, an MNIST-shaped
784-512-512-10, a bottleneck autoencoder 784-1024-16-1024-784, a tall and a wide net, and a
grid of input width x output width for 2 and 3 hidden layers of width 256.

All modes of one network are timed interleaved in the same run (see `harness.py`), so the
ratios are meaningful on a busy machine even when the absolute times are not. A mode whose
cost-model FLOPs exceed the device's budget is recorded as skipped; one that fails (out of
memory, ...) is recorded as failed; the run goes on.

    python benchmarks/jacobian_modes.py --quick          # a minute on a laptop CPU
    python benchmarks/jacobian_modes.py                  # the full suite
    python benchmarks/jacobian_modes.py --out results.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

from harness import (
    ALL_MODES,
    KNOWN_MODES,
    NetSpec,
    default_path,
    jacobian_table,
    metadata,
    run_jacobian_suite,
    summarise_jacobian,
    summary_text,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent


def _pow2_at_most(n: int) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p


def grid_batch(in_size: int, out_size: int, *, gpu: bool) -> int:
    """Batch for a grid point: the Jacobians fill about 8 MiB (CPU) or 256 MiB (GPU)."""
    budget = 2**26 if gpu else 2**21
    cap = 4096 if gpu else 256
    return max(1, min(cap, _pow2_at_most(max(1, budget // (in_size * out_size)))))


def specs(quick: bool, gpu: bool, grid_only: bool = False) -> list[NetSpec]:
    """The networks of the suite on this device (`grid_only`: the width grid alone)."""
    if quick:
        seed_batches = [256, 4096]
    elif gpu:
        seed_batches = [1024, 16384, 262144, 1048576]
    else:
        seed_batches = [256, 4096, 65536]
    out = [NetSpec("seed", 52, (20, 10), "scalar", b) for b in seed_batches]
    mult = 16 if gpu else 1
    out += [
        NetSpec("mnist", 784, (512, 512), 10, (64 if quick else 256) * mult),
        NetSpec("bottleneck", 784, (1024, 16, 1024), 784, (8 if quick else 16) * mult),
        NetSpec("tall", 2048, (256, 256), 4, (128 if quick else 512) * mult),
        NetSpec("wide", 4, (256, 256), 2048, (128 if quick else 512) * mult),
    ]
    if grid_only:
        out = []
    if quick:
        points = [(8, 512), (512, 8), (64, 64)]
        depths = [2]
    else:
        ins = [8, 64, 512, 4096] if gpu else [8, 64, 512, 2048]
        outs = [1, 16, 256, 4096] if gpu else [1, 16, 256, 2048]
        points = [(i, o) for i in ins for o in outs]
        depths = [2, 3]
    for depth in depths:
        for i, o in points:
            out.append(NetSpec(f"grid{depth}", i, (256,) * depth, o, grid_batch(i, o, gpu=gpu)))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few networks, small batches")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per network")
    parser.add_argument(
        "--max-gflop",
        type=float,
        default=None,
        help="skip a mode whose cost-model GFLOPs exceed this (default 100 on CPU, 20000 on GPU)",
    )
    parser.add_argument(
        "--modes", nargs="+", default=list(ALL_MODES), choices=KNOWN_MODES, help="modes to time"
    )
    parser.add_argument("--only", nargs="+", default=None, help="network names (seed, mnist, ...)")
    parser.add_argument("--no-fixed", action="store_true", help="only the width grid")
    args = parser.parse_args(argv)
    meta = metadata()
    gpu = meta["backend"] != "cpu"
    repeats = args.repeats or (3 if args.quick else 7)
    max_flops = 1e9 * (args.max_gflop or (2e4 if gpu else 100.0))
    print(f"device: {meta['backend']} / {meta['device_kind']}, jax {meta['jax']}", flush=True)
    nets = specs(args.quick, gpu, grid_only=args.no_fixed)
    if args.only:
        nets = [n for n in nets if n.name in args.only]
    suite = run_jacobian_suite(
        nets,
        repeats=repeats,
        modes=args.modes,
        max_flops=max_flops,
        file=sys.stdout,
    )
    results = {
        "meta": meta,
        "args": {"quick": args.quick, "repeats": repeats, "modes": args.modes, "only": args.only},
        **suite,
    }
    results["summary"] = summarise_jacobian(results["cases"])
    print()
    print(jacobian_table(results["cases"], args.modes))
    print()
    print(summary_text(results["summary"]))
    suffix = "jacobian_modes" + ("-quick" if args.quick else "")
    suffix += "-grid" if args.no_fixed else ""
    suffix += "-" + "-".join(args.only) if args.only else ""
    path = write_json(results, args.out or default_path(suffix, meta, ROOT))
    print(f"\nresults written to {path}")
    return results


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", False)
    main()
