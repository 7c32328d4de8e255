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
from typing import TYPE_CHECKING, Any

import numpy as np

from ._atomic import atomic_folder, atomic_write_json
from ._io import FitRecord, Split, describe_model

if TYPE_CHECKING:
    from .datasets import Dataset

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


def _shape(text: str) -> tuple[int, ...]:
    """Parse `--input-shape 1,28,28` (an empty string is a scalar input)."""
    if not text.strip():
        return ()
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = (-1,)
    if any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"--input-shape must be comma-separated positive sizes such as 1,28,28, got {text!r}"
        )
    return shape


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
    analyze.add_argument(
        "--scale",
        choices=("std", "range", "none"),
        help="units of the sensitivities: per standard deviation of each feature (std, the "
        "default for standardised data), per range max - min (range), or the data's own "
        "units (none, the default with --raw)",
    )

    fit = sub.add_parser(
        "fit",
        help="fit an MLP to a data set and save it",
        description="Fit an MLP (Adam, mean squared error) and write the model file and "
        "summary.json to --out.",
    )
    data_args(fit, fit_only=True)

    def model_args(p: argparse.ArgumentParser, default: str = "seed net") -> None:
        p.add_argument("--model", metavar="FILE", help=f"a saved model (default: the {default})")
        p.add_argument(
            "--skeleton",
            metavar="MODULE:CALLABLE",
            help="for a --model other than an MLP: a function (or class) called with one "
            "argument, a PRNG key, that builds a model of the saved structure (its values "
            "are not used); MODULE is a module name (package.module) or a file "
            "(path/to/file.py)",
        )
        p.add_argument(
            "--input-shape",
            type=_shape,
            metavar="D1,D2,...",
            help="shape of one input sample, for a --model whose file records none "
            "(jacsens.save(..., input_shape=...) records it)",
        )

    explain = sub.add_parser(
        "explain",
        help="print the input Jacobian of a model as a product of layer Jacobians",
        description="Print ∂y/∂x as a chain of dense and diagonal factors with the cost of "
        "each Jacobian mode. Default model: the 52-20-10-1 tanh seed network.",
    )
    model_args(explain)
    explain.add_argument(
        "--batch-size",
        type=_positive_int("--batch-size"),
        default=1,
        help="rows of the example batch the costs are for (1)",
    )

    check = sub.add_parser(
        "check",
        help="cross-check every Jacobian mode, the kernel and finite differences",
        description="Run jacsens.crosscheck on random inputs (float64 references); exit "
        "status 1 if any comparison fails.",
    )
    model_args(check)
    check.add_argument("--batch", type=_positive_int("--batch"), default=4, help="inputs (4)")
    check.add_argument("--seed", type=int, default=0, help="random seed for the inputs")

    bench = sub.add_parser(
        "bench",
        help="time the input-Jacobian modes",
        description="Time input_jacobian in every mode against plain jax.jacrev/jacfwd, on "
        "four MLPs or on --model.",
    )
    model_args(bench, default="four MLPs")
    bench.add_argument(
        "--batch-size",
        type=_positive_int("--batch-size"),
        default=64,
        help="rows per call with --model (64)",
    )
    bench.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    bench.add_argument("--out", metavar="FILE.json", help="also write the results as JSON")
    return parser


# --------------------------------------------------------------------------- data

REPORT_FILES = frozenset({MODEL_FILE, "sensitivity.csv", "sensitivity.png", "summary.json"})


