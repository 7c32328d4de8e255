"""The `jacsens` command line: analyze, fit, explain, check, bench.

`jacsens analyze` with no arguments fits an MLP to the bundled diabetes data, reports its
test R², computes the sensitivity of the prediction to every feature and writes a report
folder. Bad input ends with one line `jacsens: error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._atomic import atomic_write_json

PROG = "jacsens"
MODEL_FILE = "model.jsns"
DIABETES_SOURCE = "jacsens.datasets.diabetes (scikit-learn bundled data)"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block, no SystemExit
        raise CLIError(f"{message} (see `{self.prog} --help`)")


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}")
        return value

    return parse


def _hidden(text: str) -> tuple[int, ...]:
    """Parse `--hidden 64,64` (an empty string or `0` gives a linear model)."""
    if text.strip() in ("", "0"):
        return ()
    try:
        widths = tuple(int(p) for p in text.split(","))
    except ValueError:
        widths = ()
    if not widths or any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(
            f"--hidden must be comma-separated positive widths such as 64,64, got {text!r}"
        )
    return widths


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"--test-fraction must be in (0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `jacsens` command."""
    from ._models import ACTIVATIONS

    parser = _Parser(
        prog=PROG,
        description="Per-sample Jacobians and sensitivity analysis of neural networks (JAX).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def data_args(p: argparse.ArgumentParser, *, fit_only: bool) -> None:
        p.add_argument(
            "--data", metavar="FILE.csv", help="CSV file with a header row (default: diabetes)"
        )
        p.add_argument("--target", metavar="COLUMN", help="target column of --data")
        p.add_argument(
            "--hidden",
            type=_hidden,
            default=(32, 32),
            metavar="W1,W2,...",
            help="hidden layer widths (default 32,32)",
        )
        p.add_argument(
            "--activation",
            default="tanh",
            choices=sorted(ACTIVATIONS),
            metavar="NAME",
            help="hidden activation (default tanh)",
        )
        p.add_argument("--epochs", type=_positive_int("--epochs"), default=300, help="default 300")
        p.add_argument(
            "--batch-size", type=_positive_int("--batch-size"), default=32, help="default 32"
        )
        p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (3e-4)")
        p.add_argument(
            "--test-fraction",
            type=_fraction,
            default=0.2,
            help="fraction of rows held out for the test R² (0.2)",
        )
        p.add_argument("--seed", type=int, default=0, help="random seed (split, init, shuffle)")
        p.add_argument(
            "--raw",
            action="store_true",
            help="do not standardise the CSV columns (by default features and target are "
            "standardised to mean 0, std 1)",
        )
        p.add_argument(
            "--out",
            default="jacsens-report" if not fit_only else "jacsens-model",
            metavar="DIR",
            help="output folder (default %(default)s)",
        )
        p.add_argument("--quiet", action="store_true", help="print only errors")

    analyze = sub.add_parser(
        "analyze",
        help="fit an MLP (or load one) and report the sensitivity to each feature",
        description="Fit an MLP to a data set (default: the bundled diabetes data), report "
        "its test R², the sensitivity of the prediction to each feature (mean |∂y/∂x|, "
        "DGSM, ...) and write sensitivity.csv, sensitivity.png, summary.json and the model.",
    )
    data_args(analyze, fit_only=False)
    analyze.add_argument(
        "--model",
        metavar="FILE",
        help="analyse a saved model (written by jacsens.save) instead of fitting one; if "
        "its folder holds the summary.json written when it was fitted (jacsens fit/analyze), "
        "that fit's standardisation and train/test split are reused, otherwise R² is "
        "reported on all rows",
    )
    analyze.add_argument(
        "--chunk-size",
        type=_positive_int("--chunk-size"),
        default=4096,
        help="rows per compiled sensitivity step (4096)",
    )

    fit = sub.add_parser(
        "fit",
        help="fit an MLP to a data set and save it",
        description="Fit an MLP (Adam, mean squared error) and write the model file and "
        "summary.json to --out.",
    )
    data_args(fit, fit_only=True)

    explain = sub.add_parser(
        "explain",
        help="print the input Jacobian of a model as a product of layer Jacobians",
        description="Print ∂y/∂x as a chain of dense and diagonal factors with the cost of "
        "each Jacobian mode. Default model: the 52-20-10-1 tanh seed network.",
    )
    explain.add_argument("--model", metavar="FILE", help="a saved model (default: seed net)")
    explain.add_argument(
        "--batch-size", type=_positive_int("--batch-size"), default=1, help="for the FLOPs"
    )

    check = sub.add_parser(
        "check",
        help="cross-check every Jacobian mode, the kernel and finite differences",
        description="Run jacsens.crosscheck on random inputs (float64); exit status 1 if "
        "any comparison fails.",
    )
    check.add_argument("--model", metavar="FILE", help="a saved model (default: seed net)")
    check.add_argument("--batch", type=_positive_int("--batch"), default=4, help="inputs (4)")
    check.add_argument("--seed", type=int, default=0, help="random seed for the inputs")

    bench = sub.add_parser(
        "bench",
        help="time the input-Jacobian modes",
        description="Time input_jacobian in every mode against plain jax.jacrev/jacfwd.",
    )
    bench.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    bench.add_argument("--out", metavar="FILE.json", help="also write the results as JSON")
    return parser


# --------------------------------------------------------------------------- data


@dataclass
class _Data:
    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str
    source: str
    standardisation: dict[str, Any] | None
    # True when `standardisation` is the one saved with the model (not recomputed here).
    saved_standardisation: bool = False


def _read_csv(path: str, target: str, raw: bool, saved: dict[str, Any] | None = None) -> _Data:
    import pandas as pd

    if not os.path.isfile(path):
        raise CLIError(f"data file {path!r} does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read {path!r} as CSV: {str(e).splitlines()[0]}") from None
    if target not in frame.columns:
        raise CLIError(
            f"target column {target!r} is not in {path!r}; columns are {list(frame.columns)}"
        )
    features = [c for c in frame.columns if c != target]
    if not features:
        raise CLIError(f"{path!r} has no feature columns besides the target {target!r}")
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise CLIError(f"column(s) {bad} of {path!r} are not numeric; encode or drop them first")
    values = frame.to_numpy(dtype=np.float64)
    missing = ~np.isfinite(values)
    if missing.any():
        row, col = np.argwhere(missing)[0]
        raise CLIError(
            f"{path!r} has {int(missing.any(axis=1).sum())} row(s) with missing or "
            f"non-finite values (first: row {row + 2}, column {frame.columns[col]!r})"
        )
    if len(frame) < 5:
        raise CLIError(f"{path!r} has {len(frame)} data rows; at least 5 are needed")
    X = frame[features].to_numpy(dtype=np.float64)
    y = frame[target].to_numpy(dtype=np.float64)
    standardisation = None
    reuse = saved is not None and saved["features"] == [str(f) for f in features]
    reuse = reuse and saved["target"] == str(target)
    if reuse:
        # The model was fitted on data standardised with these constants: apply them, not
        # the current file's own mean and std (and not --raw).
        standardisation = saved["standardisation"]
        if standardisation is not None:
            X = (X - np.asarray(standardisation["x_mean"])) / np.asarray(standardisation["x_std"])
            y = (y - standardisation["y_mean"]) / standardisation["y_std"]
    elif not raw:
        x_mean, x_std = X.mean(axis=0), X.std(axis=0)
        y_mean, y_std = float(y.mean()), float(y.std())
        const = [f for f, s in zip(features, x_std, strict=True) if s == 0]
        if const or y_std == 0:
            raise CLIError(
                f"column(s) {const or [target]} of {path!r} are constant; drop them or pass --raw"
            )
        X = (X - x_mean) / x_std
        y = (y - y_mean) / y_std
        standardisation = {
            "x_mean": x_mean.tolist(),
            "x_std": x_std.tolist(),
            "y_mean": y_mean,
            "y_std": y_std,
        }
    return _Data(
        X.astype(np.float32),
        y.astype(np.float32),
        tuple(map(str, features)),
        str(target),
        os.path.abspath(path),
        standardisation,
        reuse,
    )


def _load_data(args, saved: dict[str, Any] | None = None) -> _Data:
    """The data of `--data`/`--target` (default: diabetes); `saved` is `_saved_fit`'s record
    of the model's fit, whose standardisation is reused when its columns match."""
    if args.data is None:
        if args.target is not None:
            raise CLIError("--target needs --data FILE.csv")
        from . import datasets

        try:
            d = datasets.diabetes()
        except ImportError as e:
            raise CLIError(str(e)) from None
        source = DIABETES_SOURCE
        # The bundled data's standardisation is fixed, so a model fitted on it saw the same.
        return _Data(
            d.X,
            d.y,
            d.feature_names,
            d.target_name,
            source,
            {
                "x_mean": d.x_mean.tolist(),
                "x_std": d.x_std.tolist(),
                "y_mean": d.y_mean,
                "y_std": d.y_std,
            },
            saved is not None and saved["source"] == source,
        )
    if args.target is None:
        raise CLIError("--data needs --target COLUMN (the column to predict)")
    return _read_csv(args.data, args.target, args.raw, saved)


def _saved_fit(model_path: str) -> dict[str, Any] | None:
    """What `jacsens fit`/`analyze` recorded about a saved model's fit, if anything.

    Reads `summary.json` in the model's folder; returns `None` unless it records the split
    of this very model file (its `split.model_file`), with the data's source, columns,
    standardisation and row count.
    """
    import json

    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        data, split = summary["data"], summary["split"]
        record = {
            "summary": path,
            "source": str(data["source"]),
            "features": [str(c) for c in data["features"]],
            "target": str(data["target"]),
            "standardisation": data["standardisation"],
            "n_rows": int(split["n_rows"]),
            "seed": int(split["seed"]),
            "test_fraction": float(split["test_fraction"]),
        }
        if split["model_file"] != os.path.basename(model_path):
            return None
        st = record["standardisation"]
        if st is not None and not (
            isinstance(st, dict)
            and all(k in st for k in ("x_mean", "x_std", "y_mean", "y_std"))
            and len(st["x_mean"]) == len(st["x_std"]) == len(record["features"])
        ):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def _load_model(path: str):
    import jacsens

    if not os.path.isfile(path):
        raise CLIError(f"model file {path!r} does not exist")
    try:
        return jacsens.load(path)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _seed_model():
    import jax

    import jacsens

    return jacsens.MLP(52, (20, 10), "scalar", "tanh", key=jax.random.key(0))


# --------------------------------------------------------------------------- commands


def _say(args, *lines: str) -> None:
    if not getattr(args, "quiet", False):
        for line in lines:
            print(line)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def _model_shape(model) -> dict[str, Any]:
    from ._io import _describe

    cls, hp = _describe(model)
    return {"class": cls, **hp}


def _check_model_input(model, n_features: int, source: str) -> None:
    from ._chain import try_read_chain

    chain = try_read_chain(model)
    if chain is None or chain.in_shape != (n_features,):
        got = None if chain is None else chain.in_shape
        raise CLIError(
            f"the model takes inputs of shape {got}, but the data ({source}) have "
            f"{n_features} features"
        )
    if chain.out_shape not in ((), (1,)):
        raise CLIError(
            f"the model has outputs of shape {chain.out_shape}; analyze needs a model with "
            "one output (the target)"
        )


def _split(data: _Data, seed: int, test_fraction: float):
    """The train/test split of `seed` (the first of three keys split from it) and
    `test_fraction`; at least two test rows, or the test R² is undefined."""
    import jax

    from . import datasets

    k_split = jax.random.split(jax.random.key(seed), 3)[0]
    try:
        train, test = datasets.train_test_split((data.X, data.y), test_fraction, key=k_split)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if len(test[1]) < 2:
        raise CLIError(
            f"--test-fraction {test_fraction} of {len(data.y)} rows leaves {len(test[1])} test "
            "row; at least 2 are needed for a test R² (raise --test-fraction or add rows)"
        )
    return train, test


def _fit_or_load(args, data: _Data, timings: dict[str, float], saved: dict[str, Any] | None):
    """Fit a model (or load `--model`) and evaluate it.

    Returns `(model, info, metrics, line)`: training details, the R² values with what they
    were computed on, and the line printed about them. A loaded model is scored on the
    train/test split it was fitted on when `saved` (see `_saved_fit`) matches the data;
    otherwise on all rows, labelled as such (its training rows are unknown).
    """
    import jax
    import optax

    import jacsens

    n_rows = int(len(data.y))
    if getattr(args, "model", None):
        model = _load_model(args.model)
        _check_model_input(model, data.X.shape[1], data.source)
        info: dict[str, Any] = {"model_file": os.path.abspath(args.model), "fitted": False}
        same_data = (
            saved is not None
            and data.saved_standardisation
            and saved["source"] == data.source
            and saved["n_rows"] == n_rows
        )
        if same_data:
            seed, fraction = saved["seed"], saved["test_fraction"]
            (X_tr, y_tr), (X_te, y_te) = _split(data, seed, fraction)
            info["fit_summary"] = saved["summary"]
            info["split"] = {
                "seed": seed,
                "test_fraction": fraction,
                "n_rows": n_rows,
                "model_file": os.path.basename(args.model),
            }
            info.update(n_train=int(len(y_tr)), n_test=int(len(y_te)))
            evaluated_on = "the train/test split the model was fitted on (from its summary.json)"
        else:
            X_tr = y_tr = X_te = y_te = None
            evaluated_on = "all rows (model fitted elsewhere: its training rows are unknown)"
            if data.saved_standardisation:
                info["fit_summary"] = saved["summary"]
    else:
        if not args.lr > 0:
            raise CLIError(f"--lr must be positive, got {args.lr}")
        (X_tr, y_tr), (X_te, y_te) = _split(data, args.seed, args.test_fraction)
        _, k_init, k_fit = jax.random.split(jax.random.key(args.seed), 3)
        info = {"n_train": int(len(y_tr)), "n_test": int(len(y_te))}
        model = jacsens.MLP(data.X.shape[1], args.hidden, "scalar", args.activation, key=k_init)
        _say(
            args,
            f"Fitting MLP {data.X.shape[1]}-{'-'.join(map(str, args.hidden))}-1 "
            f"({args.activation}) on {len(y_tr)} rows, {args.epochs} epochs...",
        )
        t0 = time.perf_counter()
        model, history = jacsens.fit(
            model,
            X_tr,
            y_tr,
            optimizer=optax.adam(args.lr),
            epochs=args.epochs,
            batch_size=args.batch_size,
            key=k_fit,
            validation=(X_te, y_te),
            progress=not args.quiet,
        )
        timings["fit_s"] = time.perf_counter() - t0
        if not np.isfinite(history.train_loss[-1]):
            raise CLIError(f"training diverged (loss {history.train_loss[-1]}); lower --lr")
        info.update(
            fitted=True,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            final_train_loss=history.train_loss[-1],
            final_test_loss=history.val_loss[-1],
        )
        info["split"] = {
            "seed": args.seed,
            "test_fraction": args.test_fraction,
            "n_rows": n_rows,
            "model_file": MODEL_FILE,
        }
        evaluated_on = "held-out test rows of this fit"
    t0 = time.perf_counter()
    predict = jax.jit(lambda X: jax.vmap(model)(X).reshape(X.shape[0]))

    def r2(X, y):
        return _r2(y.astype(np.float64), np.asarray(predict(X), np.float64))

    if X_te is None:
        metrics = {"r2_all_rows": r2(data.X, data.y), "evaluated_on": evaluated_on}
        line = f"R² on all rows (model fitted elsewhere) = {metrics['r2_all_rows']:.3f}"
    else:
        metrics = {
            "train_r2": r2(X_tr, y_tr),
            "test_r2": r2(X_te, y_te),
            "evaluated_on": evaluated_on,
        }
        line = f"Test R² = {metrics['test_r2']:.3f} (train {metrics['train_r2']:.3f})"
        if not info["fitted"]:
            line += "; on the split the model was fitted on"
    timings["evaluate_s"] = time.perf_counter() - t0
    return model, info, metrics, line


def _prepare_out(path: str) -> str:
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"--out {path!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the output folder {path!r}: {e.strerror}") from None
    return path


