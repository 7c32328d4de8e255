"""Per-sample weight gradients, their norms, batched JVP/VJP and input Hessians.

Side by side, in one run (interleaved repeats, median):

- `jacsens.per_sample_grads` vs plain `jax.jit(jax.vmap(jax.grad(loss)))` on 784-512-512-10;
- `jacsens.per_sample_grad_norms(method="ghost")` vs `method="materialise"`;
- `jacsens.jvp` / `jacsens.vjp` vs plain `jax.vmap(jax.jvp/vjp)`, and `jacsens.input_hessian`
  vs plain `jax.vmap(jax.jacfwd(jax.jacrev))`, at small sizes.

Memory per mode: the compiled program's temporary and output buffers (`memory_analysis()`,
on every backend that reports it; the MB columns are their sum) and the device's peak
bytes in use (`device.memory_stats()`, `None` on CPU). With `--max-batch` (GPU), the
largest batch each gradient mode handles before it fails, found by doubling.

    python benchmarks/per_sample_grads.py --quick
    python benchmarks/per_sample_grads.py --max-batch     # on a GPU
"""

from __future__ import annotations

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

import jacsens

from harness import (
    NetSpec,
    default_path,
    format_seconds,
    format_table,
    make_model,
    metadata,
    time_fns,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
MNIST = NetSpec("mnist", 784, (512, 512), 10, 0)


def _data(spec: NetSpec, batch: int, seed: int = 1):
    kx, ky = jax.random.split(jax.random.key(seed))
    X = jax.random.normal(kx, (batch, spec.in_size), jnp.float32)
    Y = jax.random.randint(ky, (batch,), 0, spec.out_size)
    return X, Y


def grad_fns(model, X, Y) -> dict:
    """The gradient modes: name -> (fn, args)."""
    loss = jacsens.LOSSES["cross_entropy"]
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def sample_loss(p, x, y):
        return loss(eqx.combine(p, static)(x), y)

    plain_grads = jax.jit(jax.vmap(jax.grad(sample_loss), in_axes=(None, 0, 0)))
    return {
        "per_sample_grads": (
            lambda X, Y: jacsens.per_sample_grads(model, "cross_entropy", X, Y),
            (X, Y),
        ),
        "plain_vmap_grad": (lambda X, Y: plain_grads(params, X, Y), (X, Y)),
        "norms_ghost": (
            lambda X, Y: jacsens.per_sample_grad_norms(
                model, "cross_entropy", X, Y, method="ghost"
            ),
            (X, Y),
        ),
        "norms_materialise": (
            lambda X, Y: jacsens.per_sample_grad_norms(
                model, "cross_entropy", X, Y, method="materialise"
            ),
            (X, Y),
        ),
    }


def product_fns(model, X, key) -> dict:
    """Batched JVP/VJP and input Hessians: name -> (fn, args)."""
    out = model.out_shape
    kv, ku = jax.random.split(key)
    V = jax.random.normal(kv, X.shape, X.dtype)
    U = jax.random.normal(ku, (X.shape[0], *out), X.dtype)
    plain_jvp = jax.jit(jax.vmap(lambda x, v: jax.jvp(model, (x,), (v,))[1]))
    plain_vjp = jax.jit(jax.vmap(lambda x, u: jax.vjp(model, x)[1](u)[0]))
    plain_hess = jax.jit(jax.vmap(jax.jacfwd(jax.jacrev(model))))
    return {
        "jvp": (lambda X, V: jacsens.jvp(model, X, V), (X, V)),
        "plain_jvp": (plain_jvp, (X, V)),
        "vjp": (lambda X, U: jacsens.vjp(model, X, U), (X, U)),
        "plain_vjp": (plain_vjp, (X, U)),
        "input_hessian": (lambda X: jacsens.input_hessian(model, X), (X,)),
        "plain_hessian": (plain_hess, (X,)),
    }


def max_batch(fn_of_batch, start: int, limit: int) -> dict:
    """Double the batch from `start` until `fn_of_batch(B)` fails or `limit` is passed."""
    largest, B, error = None, start, None
    while B <= limit:
        try:
            jax.block_until_ready(fn_of_batch(B))
        except Exception as exc:  # out of memory ends the search
            error = f"{type(exc).__name__}: {exc}"[:300]
            break
        largest, B = B, 2 * B
    return {"largest_ok": largest, "first_failure": None if error is None else B, "error": error}


def _mb(t) -> str | None:
    """Temporary + output buffers of the compiled program, MB."""
    if t.temp_bytes is None:
        return None
    return f"{(t.temp_bytes + (t.out_bytes or 0)) / 1e6:.1f}"


def _rows(section: str, batch: int, timings: dict, pairs: list[tuple[str, str]]) -> list:
    rows = []
    for a, b in pairs:
        ta, tb = timings[a], timings[b]
        ratio = tb.median_s / ta.median_s if ta.ok and tb.ok else None
        rows.append(
            {
                "section": section,
                "B": batch,
                "mode": a,
                "time": format_seconds(ta.median_s) if ta.ok else "FAIL",
                "vs": b,
                "vs time": format_seconds(tb.median_s) if tb.ok else "FAIL",
                "speedup": None if ratio is None else f"{ratio:.2f}x",
                "MB": _mb(ta),
                "vs MB": _mb(tb),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches, 3 repeats")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--max-batch", action="store_true", help="(GPU) largest batch per mode, by doubling"
    )
    args = parser.parse_args(argv)
    meta = metadata()
    gpu = meta["backend"] != "cpu"
    repeats = args.repeats or (3 if args.quick else 7)
    if args.quick:
        batches = [32, 128]
    else:
        batches = [256, 2048, 8192] if gpu else [32, 128, 512]
    print(f"device: {meta['backend']} / {meta['device_kind']}, jax {meta['jax']}", flush=True)
    model = make_model(MNIST)
    results: dict = {"meta": meta, "suite": "per_sample_grads", "net": "784-512-512-10"}
    grads, rows = [], []
    for B in batches:
        X, Y = _data(MNIST, B)
        t = time_fns(grad_fns(model, X, Y), repeats=repeats, memory=True)
        grads.append({"batch": B, "timings": {k: v.to_dict() for k, v in t.items()}})
        rows += _rows(
            "grads",
            B,
            t,
            [("per_sample_grads", "plain_vmap_grad"), ("norms_ghost", "norms_materialise")],
        )
        print(f"  grads B={B} done", flush=True)
    results["grads"] = grads

    products = []
    small = [
        NetSpec("seed", 52, (20, 10), "scalar", 256),
        NetSpec("small", 16, (64, 64), 4, 256),
    ]
    for spec in small:
        m = make_model(spec)
        X = jax.random.normal(jax.random.key(2), (spec.batch, spec.in_size), jnp.float32)
        t = time_fns(product_fns(m, X, jax.random.key(3)), repeats=repeats, memory=True)
        products.append(
            {
                "net": spec.label,
                "batch": spec.batch,
                "timings": {k: v.to_dict() for k, v in t.items()},
            }
        )
        rows += _rows(
            spec.label,
            spec.batch,
            t,
            [("jvp", "plain_jvp"), ("vjp", "plain_vjp"), ("input_hessian", "plain_hessian")],
        )
    results["products"] = products

    if args.max_batch:
        if not gpu:
            print("--max-batch runs on a GPU only (CPU memory is the machine's); skipped.")
            results["max_batch"] = None
        else:
            results["max_batch"] = {}
            for name in ("per_sample_grads", "plain_vmap_grad", "norms_ghost", "norms_materialise"):

                def run(B, name=name):
                    X, Y = _data(MNIST, B)
                    fn, fargs = grad_fns(model, X, Y)[name]
                    return fn(*fargs)

                results["max_batch"][name] = max_batch(run, 1024, 2**24)
                print(f"  max batch {name}: {results['max_batch'][name]}", flush=True)

    print()
    print(
        format_table(
            rows,
            ["section", "B", "mode", "time", "vs", "vs time", "speedup", "MB", "vs MB"],
        )
    )
    path = write_json(
        results,
        args.out or default_path("per_sample_grads" + ("-quick" if args.quick else ""), meta, ROOT),
    )
    print(f"\nresults written to {path}")
    return results


if __name__ == "__main__":
    main()