def _fit_record_beside(model_path: str, args) -> FitRecord | None:
    """The record of the fit that wrote `model_path`, from the `summary.json` beside it.

    `None` when there is none, or it records another model file's fit; an unreadable one is
    reported (one line) and ignored.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "summary.json")
    if not os.path.isfile(path):
        return None
    try:
        record = FitRecord.read(path)
    except (OSError, ValueError) as e:
        _say(args, f"note: ignoring {path}: {e}")
        return None
    if record.split is None or record.split.model_file != os.path.basename(model_path):
        return None
    return record


def _standardised(raw: Dataset, standardise: Any) -> Dataset:
    """`raw` (read in float64 with `standardise=False`) standardised as `from_frame` does
    (or not, for `standardise=False`), in float32 like the models `fit` makes."""
    from . import datasets

    try:
        return datasets.from_frame(raw.to_frame(), raw.target_name, standardise=standardise)
    except ValueError as e:
        raise CLIError(str(e).replace("pass `standardise=False`", "pass --raw")) from None


def _load_data(args, record: FitRecord | None = None) -> tuple[Dataset, str, bool]:
    """The data of `--data`/`--target` (default: the bundled diabetes data).

    **Returns:** `(data, source, reused)`: `reused` is true when `record` (the fit of the
    `--model` being analysed) was made on data with these columns, whose standardisation
    constants are then applied instead of the file's own (and instead of `--raw`).
    """
    from . import datasets

    if args.data is None:
        if args.target is not None:
            raise CLIError("--target needs --data FILE.csv")
        try:
            data = datasets.diabetes()
        except ImportError as e:
            raise CLIError(str(e)) from None
        # The bundled data's standardisation is fixed, so a model fitted on it saw the same.
        return data, DIABETES_SOURCE, record is not None and record.source == DIABETES_SOURCE
    if args.target is None:
        raise CLIError("--data needs --target COLUMN (the column to predict)")
    if os.path.isdir(args.data):
        raise CLIError(f"--data {args.data!r} is a folder; give a CSV file")
    if not os.path.isfile(args.data):
        raise CLIError(f"data file {args.data!r} does not exist")
    source = os.path.abspath(args.data)
    try:
        raw = datasets.from_csv(args.data, args.target, standardise=False, dtype=np.float64)
    except ValueError as e:
        raise CLIError(str(e)) from None
    # Too few rows is said first: with one row every column is "constant" too.
    if not getattr(args, "model", None):  # fitting
        _check_split_rows(len(raw), args.test_fraction, source)
    elif len(raw) < 2:
        raise CLIError(f"{source} has {len(raw)} data row; an R² needs at least 2")
    reused = (
        record is not None and record.target == args.target and raw.feature_names == record.features
    )
    if reused:
        st = record.standardisation  # type: ignore[union-attr]
        return _standardised(raw, False if st is None else st), source, True
    return _standardised(raw, not args.raw), source, False


def _import_callable(spec: str) -> Any:
    """The callable `--skeleton` names: `package.module:name` (imported as usual) or
    `path/to/file.py:name` (the file is imported by its path, under a private name)."""
    import importlib
    import importlib.util

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise CLIError(
            f"--skeleton must be MODULE:CALLABLE or path/to/file.py:CALLABLE, got {spec!r}"
        )
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise CLIError(f"--skeleton {spec!r}: file {where!r} does not exist")
        module_name = f"_jacsens_skeleton_{abs(hash(path)):x}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise CLIError(f"--skeleton {spec!r}: {where!r} cannot be imported")
        module = importlib.util.module_from_spec(loader_spec)
        # Registered before it runs, as `import` does: dataclasses (Equinox modules)
        # defined in it look their module up while they are created.
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_name]
            raise CLIError(
                f"--skeleton {spec!r}: importing {where!r} failed: {type(e).__name__}: {e}"
            ) from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise CLIError(f"--skeleton {spec!r}: cannot import {where!r}: {e}") from None
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"--skeleton {spec!r}: {where!r} has no {name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"--skeleton {spec!r}: {name!r} is not callable")
    return obj


def _load_model(path: str, skeleton: str | None = None, *, command: str = "analyze"):
    """The model in `path`; one of any class but an MLP needs `skeleton` (`--skeleton`),
    which only explain/check/bench take."""
    import jacsens

    from ._io import read_header

    if os.path.isdir(path):
        raise CLIError(f"--model {path!r} is a folder; give a model file")
    if not os.path.isfile(path):
        raise CLIError(f"model file {path!r} does not exist")
    try:
        header = read_header(path)
        if "structure" not in header:
            return jacsens.load(path)
        if command == "analyze":
            raise CLIError(
                f"--model {path!r} holds a {header['class']}; analyze works on MLP files "
                "(explain, check and bench take any model with --skeleton)"
            )
        if skeleton is None:
            raise CLIError(
                f"--model {path!r} holds a {header['class']}, not an MLP: give --skeleton "
                "MODULE:CALLABLE (or path/to/file.py:CALLABLE), a function of a PRNG key "
                "that builds a model of that structure"
            )
        factory = _import_callable(skeleton)
        try:
            return jacsens.load(path, like=factory)
        except ValueError as e:  # said in the command line's words
            raise CLIError(str(e).replace("`like`", f"--skeleton {skeleton!r}")) from None
    except ValueError as e:
        raise CLIError(str(e)) from None


def _seed_model():
    import jax

    import jacsens

    return jacsens.MLP(52, (20, 10), "scalar", "tanh", key=jax.random.key(0))


def _model_json(model) -> dict[str, Any]:
    cls, hp = describe_model(model)
    return {"class": cls, **hp}


def _in_shape(model) -> tuple[int, ...]:
    """A saveable MLP's input shape (`describe_model` records its `in_size`)."""
    in_size = describe_model(model)[1]["in_size"]
    return () if in_size == "scalar" else (int(in_size),)


