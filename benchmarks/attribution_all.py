"""`target="all"` against a Python loop of one attribution call per output.

For a 10-output MLP, each attribution method (saliency, gradient × input, integrated
gradients, SmoothGrad) is timed once with `target="all"` (one vectorised call through the
Jacobian engine) and once as a loop over the 10 outputs (what Captum does: one pass per
target), interleaved by `harness.time_fns`; compile time (`first_s`) is excluded from the
medians and reported apart. Also records the largest difference between the two results.

    python benchmarks/attribution_all.py [--quick] [--out PATH]

Writes `benchmarks/results/<device>-<date>-attribution_all.json`.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jacsens import MLP, attribution as attr

import harness


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small batch, 3 repeats")
    p.add_argument("--out", help="JSON path (default benchmarks/results/...)")
    args = p.parse_args(argv)
    n_in, n_out, width = 20, 10, 64
    B = 64 if args.quick else 256
    repeats = 3 if args.quick else 7
    model = MLP(n_in, (width, width), n_out, "tanh", key=jax.random.key(0))
    X = jax.random.normal(jax.random.key(1), (B, n_in), jnp.float32)
    key = jax.random.key(2)
    methods = {
        "saliency": (attr.saliency, {"abs": False}),
        "gradient_x_input": (attr.gradient_x_input, {}),
        "integrated_gradients": (attr.integrated_gradients, {"n_steps": 32, "return_delta": False}),
        "smoothgrad": (attr.smoothgrad, {"n_samples": 16, "key": key}),
    }
    cases = []
    for name, (fn, kw) in methods.items():

        def all_(fn=fn, kw=kw):
            return fn(model, X, target="all", **kw)

        def loop(fn=fn, kw=kw):
            return jnp.stack([fn(model, X, target=o, **kw) for o in range(n_out)], axis=1)

        diff = float(jnp.max(jnp.abs(all_() - loop())) / jnp.max(jnp.abs(loop())))
        t = harness.time_fns({"all": (all_, ()), "loop": (loop, ())}, repeats=repeats)
        ratio = harness.paired_ratio(t["loop"], t["all"])
        cases.append(
            {
                "method": name,
                "kwargs": {k: v for k, v in kw.items() if k != "key"},
                "max_rel_diff": diff,
                "loop_over_all": ratio,
                "timings": {k: v.to_dict() for k, v in t.items()},
            }
        )
        print(
            f"{name:22s} all {harness.format_seconds(t['all'].median_s):>9}  "
            f"loop {harness.format_seconds(t['loop'].median_s):>9}  "
            f"loop/all {ratio:6.2f}x  max rel diff {diff:.1e}"
        )
    meta = harness.metadata()
    data = {
        "meta": meta,
        "model": {"n_in": n_in, "n_out": n_out, "hidden": [width, width], "batch": B},
        "dtype": "float32",
        "cases": cases,
        "geomean_loop_over_all": float(
            np.exp(np.mean([np.log(c["loop_over_all"]) for c in cases]))
        ),
    }
    path = args.out or harness.default_path(
        "attribution_all" + ("-quick" if args.quick else ""), meta
    )
    harness.write_json(data, path)
    print(f"written {path}")
    return data


if __name__ == "__main__":
    main()
