"""Structured Jacobians: the segment engine against plain vmap(jacrev) / vmap(jacfwd) (CPU).

For each model, one sample's program is traced and cut where its live width is narrow
(`jacsens._program._trace.trace_program`), the cheapest bracketing of the segment chain is
chosen (`plan_bracketing`), and the batched executor (`segments_jacobian`, jitted with the
program and plan static) is timed beside

- `rev`: `eqx.filter_jit(lambda m, X: jax.vmap(jax.jacrev(m))(X))`,
- `fwd`: the same with `jax.jacfwd`,
- `seg`: the segment executor, its result reshaped to `(B, *out_shape, *in_shape)` as
  rev, fwd and the API return it (`seg-flat`: the executor's `(B, m, n)`, no reshape),
- `api-auto`, `api-seg`: `jacsens.input_jacobian(model, X, mode="auto" / "segments")`,
  where the installed jacsens accepts `mode="segments"` (skipped otherwise).

Each function is compiled (first call, timed separately as "compile"), checked against
`rev`, then the functions are timed interleaved, in a random order in every round (each
sample the mean of enough calls that the fastest lasts ~25 ms); the figure is the median
over rounds. Models: the conv autoencoder 1x28x28 -> 16 -> 1x28x28
and the residual LayerNorm net 256 -> 8 -> 256 of the issue (B = 8 and 32), a U-shaped conv
net without skips (1x28x28 -> 1x7x7 -> 1x28x28), a transformer block (16 tokens x 32), a CNN
classifier 1x28x28 -> 10 and the MLPs 784-1024-16-1024-784 and 784-512-512-10 (B = 8).

    python benchmarks/structured.py          # -> benchmarks/results/cpu-<date>-structured.json
    python benchmarks/structured.py --quick  # fewer rounds, B = 8 only
    python benchmarks/structured.py --only MLP --out path.json  # some cases, own file
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jacsens
from jacsens._atomic import atomic_write_json
from jacsens._plan import make_plan
from jacsens._program._bracket import plan_bracketing, program_costs
from jacsens._program._segments import segments_jacobian
from jacsens._program._trace import model_leaves, trace_program

RESULTS = Path(__file__).resolve().parent / "results"


class ConvAE(eqx.Module):
    enc: list
    dec: list

    def __init__(self, key, latent=16):
        k = jax.random.split(key, 6)
        self.enc = [
            eqx.nn.Conv2d(1, 8, 3, stride=2, padding=1, key=k[0]),
            eqx.nn.Conv2d(8, 16, 3, stride=2, padding=1, key=k[1]),
            eqx.nn.Linear(16 * 49, latent, key=k[2]),
        ]
        self.dec = [
            eqx.nn.Linear(latent, 16 * 49, key=k[3]),
            eqx.nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, key=k[4]),
            eqx.nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1, key=k[5]),
        ]

    def __call__(self, x):
        h = jax.nn.gelu(self.enc[0](x))
        h = jax.nn.gelu(self.enc[1](h))
        z = self.enc[2](h.reshape(-1))
        h = jax.nn.gelu(self.dec[0](z)).reshape(16, 7, 7)
        h = jax.nn.gelu(self.dec[1](h))
        return self.dec[2](h)


class ResBottleneck(eqx.Module):
    a: list
    b: list
    mid: eqx.nn.Linear
    up: eqx.nn.Linear
    norms: list

    def __init__(self, key, d=256, width=512, latent=8):
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
    down: list
    up: list

    def __init__(self, key):
        k = jax.random.split(key, 5)
        self.down = [
            eqx.nn.Conv2d(1, 8, 3, stride=2, padding=1, key=k[0]),  # 8x14x14
            eqx.nn.Conv2d(8, 4, 3, stride=2, padding=1, key=k[1]),  # 4x7x7
            eqx.nn.Conv2d(4, 1, 3, padding=1, key=k[2]),  # 1x7x7
        ]
        self.up = [
            eqx.nn.ConvTranspose2d(1, 8, 4, stride=2, padding=1, key=k[3]),  # 8x14x14
            eqx.nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1, key=k[4]),  # 1x28x28
        ]

    def __call__(self, x):
        h = jax.nn.relu(self.down[0](x))
        h = jax.nn.relu(self.down[1](h))
        h = jnp.tanh(self.down[2](h))
        h = jax.nn.relu(self.up[0](h))
        return self.up[1](h)


class TransformerBlock(eqx.Module):
    attn: eqx.nn.MultiheadAttention
    mlp: list
    norms: list

    def __init__(self, key, d=32):
        k = jax.random.split(key, 3)
        self.attn = eqx.nn.MultiheadAttention(4, d, key=k[0])
        self.mlp = [eqx.nn.Linear(d, 4 * d, key=k[1]), eqx.nn.Linear(4 * d, d, key=k[2])]
        self.norms = [eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)]

    def __call__(self, x):
        h = jax.vmap(self.norms[0])(x)
        x = x + self.attn(h, h, h)
        h = jax.vmap(self.norms[1])(x)
        return x + jax.vmap(lambda r: self.mlp[1](jax.nn.gelu(self.mlp[0](r))))(h)


class CNN(eqx.Module):
    convs: list
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.convs = [
            eqx.nn.Conv2d(1, 8, 3, padding=1, key=k[0]),
            eqx.nn.Conv2d(8, 16, 3, padding=1, key=k[1]),
        ]
        self.head = eqx.nn.Linear(16 * 7 * 7, 10, key=k[2])

    def __call__(self, x):
        h = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(self.convs[0](x)))
        h = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(self.convs[1](h)))
        return self.head(h.reshape(-1))


def models(quick: bool) -> list[tuple[str, Callable[[Any], Any], tuple[int, ...], int]]:
    mlp = jacsens.MLP
    both = (8,) if quick else (8, 32)
    rows = [("conv AE 1x28x28-16-1x28x28", ConvAE, (1, 28, 28), b) for b in both]
    rows += [("res+LN 256-8-256", ResBottleneck, (256,), b) for b in both]
    rows += [
        ("U-net (no skips) 1x28x28-49-1x28x28", UNetNoSkip, (1, 28, 28), 8),
        ("transformer block 16x32", TransformerBlock, (16, 32), 8),
        ("CNN 1x28x28-10", CNN, (1, 28, 28), 8),
        ("MLP 784-1024-16-1024-784", lambda k: mlp(784, (1024, 16, 1024), 784, key=k), (784,), 8),
        ("MLP 784-512-512-10", lambda k: mlp(784, (512, 512), 10, key=k), (784,), 8),
    ]
    return rows


def _first_call(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def _segments_api_works() -> bool:
    try:
        m = jacsens.MLP(3, (2,), 3, key=jax.random.key(0))
        jacsens.input_jacobian(m, jnp.ones((1, 3)), mode="segments")
        return True
    except (ValueError, TypeError):
        return False


def measure(name, build, in_shape, B, rounds, rng, api) -> dict[str, Any]:
    model = build(jax.random.key(0))
    X = jax.random.normal(jax.random.key(1), (B, *in_shape), jnp.float32)
    t = time.perf_counter()
    program = trace_program(model, jax.ShapeDtypeStruct(in_shape, jnp.float32))
    br = plan_bracketing(program, B, 4)
    analysis = time.perf_counter() - t
    leaves = model_leaves(model)
    rev = eqx.filter_jit(lambda m, X: jax.vmap(jax.jacrev(m))(X))
    fwd = eqx.filter_jit(lambda m, X: jax.vmap(jax.jacfwd(m))(X))
    seg_flat = jax.jit(segments_jacobian, static_argnums=(0, 1))
    shape = (B, *program.out_struct.shape, *in_shape)

    # the segment plan's Jacobian in the shape rev, fwd and the API return, (B, *out,
    # *in): on XLA:CPU a reshape adding size-1 axes is a copy of the whole Jacobian
    # (1.5-10 ms for the conv AE's 20 MB), which rev/fwd pay too; `seg-flat` without it
    @functools.partial(jax.jit, static_argnums=(0, 1))
    def seg(program, br, leaves, X):
        return segments_jacobian(program, br, leaves, X).reshape(shape)

    fns: dict[str, Callable[[], Any]] = {
        "rev": lambda: rev(model, X),
        "fwd": lambda: fwd(model, X),
        "seg": lambda: seg(program, br, leaves, X),
        "seg-flat": lambda: seg_flat(program, br, leaves, X),
    }
    if api:
        fns["api-auto"] = lambda: jacsens.input_jacobian(model, X, mode="auto")
        fns["api-seg"] = lambda: jacsens.input_jacobian(model, X, mode="segments")
    compile_s, errors = {}, {}
    ref = None
    for k, fn in fns.items():
        out, compile_s[k] = _first_call(fn)
        out = np.asarray(out, np.float64).reshape(B, program.out_width, program.in_width)
        if ref is None:
            ref = out
        errors[k] = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
    # Each sample is the mean of `inner` calls (the same for every function of the case),
    # enough that the fastest function's sample lasts ~25 ms: single millisecond calls on
    # a shared machine scatter by +-25% (the same plan through two entry points did).
    warm = []
    for fn in fns.values():
        t = time.perf_counter()
        jax.block_until_ready(fn())
        warm.append(time.perf_counter() - t)
    inner = max(1, min(50, math.ceil(0.025 / max(min(warm), 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for _ in range(rounds):
        rng.shuffle(names)
        for k in names:
            # one untimed call first, so each sample starts from its own function's memory
            # and cache state, not from what the function timed before it left (a 1 s rev
            # call of the conv autoencoder leaves ~100 MB of freed buffers behind)
            jax.block_until_ready(fns[k]())
            t = time.perf_counter()
            for _ in range(inner):
                jax.block_until_ready(fns[k]())
            times[k].append((time.perf_counter() - t) / inner)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best_plain = min(ms["rev"], ms["fwd"])
    est = program_costs(program, B, 4)
    auto = {}
    if api:
        fastest = min(ms["rev"], ms["fwd"], ms["seg"])
        auto = {
            "auto_mode": make_plan(model, X).mode.name,
            "auto_over_fastest": ms["api-auto"] / fastest,
        }
    return {
        "model": name,
        "batch": B,
        "in": program.in_width,
        "out": program.out_width,
        "segments": [
            {
                "in": s.info.in_width,
                "out": s.info.out_width,
                "mflop": s.info.flops / 1e6,
                "diagonal": s.info.diagonal,
                "affine": s.info.affine,
            }
            for s in program.segments
        ],
        "plan": br.describe(),
        "estimate_ms": {k: v[2] * 1e3 for k, v in est.items()},
        "median_ms": ms,
        "all_ms": {k: [x * 1e3 for x in v] for k, v in times.items()},
        "compile_s": compile_s,
        "calls_per_sample": inner,
        "analysis_s": analysis,
        "rel_err_vs_rev": errors,
        "speedup_seg_over_best_plain": best_plain / ms["seg"],
        **auto,
    }


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["rev", "fwd", "seg", "seg-flat", "api-auto", "api-seg"]
    head = f"{'model':<38}{'B':>4}" + "".join(f"{c:>10}" for c in cols)
    lines = [head + f"{'gain':>8}{'auto/min':>9}  plan", "-" * (len(head) + 40)]
    for r in rows:
        cells = "".join(
            f"{r['median_ms'][c]:>10.2f}" if c in r["median_ms"] else f"{'-':>10}" for c in cols
        )
        lines.append(
            f"{r['model']:<38}{r['batch']:>4}{cells}"
            f"{r['speedup_seg_over_best_plain']:>7.1f}x"
            + (f"{r['auto_over_fastest']:>8.2f}x" if "auto_over_fastest" in r else f"{'-':>9}")
            + f"  {r['plan']}"
            + (f" (auto: {r['auto_mode']})" if "auto_mode" in r else "")
        )
    lines.append(
        "(median ms; gain = best of rev/fwd over seg; auto/min = api-auto over the fastest "
        "of rev, fwd, seg)"
    )
    lines.append(
        "compile s: "
        + "; ".join(
            f"{r['model'].split()[0]} B={r['batch']}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["compile_s"].items())
            for r in rows
        )
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    ap.add_argument(
        "--only", default=None, help="only the cases whose model name contains one of these (a,b)"
    )
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    rng = random.Random(args.seed)
    api = _segments_api_works()
    rows = []
    for name, build, in_shape, B in models(args.quick):
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        rows.append(measure(name, build, in_shape, B, rounds, rng, api))
        r = rows[-1]
        print(f"{name} B={B}: {r['median_ms']} plan {r['plan']}", flush=True)
    print(table(rows))
    date = datetime.date.today().isoformat()
    label = f"-{args.label}" if args.label else ""
    out = args.out or RESULTS / f"{jax.default_backend()}-{date}-structured{label}.json"
    atomic_write_json(
        out,
        {
            "benchmark": "structured",
            "date": date,
            "jax": jax.__version__,
            "platform": platform.platform(),
            "cpu_count": __import__("os").cpu_count(),
            "rounds": rounds,
            "api_columns": api,
            "rows": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
