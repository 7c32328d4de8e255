"""DGSM of the Ishigami function: jacsens (random and scrambled Sobol') against SALib.

Error against the analytic DGSM `ν_i = E[(∂f/∂x_i)²]` (x ~ U(-π, π)³, a = 7, b = 0.1:
ν1 = (1 + 2bπ⁴/5 + b²π⁸/9)/2, ν2 = a²/2, ν3 = 8b²π⁶/7, derived and tested in
`tests/test_qmc.py`) and time, at equal evaluation counts `C = 2^12 ... 2^20`:

- `salib`: `SALib.sample.finite_diff.sample(problem, N)` (its Sobol' points, `N (D + 1)`
  model evaluations with `N = C / (D + 1)`), `SALib.test_functions.Ishigami.evaluate`,
  `SALib.analyze.dgsm.analyze` (its `vi` is ν; 100 bootstrap resamples, its default
  confidence interval). Skipped with a message if SALib is not installed.
- `random`: `jacsens.sensitivity` on `jacsens.uniform` points, `C` exact gradients.
- `sobol`: on `jacsens.sobol(..., replicates=R)` (`--replicates`, default 4), `C` exact
  gradients in `R` scrambles (the error reported is the estimate's, `±se` the replicates'
  spread). Fewer replicates give a smaller error (each scramble has more points, and
  Sobol' errors fall faster than `1/sqrt(points)`) but a rougher standard error.
- `sobol_calls`: Sobol' with `C / (D + 1)` gradients, the same number of model *calls* as
  SALib's (one reverse-mode gradient costs a few model evaluations, as one forward
  difference per input does).

Error is the largest relative error over the three inputs; jacsens times exclude the
first call (tracing and compilation), reported separately as `compile_s`; SALib's time is
sampling + evaluation + analysis (numpy, nothing to compile). jacsens runs in float64.

Run: `python benchmarks/dgsm_qmc.py [--quick] [--out PATH]`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jacsens  # noqa: E402

import harness  # noqa: E402

A, B = 7.0, 0.1
PI = math.pi
BOUNDS = [[-PI, PI]] * 3
PROBLEM = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": BOUNDS}
NU = np.array([(1 + 2 * B * PI**4 / 5 + B**2 * PI**8 / 9) / 2, A**2 / 2, 8 * B**2 * PI**6 / 7])


def ishigami(x):
    return jnp.sin(x[0]) + A * jnp.sin(x[1]) ** 2 + B * x[2] ** 4 * jnp.sin(x[0])


def rel_error(nu: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(nu) - NU) / NU))


def time_jacsens(make, repeats: int) -> dict:
    """First call (with compilation) and the median of `repeats` more."""
    t0 = time.perf_counter()
    r = jacsens.sensitivity(ishigami, make(), progress=False)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = jacsens.sensitivity(ishigami, make(), progress=False)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    rel_se = float(np.max(r.dgsm_se[0] / NU))
    return {
        "error": rel_error(r.dgsm[0]),
        "rel_se": rel_se,
        "time_s": t,
        "compile_s": max(first - t, 0.0),
        "n_gradients": r.n,
    }


def time_salib(count: int) -> dict | None:
    try:
        from SALib.analyze import dgsm
        from SALib.sample import finite_diff
        from SALib.test_functions import Ishigami
    except ImportError:
        return None
    N = count // (len(BOUNDS) + 1)
    t0 = time.perf_counter()
    X = finite_diff.sample(PROBLEM, N, seed=1)
    Y = Ishigami.evaluate(X, A=A, B=B)
    Si = dgsm.analyze(PROBLEM, X, Y, seed=1)
    t = time.perf_counter() - t0
    return {"error": rel_error(Si["vi"]), "time_s": t, "n_evaluations": int(Y.size)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="counts 2^12..2^16, 1 repeat")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    ap.add_argument("--replicates", type=int, default=4, help="Sobol' scrambles (default 4)")
    args = ap.parse_args(argv)
    R = args.replicates
    exps = range(12, 17) if args.quick else range(12, 21)
    repeats = 1 if args.quick else 3
    key = jax.random.key(0)
    rows = []
    salib_missing = False
    for e in exps:
        C = 2**e
        row: dict = {"count": C}
        row["random"] = time_jacsens(lambda C=C: jacsens.uniform(BOUNDS, C, key), repeats)
        row["sobol"] = time_jacsens(
            lambda C=C: jacsens.sobol(BOUNDS, C, key, replicates=R), repeats
        )
        row["sobol_calls"] = time_jacsens(
            lambda C=C: jacsens.sobol(BOUNDS, C // 4, key, replicates=R), repeats
        )
        s = time_salib(C)
        salib_missing = s is None
        row["salib"] = s
        if s is not None:
            row["error_ratio_sobol"] = s["error"] / max(row["sobol"]["error"], 1e-300)
            row["time_ratio_sobol"] = row["sobol"]["time_s"] / s["time_s"]
            row["error_ratio_sobol_calls"] = s["error"] / max(row["sobol_calls"]["error"], 1e-300)
        rows.append(row)
        print(f"count 2^{e} done", file=sys.stderr)
    if salib_missing:
        print("SALib is not installed (pip install SALib): its columns are skipped.")

    def fmt(x, spec=".2e"):
        return "-" if x is None else format(x, spec)

    table = [
        {
            "count": f"2^{int(math.log2(r['count']))}",
            "salib err": fmt(r["salib"] and r["salib"]["error"]),
            "salib time": harness.format_seconds(r["salib"] and r["salib"]["time_s"]),
            "random err": fmt(r["random"]["error"]),
            "random time": harness.format_seconds(r["random"]["time_s"]),
            "sobol err": fmt(r["sobol"]["error"]),
            "sobol ±se": fmt(r["sobol"]["rel_se"]),
            "sobol time": harness.format_seconds(r["sobol"]["time_s"]),
            "sobol compile": harness.format_seconds(r["sobol"]["compile_s"]),
            "sobol C/4 err": fmt(r["sobol_calls"]["error"]),
            "err ratio": fmt(r.get("error_ratio_sobol"), ".3g"),
            "time ratio": fmt(r.get("time_ratio_sobol"), ".3g"),
        }
        for r in rows
    ]
    print(harness.format_table(table, list(table[0])))
    meta = harness.metadata()
    out = (
        Path(args.out)
        if args.out
        else harness.default_path(
            "dgsm_qmc" + ("-quick" if args.quick else ""), meta, Path(__file__).resolve().parents[1]
        )
    )
    harness.write_json(
        {
            "suite": "dgsm_qmc",
            "meta": meta,
            "function": "ishigami a=7 b=0.1 on U(-pi, pi)^3",
            "analytic_dgsm": NU.tolist(),
            "replicates": R,
            "notes": (
                "error: max relative error of nu over x1..x3; jacsens time excludes compile "
                "(compile_s); salib: finite_diff.sample + Ishigami.evaluate + dgsm.analyze "
                "with N = count/4 base points; sobol_calls: count/4 gradients"
            ),
            "rows": rows,
        },
        out,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
