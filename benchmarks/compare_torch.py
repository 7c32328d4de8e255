"""jacsens vs PyTorch `torch.func` on the same networks with the same weights.

The jacsens MLP weights are copied into a functional PyTorch network. Compared, side by side
in one run (interleaved repeats, median): `torch.func.vmap(jacrev)` and `vmap(jacfwd)` against
`jacsens.input_jacobian` (rev, fwd, auto), and per-sample gradients `vmap(grad)` against
`jacsens.per_sample_grads`. The numbers are checked to agree to float32 tolerance first.

Both sides run float32 without TF32 (`torch.backends.cuda.matmul.allow_tf32 = False`,
JAX `default_matmul_precision = "highest"`). PyTorch is optional (`pip install jacsens[compare]`):
without it this script says so and exits cleanly. When JAX and PyTorch share one GPU, run
with `XLA_PYTHON_CLIENT_ALLOCATOR=platform` so that JAX does not reserve most of its memory.

    python benchmarks/compare_torch.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

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
TOLERANCE = 1e-4  # norm-wise relative error, float32


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    err = np.abs(a - b).max(initial=0.0)
    return float(err / scale) if scale > 0 else float(err)


def torch_net(model, torch, device):
    """A functional PyTorch copy of a tanh `jacsens.MLP`: `(f(params, x), params)`."""
    if model.activation != "tanh" or model.final_activation is not None:
        raise ValueError("compare_torch copies tanh MLPs without final activation only.")
    params = []
    for layer in model.layers:
        W = torch.tensor(np.asarray(layer.weight), device=device)
        b = torch.tensor(np.asarray(layer.bias), device=device)
        params.append((W, b))
    scalar = model.out_size == "scalar"

    def f(params, x):
        h = x
        for i, (W, b) in enumerate(params):
            if i:
                h = torch.tanh(h)
            h = h @ W.T + b
        return h[0] if scalar else h

    return f, tuple(params)


def run_case(spec: NetSpec, torch, device, repeats: int) -> dict:
    from torch.func import grad, jacfwd, jacrev, vmap

    model = make_model(spec)
    kx, ky = jax.random.split(jax.random.key(1))
    X = jax.random.normal(kx, (spec.batch, spec.in_size), jnp.float32)
    f, params = torch_net(model, torch, device)
    Xt = torch.tensor(np.asarray(X), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def torch_fn(fn):
        def run(*args):
            out = fn(*args)
            sync()
            return out

        return run

    def model_t(x):
        return f(params, x)

    t_rev = torch_fn(vmap(jacrev(model_t)))
    t_fwd = torch_fn(vmap(jacfwd(model_t)))
    if spec.out_size == "scalar":
        Y = jax.random.normal(ky, (spec.batch,), jnp.float32)
        loss_name = "half_squared_error"

        def loss_t(p, x, y):
            return 0.5 * (f(p, x) - y) ** 2
    else:
        Y = jax.random.randint(ky, (spec.batch,), 0, spec.out_size)
        loss_name = "cross_entropy"

        def loss_t(p, x, y):
            return torch.nn.functional.cross_entropy(f(p, x)[None], y[None])

    Yt = torch.tensor(np.asarray(Y), device=device)
    t_grads = torch_fn(vmap(grad(loss_t), in_dims=(None, 0, 0)))

    case: dict = {"net": spec.label, "batch": spec.batch, "agreement": {}}
    J = jacsens.input_jacobian(model, X, mode="rev")
    case["agreement"]["jacrev"] = rel_err(J, t_rev(Xt).cpu().numpy())
    case["agreement"]["jacfwd"] = rel_err(J, t_fwd(Xt).cpu().numpy())
    G = jacsens.per_sample_grads(model, loss_name, X, Y)
    Gt = t_grads(params, Xt, Yt)
    errs = []
    for layer, (gW, gb) in zip(G.layers, Gt, strict=True):
        errs.append(rel_err(layer.weight, gW.cpu().numpy()))
        errs.append(rel_err(layer.bias, gb.cpu().numpy()))
    case["agreement"]["per_sample_grads"] = max(errs)
    case["agree"] = all(e <= TOLERANCE for e in case["agreement"].values())

    fns = {
        "jacsens_rev": (lambda X: jacsens.input_jacobian(model, X, mode="rev"), (X,)),
        "jacsens_fwd": (lambda X: jacsens.input_jacobian(model, X, mode="fwd"), (X,)),
        "jacsens_auto": (lambda X: jacsens.input_jacobian(model, X), (X,)),
        "torch_vmap_jacrev": (t_rev, (Xt,)),
        "torch_vmap_jacfwd": (t_fwd, (Xt,)),
        "jacsens_per_sample_grads": (
            lambda X, Y: jacsens.per_sample_grads(model, loss_name, X, Y),
            (X, Y),
        ),
        "torch_vmap_grad": (t_grads, (params, Xt, Yt)),
    }
    timings = time_fns(fns, repeats=repeats)
    case["timings"] = {k: v.to_dict() for k, v in timings.items()}
    return case


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches, 3 repeats")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: `pip install jacsens[compare]` to run this comparison.")
        return None
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    meta = metadata()
    gpu = meta["backend"] != "cpu"
    device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
    meta["torch"] = torch.__version__
    meta["torch_device"] = str(device)
    meta["torch_threads"] = torch.get_num_threads()
    repeats = args.repeats or (3 if args.quick else 7)
    mult = 1 if args.quick else (64 if gpu else 4)
    specs = [
        NetSpec("seed", 52, (20, 10), "scalar", 1024 * mult),
        NetSpec("mnist", 784, (512, 512), 10, 32 * mult),
        NetSpec("bottleneck", 784, (1024, 16, 1024), 784, 4 * mult),
    ]
    print(f"jax on {meta['device_kind']}, torch {torch.__version__} on {device}", flush=True)
    cases = []
    for spec in specs:
        try:
            cases.append(run_case(spec, torch, device, repeats))
        except Exception as exc:  # record and go on
            cases.append({"net": spec.label, "batch": spec.batch, "error": f"{exc}"[:500]})
        print(f"  {spec.label} done", flush=True)
    rows = []
    for c in cases:
        if "error" in c:
            rows.append({"net": c["net"], "B": c["batch"], "agree": "ERROR: " + c["error"][:60]})
            continue
        t = {k: v["median_s"] if v["ok"] else None for k, v in c["timings"].items()}
        row = {"net": c["net"], "B": c["batch"], "agree": "yes" if c["agree"] else "NO"}
        for k in t:
            row[k] = format_seconds(t[k])
        for a, b, name in (
            ("torch_vmap_jacrev", "jacsens_rev", "torch/jacsens rev"),
            ("torch_vmap_jacfwd", "jacsens_fwd", "torch/jacsens fwd"),
            ("torch_vmap_grad", "jacsens_per_sample_grads", "torch/jacsens grads"),
        ):
            row[name] = f"{t[a] / t[b]:.2f}" if t[a] and t[b] else None
            c.setdefault("ratios", {})[name] = t[a] / t[b] if t[a] and t[b] else None
        rows.append(row)
    cols = ["net", "B", "agree"]
    if any("timings" in c for c in cases):
        first = next(c for c in cases if "timings" in c)
        cols += list(first["timings"])
        cols += ["torch/jacsens rev", "torch/jacsens fwd", "torch/jacsens grads"]
    print()
    print(format_table(rows, cols))
    results = {"meta": meta, "suite": "compare_torch", "tolerance": TOLERANCE, "cases": cases}
    path = write_json(
        results,
        args.out or default_path("compare_torch" + ("-quick" if args.quick else ""), meta, ROOT),
    )
    print(f"\nresults written to {path}")
    if not all(c.get("agree", False) for c in cases):
        print("WARNING: some results disagree beyond tolerance (see 'agreement').", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