def _ranked_table(result, by: str = "mean_abs") -> str:
    frame = result.to_frame()
    frame = frame[frame["output"] == result.output_names[0]]
    frame = frame.sort_values(by, ascending=False, kind="stable")
    width = max(8, *(len(f) for f in frame["feature"]))
    lines = [
        f"{'rank':>4}  {'feature':<{width}}  {'mean|dy/dx|':>12} {'± se':>8}  "
        f"{'mean dy/dx':>11}  {'DGSM':>9}  {'max|dy/dx|':>10}"
    ]
    for rank, row in enumerate(frame.itertuples(index=False), 1):
        lines.append(
            f"{rank:>4}  {row.feature:<{width}}  {row.mean_abs:>12.4f} {row.mean_abs_se:>8.4f}  "
            f"{row.mean:>+11.4f}  {row.dgsm:>9.4f}  {row.max_abs:>10.4f}"
        )
    return "\n".join(lines)


def cmd_analyze(args) -> int:
    import jax

    import jacsens

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    saved = _saved_fit(args.model) if args.model else None
    data = _load_data(args, saved)
    timings["data_s"] = time.perf_counter() - t_start
    out = _prepare_out(args.out)
    model, info, metrics, line = _fit_or_load(args, data, timings, saved)
    if data.saved_standardisation:
        line += f"\n(standardisation as saved with the model, in {saved['summary']})"
    _say(args, line)

    t0 = time.perf_counter()
    result = jacsens.sensitivity(
        model,
        data.X,
        chunk_size=args.chunk_size,
        feature_names=data.feature_names,
        output_names=(data.target_name,),
        progress=not args.quiet,
    )
    timings["sensitivity_s"] = time.perf_counter() - t0
    units = "standard deviations of y per standard deviation of x"
    if data.standardisation is None:
        units = "units of y per unit of x"
    _say(
        args,
        f"\nSensitivity of {data.target_name!r} to each feature over {result.n} rows ({units}):",
        _ranked_table(result),
        "",
    )

    t0 = time.perf_counter()
    paths = {
        "csv": os.path.join(out, "sensitivity.csv"),
        "png": os.path.join(out, "sensitivity.png"),
        "summary": os.path.join(out, "summary.json"),
    }
    result.to_frame().to_csv(paths["csv"], index=False)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = result.plot(kind="bar")
        fig.savefig(paths["png"], dpi=120, bbox_inches="tight")
        plt.close(fig)
    except ImportError:
        paths.pop("png")
        _say(args, 'matplotlib is not installed: no sensitivity.png (pip install "jacsens[plot]")')
    if info["fitted"]:
        paths["model"] = os.path.join(out, MODEL_FILE)
        jacsens.save(paths["model"], model)
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "jacsens_version": jacsens.__version__,
        "backend": jax.default_backend(),
        "data": {
            "source": data.source,
            "n_rows": int(data.X.shape[0]),
            "features": list(data.feature_names),
            "target": data.target_name,
            "standardisation": data.standardisation,
        },
        "model": _model_shape(model),
        "metrics": metrics,
        "split": info.pop("split", None),
        "training": info,
        "sensitivity": {
            "n": result.n,
            "mode": result.mode,
            "units": units,
            "ranking_by_mean_abs": result.ranking(0, by="mean_abs"),
            "ranking_by_dgsm": result.ranking(0, by="dgsm"),
        },
        "timings": timings,
        "seed": args.seed,
        "files": {k: os.path.basename(v) for k, v in paths.items()},
    }
    atomic_write_json(paths["summary"], summary)
    _say(
        args,
        f"Report written to {out}/ ({', '.join(sorted(summary['files'].values()))}) in "
        f"{timings['total_s']:.1f} s.",
    )
    return 0