def _model_and_input(args) -> tuple[Any, tuple[int, ...], np.dtype]:
    """`--model` (default: the seed net), the shape of one input sample and the dtype of
    inputs (the model's floating-point parameters' own)."""
    import equinox as eqx
    import jax

    from ._io import read_header

    if not args.model:
        if args.skeleton is not None or args.input_shape is not None:
            raise CLIError("--skeleton and --input-shape go with --model FILE")
        return _seed_model(), (52,), np.dtype(np.float32)
    model = _load_model(args.model, args.skeleton, command=args.command)
    recorded = read_header(args.model).get("input_shape")
    if recorded is None and "structure" not in read_header(args.model):
        recorded = list(_in_shape(model))  # an MLP file written before input_shape
    if recorded is not None:
        shape = tuple(recorded)
        if args.input_shape is not None and args.input_shape != shape:
            raise CLIError(
                f"--input-shape {args.input_shape} disagrees with the input shape {shape} "
                f"recorded in {args.model!r}"
            )
    elif args.input_shape is not None:
        shape = args.input_shape
    else:
        raise CLIError(
            f"{args.model!r} records no input shape: give --input-shape D1,D2,... (the shape "
            "of one sample)"
        )
    floats = [
        leaf.dtype
        for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
        if np.issubdtype(leaf.dtype, np.floating)
    ]
    return model, shape, np.dtype(floats[0] if floats else np.float32)


def _check_model_input(model, data: Dataset, source: str) -> None:
    """The model maps one row of the data to one number (checked on shapes, nothing runs)."""
    import jax

    from ._plan import make_plan

    X = jax.ShapeDtypeStruct(data.X.shape, data.X.dtype)
    try:
        plan = make_plan(model, X, None, argname="--data")
    except (TypeError, ValueError) as e:
        raise CLIError(f"the model does not fit the data ({source}): {e}") from None
    if plan.out_shape not in ((), (1,)):
        raise CLIError(
            f"the model has outputs of shape {plan.out_shape}; analyze needs a model with one "
            "output (the target)"
        )


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class _Outcome:
    """A fitted or loaded model, the record of its fit and the line printed about its R²."""

    model: Any
    record: FitRecord
    line: str


def _say(args, *lines: str) -> None:
    if not getattr(args, "quiet", False):
        for line in lines:
            print(line)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def _predictor(model):
    import jax

    predict = jax.jit(lambda X: jax.vmap(model)(X).reshape(X.shape[0]))
    return lambda X, y: _r2(np.asarray(y, np.float64), np.asarray(predict(X), np.float64))


def _check_split_rows(n: int, test_fraction: float, source: str) -> None:
    """At least two test rows (or the test R² is undefined) and one training row."""
    from . import datasets

    n_train, n_test = datasets.split_sizes(n, test_fraction)
    if n_test >= 2 and n_train >= 1:
        return
    need = 3
    while not (lambda tr, te: tr >= 1 and te >= 2)(*datasets.split_sizes(need, test_fraction)):
        need += 1  # ends: both parts grow with the row count for a fraction in (0, 1)
    raise CLIError(
        f"{source} has {n} data row(s): --test-fraction {test_fraction} leaves {n_test} "
        f"test row(s) and {n_train} training row(s); a test R² needs at least 2 test rows "
        f"and fitting 1 training row, so at least {need} rows at this --test-fraction"
    )


def _split(data: Dataset, seed: int, test_fraction: float, source: str):
    """The train/test split of `seed` (the first of three keys split from it) and
    `test_fraction`: at least two test rows (or the test R² is undefined) and one train row."""
    import jax

    from . import datasets

    _check_split_rows(len(data), test_fraction, source)
    k_split = jax.random.split(jax.random.key(seed), 3)[0]
    return datasets.train_test_split((data.X, data.y), test_fraction, key=k_split)


