"""DGSM of the Ishigami function: jacsens (random and scrambled Sobol') against SALib.

Error against the analytic DGSM `ν_i = E[(∂f/∂x_i)²]` (x ~ U(-π, π)³, a = 7, b = 0.1:
ν1 = (1 + 2bπ⁴/5 + b²π⁸/9)/2, ν2 = a²/2, ν3 = 8b²π⁶/7, derived and tested in
`tests/test_qmc.py`) and time, at equal evaluation counts `C = 2^12 ... 2^20`:

- `salib`: `SALib.sample.finite_diff.sample(problem, N)` (its Sobol' points, `N (D + 1)`
  model evaluations with `N = C / (D + 1)`), `SALib.test_functions.Ishigami.evaluate`,
  `SALib.analyze.dgsm.analyze` (its `vi` is ν; 100 bootstrap resamples, its default
  confidence interval). Its error is the bias of its forward differences (step 1e-2),
  about 2.9e-2 at every count. Skipped with a message if SALib is not installed.
- `random`: `jacsens.sensitivity` on `jacsens.uniform` points, `C` exact gradients.
- `sobol`: on `jacsens.sobol(..., replicates=R)` (`--replicates`, default 4), `C` exact
  gradients in `R` scrambles of `C / R` points; `error` is the estimate's (the average
  over all points), `rel_se` the replicates' spread, `median_error` the error of
  `SensitivityResult.replicate_median` (the median of the replicate estimates).
- `sobol_calls`: Sobol' with `C / (D + 1) = C / 4` gradients, the same number of model
  *calls* as SALib's (a reverse-mode gradient costs a few model evaluations, as SALib's
  `D` forward differences do). With the same key its points are the `sobol` points of
  count `C / 4`: its error repeats that row's; only its time is new.
- `keys`: the errors alone (no timing) over `--keys` further keys (1, 2, ...), for `R`
  scrambles and for 1 and 2: one key's error says little, as the error of a scramble is
  heavy-tailed (most scrambles are far better than the root-mean-square error, a few much
  worse). Per count and `R`: the median error over keys, and the fraction of keys whose
  error is at least 100 times below SALib's, for the average and the median estimate.

Error is the largest relative error over the three inputs. Times are the median of
interleaved repeats (`harness.time_fns`: SALib and the jacsens variants take turns);
jacsens times include building the sampler and exclude the first call (tracing and
compilation), reported as `compile_s`; SALib's time is sampling + evaluation + analysis
(numpy, nothing to compile). jacsens runs in float64.

Run: `python benchmarks/dgsm_qmc.py [--quick] [--replicates R] [--keys K] [--out PATH]`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
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


def run_jacsens(data) -> jacsens.SensitivityResult:
    return jacsens.sensitivity(ishigami, data, progress=False)


def summary(r: jacsens.SensitivityResult, t: harness.Timing) -> dict:
    out = {
        "error": rel_error(r.dgsm[0]),
        "rel_se": float(np.max(r.dgsm_se[0] / NU)),
        "time_s": t.median_s,
        "time_q1_s": t.q1_s,
        "time_q3_s": t.q3_s,
        "compile_s": max(t.first_s - t.median_s, 0.0),
        "n_gradients": r.n,
    }
    if r.replicates is not None and len(r.replicates) > 1:
        out["median_error"] = rel_error(r.replicate_median("dgsm").value[0])
    return out


def salib_fn():
    try:
        from SALib.analyze import dgsm
        from SALib.sample import finite_diff
        from SALib.test_functions import Ishigami
    except ImportError:
        return None

    def run(count: int):
        N = count // (len(BOUNDS) + 1)
        X = finite_diff.sample(PROBLEM, N, seed=1)
        Y = Ishigami.evaluate(X, A=A, B=B)
        return dgsm.analyze(PROBLEM, X, Y, seed=1), int(Y.size)

    return run


def key_sweep(count: int, replicates: list[int], keys: int, target: float | None) -> dict:
    """Errors over keys 1..keys (no timing), per number of scrambles."""
    out = {}
    for R in replicates:
        mean_err, median_err = [], []
        for k in range(1, keys + 1):
            s = jacsens.sobol(BOUNDS, count, jax.random.key(k), replicates=R)
            r = run_jacsens(s)
            mean_err.append(rel_error(r.dgsm[0]))
            if R > 1:
                median_err.append(rel_error(r.replicate_median("dgsm").value[0]))
        row = {"errors": mean_err, "median_over_keys": statistics.median(mean_err)}
        if median_err:
            row["median_estimate_errors"] = median_err
            row["median_estimate_median_over_keys"] = statistics.median(median_err)
        if target is not None:
            row["fraction_100x"] = float(np.mean(np.asarray(mean_err) <= target))
            if median_err:
                row["median_estimate_fraction_100x"] = float(
                    np.mean(np.asarray(median_err) <= target)
                )
        out[f"R={R}"] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="counts 2^12..2^16, fewer repeats")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    ap.add_argument("--replicates", type=int, default=4, help="Sobol' scrambles (default 4)")
    ap.add_argument("--keys", type=int, default=16, help="keys of the error sweep (default 16)")
    args = ap.parse_args(argv)
    R = args.replicates
    exps = range(12, 17) if args.quick else range(12, 21)
    key = jax.random.key(0)
    salib = salib_fn()
    if salib is None:
        print("SALib is not installed (pip install SALib): its columns are skipped.")
    rows = []
    for e in exps:
        C = 2**e
        small = e <= 16
        fns = {
            "random": (lambda C=C: run_jacsens(jacsens.uniform(BOUNDS, C, key)).dgsm, ()),
            "sobol": (
                lambda C=C: run_jacsens(jacsens.sobol(BOUNDS, C, key, replicates=R)).dgsm,
                (),
            ),
            "sobol_calls": (
                lambda C=C: run_jacsens(jacsens.sobol(BOUNDS, C // 4, key, replicates=R)).dgsm,
                (),
            ),
        }
        if salib is not None:
            fns["salib"] = (lambda C=C: salib(C)[0]["vi"], ())
        times = harness.time_fns(
            fns, repeats=7 if small and not args.quick else 3, warmup=1 if small else 0
        )
        row: dict = {"count": C}
        row["random"] = summary(run_jacsens(jacsens.uniform(BOUNDS, C, key)), times["random"])
        row["sobol"] = summary(
            run_jacsens(jacsens.sobol(BOUNDS, C, key, replicates=R)), times["sobol"]
        )
        row["sobol_calls"] = summary(
            run_jacsens(jacsens.sobol(BOUNDS, C // 4, key, replicates=R)), times["sobol_calls"]
        )
        target = None
        if salib is not None:
            Si, n_eval = salib(C)
            t = times["salib"]
            row["salib"] = {
                "error": rel_error(Si["vi"]),
                "time_s": t.median_s,
                "time_q1_s": t.q1_s,
                "time_q3_s": t.q3_s,
                "n_evaluations": n_eval,
            }
            target = row["salib"]["error"] / 100
            row["error_ratio_sobol"] = row["salib"]["error"] / max(row["sobol"]["error"], 1e-300)
            row["error_ratio_sobol_median"] = row["salib"]["error"] / max(
                row["sobol"]["median_error"], 1e-300
            )
            row["time_ratio_sobol"] = row["sobol"]["time_s"] / row["salib"]["time_s"]
            row["error_ratio_sobol_calls"] = row["salib"]["error"] / max(
                row["sobol_calls"]["error"], 1e-300
            )
        else:
            row["salib"] = None
        row["keys"] = key_sweep(C, sorted({1, 2, R}), args.keys, target)
        rows.append(row)
        print(f"count 2^{e} done", file=sys.stderr)

    def fmt(x, spec=".2e"):
        return "-" if x is None else format(x, spec)

    table = []
    for r in rows:
        sweep = r["keys"][f"R={R}"]
        table.append(
            {
                "count": f"2^{int(math.log2(r['count']))}",
                "salib err": fmt(r["salib"] and r["salib"]["error"]),
                "salib time": harness.format_seconds(r["salib"] and r["salib"]["time_s"]),
                "random err": fmt(r["random"]["error"]),
                "random time": harness.format_seconds(r["random"]["time_s"]),
                "sobol err": fmt(r["sobol"]["error"]),
                "±se": fmt(r["sobol"]["rel_se"]),
                "median err": fmt(r["sobol"].get("median_error")),
                "sobol time": harness.format_seconds(r["sobol"]["time_s"]),
                "compile": harness.format_seconds(r["sobol"]["compile_s"]),
                "C/4 err": fmt(r["sobol_calls"]["error"]),
                "err ratio": fmt(r.get("error_ratio_sobol"), ".3g"),
                "time ratio": fmt(r.get("time_ratio_sobol"), ".3g"),
                "keys 100x": fmt(sweep.get("fraction_100x"), ".2f"),
                "median 100x": fmt(sweep.get("median_estimate_fraction_100x"), ".2f"),
            }
        )
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
            "keys": args.keys,
            "notes": (
                "error: max relative error of nu over x1..x3; times: median of interleaved "
                "repeats (harness.time_fns), jacsens including the sampler's construction "
                "and excluding compile (compile_s); salib: finite_diff.sample + "
                "Ishigami.evaluate + dgsm.analyze with N = count/4 base points; sobol_calls: "
                "count/4 gradients (same key: the sobol points of count/4); median_error: "
                "replicate_median; keys: errors over keys 1..K for R, 1 and 2 scrambles, "
                "fraction_100x: share of keys with error <= salib error / 100"
            ),
            "rows": rows,
        },
        out,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