def cmd_fit(args) -> int:
    import jacsens

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    data = _load_data(args)
    out = _prepare_out(args.out)
    model, info, metrics, line = _fit_or_load(args, data, timings, None)
    path = os.path.join(out, MODEL_FILE)
    jacsens.save(path, model)
    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "jacsens_version": jacsens.__version__,
        "data": {
            "source": data.source,
            "features": list(data.feature_names),
            "target": data.target_name,
            "standardisation": data.standardisation,
        },
        "model": _model_shape(model),
        "metrics": metrics,
        "split": info.pop("split"),
        "training": info,
        "timings": timings,
        "seed": args.seed,
        "files": {"model": MODEL_FILE, "summary": "summary.json"},
    }
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    _say(args, f"{line}; model written to {path}")
    return 0


def cmd_explain(args) -> int:
    import jacsens

    model = _load_model(args.model) if args.model else _seed_model()
    try:
        jacsens.explain(model, args.batch_size)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return 0


def cmd_check(args) -> int:
    import jax

    import jacsens

    from ._chain import try_read_chain

    model = _load_model(args.model) if args.model else _seed_model()
    chain = try_read_chain(model)
    if chain is None:
        raise CLIError("the model has no readable layer chain")
    X = jax.random.normal(jax.random.key(args.seed), (args.batch, *chain.in_shape))
    report = jacsens.crosscheck(model, X)
    print(report)
    if report.passed:
        print(f"crosscheck passed: max relative disagreement {report.max_rel:.2e}")
        return 0
    print(f"crosscheck FAILED: {len(report.failures())} comparison(s) out of tolerance")
    return 1


def cmd_bench(args) -> int:
    from ._bench import run_bench

    run_bench(quick=args.quick, out=args.out)
    return 0


_COMMANDS = {
    "analyze": cmd_analyze,
    "fit": cmd_fit,
    "explain": cmd_explain,
    "check": cmd_check,
    "bench": cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `jacsens` command with `argv` (default `sys.argv[1:]`); returns the exit code.

    **Returns:** `0` on success, `1` if `jacsens check` finds a disagreement (or on an
    unexpected internal error), `2` for bad input (one line on stderr).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__

            print(f"jacsens {__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return 2
        return _COMMANDS[args.command](args)
    except CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError) as e:
        # Input the checks above did not anticipate: still one line, not a traceback
        # (JACSENS_DEBUG=1 shows the traceback).
        if os.environ.get("JACSENS_DEBUG"):
            raise
        print(f"{PROG}: error: {type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