def _fit(args, data: Dataset, source: str, timings: dict[str, float]) -> _Outcome:
    """Fit an MLP on the train part of the split of `--seed` and `--test-fraction`."""
    import jax
    import optax

    import jacsens

    if not args.lr > 0:
        raise CLIError(f"--lr must be positive, got {args.lr}")
    (X_tr, y_tr), (X_te, y_te) = _split(data, args.seed, args.test_fraction, source)
    _, k_init, k_fit = jax.random.split(jax.random.key(args.seed), 3)
    # In the data's dtype (float32), whatever JAX's default float is (x64 or not).
    model = jacsens.MLP(
        data.n_features, args.hidden, "scalar", args.activation, key=k_init, dtype=data.X.dtype
    )
    _say(
        args,
        f"Fitting MLP {data.n_features}-{'-'.join(map(str, args.hidden))}-1 "
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
        progress=False if args.quiet else "auto",
    )
    timings["fit_s"] = time.perf_counter() - t0
    if not np.isfinite(history.train_loss[-1]):
        raise CLIError(f"training diverged (loss {history.train_loss[-1]}); lower --lr")
    t0 = time.perf_counter()
    r2 = _predictor(model)
    metrics = {
        "train_r2": r2(X_tr, y_tr),
        "test_r2": r2(X_te, y_te),
        "evaluated_on": "held-out test rows of this fit",
    }
    timings["evaluate_s"] = time.perf_counter() - t0
    record = _record(
        data,
        source,
        model,
        split=Split(args.seed, args.test_fraction, len(data), MODEL_FILE),
        training={
            "fitted": True,
            "seed": args.seed,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "final_train_loss": history.train_loss[-1],
            "final_test_loss": history.val_loss[-1],
            "n_train": len(y_tr),
            "n_test": len(y_te),
        },
        metrics=metrics,
    )
    line = f"Test R² = {metrics['test_r2']:.3f} (train {metrics['train_r2']:.3f})"
    return _Outcome(model, record, line)


def _load_and_score(
    args, data: Dataset, source: str, fitted: FitRecord | None, reused: bool
) -> _Outcome:
    """Load `--model` and score it: on the split it was fitted on when `fitted` (the record
    beside it) is of these very rows, otherwise on all rows, labelled so."""
    model = _load_model(args.model)
    _check_model_input(model, data, source)
    training: dict[str, Any] = {"fitted": False, "model_file": os.path.abspath(args.model)}
    if reused:
        training["fit_summary"] = os.path.join(
            os.path.dirname(training["model_file"]), "summary.json"
        )
    r2 = _predictor(model)
    split = None
    if reused and fitted is not None and fitted.source == source and fitted.n_rows == len(data):
        split = fitted.split
        (X_tr, y_tr), (X_te, y_te) = _split(data, split.seed, split.test_fraction, source)
        training.update(n_train=len(y_tr), n_test=len(y_te))
        metrics = {
            "train_r2": r2(X_tr, y_tr),
            "test_r2": r2(X_te, y_te),
            "evaluated_on": "the train/test split the model was fitted on (from its summary.json)",
        }
        line = f"Test R² = {metrics['test_r2']:.3f} (train {metrics['train_r2']:.3f})"
        line += "; on the split the model was fitted on"
    else:
        metrics = {
            "r2_all_rows": r2(data.X, data.y),
            "evaluated_on": "all rows (model fitted elsewhere: its training rows are unknown)",
        }
        line = f"R² on all rows (model fitted elsewhere) = {metrics['r2_all_rows']:.3f}"
    if reused:
        line += f"\n(standardisation as saved with the model, in {training['fit_summary']})"
    record = _record(data, source, model, split=split, training=training, metrics=metrics)
    return _Outcome(model, record, line)


def _record(data: Dataset, source: str, model, *, split, training, metrics) -> FitRecord:
    """The fit record of `model` on `data`: what the data and model were, and how it fared."""
    return FitRecord(
        source=source,
        features=data.feature_names,
        target=data.target_name,
        n_rows=len(data),
        standardisation=data.standardisation,
        model=_model_json(model),
        split=split,
        training=training,
        metrics=metrics,
    )


# --------------------------------------------------------------------------- output


def _replaceable(path: str) -> bool:
    """Whether the folder `path` holds only what a jacsens report or fit writes."""
    entries = set(os.listdir(path))
    return not entries or ("summary.json" in entries and entries <= REPORT_FILES)


def _check_out(args) -> str:
    """`--out` can take the report: checked before any work (fitting takes minutes)."""
    out = os.path.abspath(args.out)
    parent = os.path.dirname(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {args.out!r} exists and is not a folder")
    if not os.path.isdir(parent):
        raise CLIError(f"--out {args.out!r}: the folder {parent!r} does not exist")
    if os.path.isdir(out) and not _replaceable(out):
        raise CLIError(
            f"--out {args.out!r} holds files jacsens did not write; it would be replaced by "
            "the report: choose a new or empty folder"
        )
    for name in ("model", "data"):
        given = getattr(args, name, None)
        if given and os.path.dirname(os.path.realpath(given)) == os.path.realpath(out):
            raise CLIError(
                f"--{name} {given!r} is inside --out {args.out!r}, which the new report "
                "replaces as a whole: write the report to another folder"
            )
    return out


def _write_folder(args, out: str, write) -> None:
    """Run `write(folder)` on a temporary folder beside `out`, then swap it in whole."""
    try:
        with atomic_folder(out, replace=_replaceable) as tmp:
            write(tmp)
    except ValueError as e:
        raise CLIError(str(e)) from None


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


# --------------------------------------------------------------------------- commands


def cmd_analyze(args) -> int:
    import jax

    import jacsens

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = _check_out(args)
    fitted = _fit_record_beside(args.model, args) if args.model else None
    data, source, reused = _load_data(args, fitted)
    timings["data_s"] = time.perf_counter() - t_start
    if args.model:
        outcome = _load_and_score(args, data, source, fitted, reused)
    else:
        outcome = _fit(args, data, source, timings)
    _say(args, outcome.line)

    t0 = time.perf_counter()
    result = jacsens.sensitivity(
        outcome.model,
        data.X,
        chunk_size=args.chunk_size,
        feature_names=data.feature_names,
        output_names=(data.target_name,),
        progress=False if args.quiet else "auto",
    )
    timings["sensitivity_s"] = time.perf_counter() - t0
    from ._sensitivity._result import report_scaling

    scale = args.scale or ("none" if data.standardisation is None else "std")
    in_scale, out_scale, units = report_scaling(data.X, scale, data.x_std, data.y_std)
    result = result.rescale(in_scale, out_scale)
    near_constant = result.near_constant(data.X)
    _say(
        args,
        f"\nSensitivity of {data.target_name!r} to each feature over {result.n} rows ({units}):",
        _ranked_table(result),
        "",
    )
    if near_constant:
        _say(
            args,
            f"Warning: {len(near_constant)} feature(s) hold one value in more than 99% of the "
            f"rows, so their standard deviation and range come from a few rows and their "
            f"scaled sensitivity is not comparable: {', '.join(near_constant[:10])}"
            f"{' ...' if len(near_constant) > 10 else ''}",
            "",
        )
    files = {"csv": "sensitivity.csv", "png": "sensitivity.png", "summary": "summary.json"}
    if outcome.record.training["fitted"]:
        files["model"] = MODEL_FILE

    def write(folder: str) -> None:
        t0 = time.perf_counter()
        result.to_frame().to_csv(os.path.join(folder, files["csv"]), index=False)
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            # The figure says what it shows: model, its score on which rows, the data.
            rec = outcome.record
            spec = rec.model
            model_text = spec["class"]
            if "widths" in spec:
                n_out = 1 if spec["out_size"] == "scalar" else spec["out_size"]
                sizes = [spec["in_size"], *spec["widths"], n_out]
                model_text = f"MLP {'-'.join(map(str, sizes))} ({spec['activation']})"
            if "test_r2" in rec.metrics:
                score = f"test R² = {rec.metrics['test_r2']:.3f} on {rec.training['n_test']} "
                score += "held-out rows"
            else:
                score = f"R² = {rec.metrics['r2_all_rows']:.3f} on all rows (fitted elsewhere)"
            source = os.path.basename(rec.source)
            fig = result.plot(
                kind="bar",
                top=20,
                subtitle=f"{model_text}, {score}\ndata: {source}, {rec.n_rows} rows",
                units=units,
            )
            fig.savefig(os.path.join(folder, files["png"]), dpi=120, bbox_inches="tight")
            plt.close(fig)
        except ImportError:
            files.pop("png")
            _say(
                args,
                'matplotlib is not installed: no sensitivity.png (pip install "jacsens[plot]")',
            )
        if "model" in files:
            jacsens.save(os.path.join(folder, MODEL_FILE), outcome.model)
        timings["report_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        summary = {
            "jacsens_version": jacsens.__version__,
            "backend": jax.default_backend(),
            **outcome.record.to_json(),
            "sensitivity": {
                "n": result.n,
                "mode": result.mode,
                "units": units,
                "scale": scale,
                "near_constant_features": list(near_constant),
                "ranking_by_mean_abs": result.ranking(0, by="mean_abs"),
                "ranking_by_dgsm": result.ranking(0, by="dgsm"),
            },
            "timings": timings,
            "files": files,
        }
        atomic_write_json(os.path.join(folder, files["summary"]), summary)

    _write_folder(args, out, write)
    _say(
        args,
        f"Report written to {args.out}/ ({', '.join(sorted(files.values()))}) in "
        f"{timings['total_s']:.1f} s.",
    )
    return 0


def cmd_fit(args) -> int:
    import jacsens

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = _check_out(args)
    data, source, _ = _load_data(args)
    outcome = _fit(args, data, source, timings)

    def write(folder: str) -> None:
        jacsens.save(os.path.join(folder, MODEL_FILE), outcome.model)
        timings["total_s"] = time.perf_counter() - t_start
        summary = {
            "jacsens_version": jacsens.__version__,
            **outcome.record.to_json(),
            "timings": timings,
            "files": {"model": MODEL_FILE, "summary": "summary.json"},
        }
        atomic_write_json(os.path.join(folder, "summary.json"), summary)

    _write_folder(args, out, write)
    _say(args, f"{outcome.line}; model written to {os.path.join(args.out, MODEL_FILE)}")
    return 0


def cmd_explain(args) -> int:
    import jax.numpy as jnp

    import jacsens

    model, shape, dtype = _model_and_input(args)
    # An example batch of the shape and dtype the model will see: the plan (segments,
    # bracketing, costs) is for that batch, not for a guessed one.
    X = jnp.zeros((args.batch_size, *shape), dtype)
    try:
        jacsens.explain(model, X)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return 0


def cmd_check(args) -> int:
    import jax

    import jacsens

    model, shape, dtype = _model_and_input(args)
    # Inputs in the model's own precision (crosscheck makes its float64 references itself).
    X = jax.random.normal(jax.random.key(args.seed), (args.batch, *shape), dtype)
    try:
        report = jacsens.crosscheck(model, X)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(report)
    if report.passed:
        print(f"crosscheck passed: max relative disagreement {report.max_rel:.2e}")
        return 0
    print(f"crosscheck FAILED: {len(report.failures())} comparison(s) out of tolerance")
    return 1


def _bench_model(args) -> dict[str, Any]:
    """`bench_jacobian`'s results for the one model of `--model`."""
    import statistics

    import jax

    import jacsens

    from ._timing import MODES, _contenders, time_interleaved

    model, shape, dtype = _model_and_input(args)
    X = jax.random.normal(jax.random.key(1), (args.batch_size, *shape), dtype)
    try:
        auto = jacsens.jacobian_cost(model, X).best
    except ValueError as e:
        raise CLIError(str(e)) from None
    samples = time_interleaved(_contenders(model, X), repeats=3 if args.quick else 7)
    medians = {k: statistics.median(v) if isinstance(v, list) else None for k, v in samples.items()}
    timed = {m: medians[m] for m in MODES if m != "auto" and medians[m] is not None}
    name = os.path.basename(args.model)
    case = {
        "net": f"{name} {shape}",
        "name": name,
        "batch": args.batch_size,
        "auto_choice": auto,
        "median_s": medians,
        "errors": {k: v for k, v in samples.items() if isinstance(v, str)},
        "fastest": min(timed, key=timed.__getitem__) if timed else None,
    }
    from ._timing import metadata

    return {"meta": metadata(args.quick), "cases": [case]}


def cmd_bench(args) -> int:
    from ._timing import bench_jacobian, bench_table

    if args.out is not None:
        out = os.path.abspath(args.out)
        if os.path.isdir(out):
            raise CLIError(f"--out {args.out!r} is a folder; give a file name such as bench.json")
    if args.model or args.skeleton is not None or args.input_shape is not None:
        results = _bench_model(args)
    else:
        results = bench_jacobian(quick=args.quick)
    meta = results["meta"]
    print(f"jacsens bench on {meta['backend']} ({meta['device_kind']}), jax {meta['jax']}")
    print(bench_table(results))
    for case in results["cases"]:
        for mode, error in case["errors"].items():
            print(f"{case['name']}: {mode} failed: {error}")
    if args.out is not None:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        atomic_write_json(out, results)
        print(f"results written to {args.out}")
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
