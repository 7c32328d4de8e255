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


def _columns(name: str):
    def parse(text: str) -> tuple[str, ...]:
        cols = tuple(c.strip() for c in text.split(","))
        if not cols or any(not c for c in cols):
            raise argparse.ArgumentTypeError(
                f"{name} must be comma-separated column names such as a,b, got {text!r}"
            )
        repeated = sorted({c for c in cols if cols.count(c) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(f"{name} names {repeated} more than once")
        return cols

    return parse


def _ensemble_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"--ensemble must be 'auto' or a positive integer, got {text!r}"
        )
    return value


def _non_negative(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a number >= 0, got {text!r}")
        return value

    return parse


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
        p.add_argument(
            "--target",
            type=_columns("--target"),
            metavar="COLUMN[,COLUMN...]",
            help="target column of --data; several (a,b) fit one multi-output model",
        )
        p.add_argument(
            "--features",
            type=_columns("--features"),
            metavar="A,B,...",
            help="input columns of --data (default: every column but the targets)",
        )
        p.add_argument(
            "--drop",
            type=_columns("--drop"),
            metavar="A,B,...",
            help="columns of --data to leave out of the inputs",
        )
        p.add_argument(
            "--task",
            choices=("auto", "regression", "classification"),
            default="auto",
            help="auto (default): classification when the target holds text, booleans or "
            "whole numbers with at most 10 levels (fewer than half the rows), else regression",
        )
        p.add_argument(
            "--ensemble",
            type=_ensemble_arg,
            default="auto",
            metavar="K|auto",
            help="train K models at once (one vmap) and report the spread between them; auto "
            f"(default): {AUTO_ENSEMBLE} when five fits cost at most {AUTO_ENSEMBLE_FLOP:.0e} "
            "training FLOPs (about 6 x parameters x rows x epochs each), else 1",
        )
        p.add_argument(
            "--weight-decay",
            type=_non_negative("--weight-decay"),
            default=0.0,
            help="decoupled weight decay (AdamW); 0 (default): plain Adam",
        )
        p.add_argument(
            "--early-stopping",
            type=_positive_int("--early-stopping"),
            metavar="EPOCHS",
            help="hold out 15%% of the training rows and stop when their loss has not improved "
            "for EPOCHS epochs, keeping the best model (default: train all --epochs)",
        )
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
        default=ANALYZE_CHUNK,
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
        help="rows of the example batch the costs are for (default: the rows per chunk "
        "`analyze` streams this model's data in, min(rows, 4096), when the model's "
        "summary.json is beside it; else 1)",
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

REPORT_FILES = frozenset(
    {MODEL_FILE, "sensitivity.csv", "sensitivity.png", "sensitivity_by_output.png", "summary.json"}
)
ANALYZE_CHUNK = 4096
AUTO_ENSEMBLE = 5
AUTO_ENSEMBLE_FLOP = 5e10
VAL_FRACTION = 0.15


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

    targets = list(raw.target_names) if len(raw.target_names) > 1 else raw.target_name
    try:
        # class labels are raw's codes already: keep them (a class absent from this file
        # must not shift the codes of the others)
        codes = [str(k) for k in range(len(raw.class_names))] if raw.class_names else None
        data = datasets.from_frame(
            raw.to_frame(), targets, standardise=standardise, task=raw.task, classes=codes
        )
    except ValueError as e:
        raise CLIError(str(e).replace("pass `standardise=False`", "pass --raw")) from None
    if raw.class_names:  # the codes are the same; keep the classes' own names
        import dataclasses

        data = dataclasses.replace(data, class_names=raw.class_names)
    return data


def _load_data(args, record: FitRecord | None = None) -> tuple[Dataset, str, bool]:
    """The data of `--data`/`--target` (default: the bundled diabetes data).

    **Returns:** `(data, source, reused)`: `reused` is true when `record` (the fit of the
    `--model` being analysed) was made on data with these columns, whose standardisation
    constants are then applied instead of the file's own (and instead of `--raw`).
    """
    from . import datasets

    if args.data is None:
        for flag in ("target", "features", "drop"):
            if getattr(args, flag, None) is not None:
                raise CLIError(f"--{flag} needs --data FILE.csv")
        if getattr(args, "task", "auto") == "classification":
            raise CLIError("--task classification needs --data FILE.csv (diabetes is regression)")
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
    targets = list(args.target)
    features = _feature_columns(args, targets)
    task = getattr(args, "task", "auto")
    classes = None
    if record is not None and record.target == ", ".join(targets):
        # analyze --model beside the summary.json of its fit: the fit's task, class codes
        # and input columns in the fit's order (a model's inputs are positional)
        task = record.training.get("task", task)
        classes = record.training.get("classes") or None
        features = _recorded_features(args, record, features)
    try:
        raw = datasets.from_csv(
            args.data,
            targets if len(targets) > 1 else targets[0],
            features=features,
            standardise=False,
            dtype=np.float64,
            task=task,
            classes=classes,
        )
    except ValueError as e:
        message = str(e)
        if "Classification takes one target" in message or "regression target" in message:
            message += " (--task regression)"
        raise CLIError(message) from None
    # Too few rows is said first: with one row every column is "constant" too.
    if not getattr(args, "model", None):  # fitting
        _check_split_rows(len(raw), args.test_fraction, source)
    elif len(raw) < 2:
        raise CLIError(f"{source} has {len(raw)} data row; an R² needs at least 2")
    reused = (
        record is not None
        and record.target == raw.target_name
        and raw.feature_names == record.features
    )
    if reused:
        st = record.standardisation  # type: ignore[union-attr]
        return _standardised(raw, False if st is None else st), source, True
    return _standardised(raw, not args.raw), source, False


def _recorded_features(args, record: FitRecord, chosen: list[str] | None) -> list[str] | None:
    """The input columns for a model whose fit record is known: the recorded ones, in the
    recorded order (`--features` may list them in another order); a different set is
    refused. A file without those columns keeps `chosen` (the model is then scored as
    fitted elsewhere)."""
    import pandas as pd

    recorded = list(record.features)
    columns = {str(c) for c in pd.read_csv(args.data, nrows=0).columns}
    if not set(recorded) <= columns:
        return chosen
    if chosen is not None and set(chosen) != set(recorded):
        raise CLIError(
            f"the model was fitted on the features {recorded} (its summary.json); "
            f"--features/--drop choose {chosen}"
        )
    return recorded


def _feature_columns(args, targets: list[str]) -> list[str] | None:
    """The input columns `--features`/`--drop` choose (None: every non-target column)."""
    features, drop = getattr(args, "features", None), getattr(args, "drop", None)
    if features is None and drop is None:
        return None
    if features is not None and drop is not None:
        raise CLIError("give --features or --drop, not both")
    import pandas as pd

    try:
        columns = [str(c) for c in pd.read_csv(args.data, nrows=0).columns]
    except (ValueError, OSError) as e:
        raise CLIError(f"cannot read the header of {args.data!r}: {e}") from None
    chosen = list(features) if features is not None else list(drop)  # type: ignore[arg-type]
    flag = "--features" if features is not None else "--drop"
    missing = [c for c in chosen if c not in columns]
    if missing:
        raise CLIError(
            f"{flag} column(s) {missing} are not in {args.data!r}; its columns: {columns}"
        )
    both = [c for c in chosen if c in targets]
    if features is not None and both:
        raise CLIError(f"--features {both} are also --target columns")
    if features is not None:
        return chosen
    kept = [c for c in columns if c not in targets and c not in chosen]
    if not kept:
        raise CLIError(f"--drop leaves no input columns in {args.data!r}")
    return kept


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


def _load_model(
    path: str,
    skeleton: str | None = None,
    *,
    command: str = "analyze",
):
    """The model in `path`; one of any class but an MLP needs `skeleton` (`--skeleton`),
    which only explain/check/bench take (an ensemble of MLPs is rebuilt like an MLP)."""
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


def _model_text(spec: dict[str, Any]) -> str:
    """`MLP 10-32-32-1 (tanh)`, `5 x MLP ...` for an ensemble, else the class name."""
    if spec.get("class") == "jacsens.Ensemble":
        member = {"class": spec["member_class"], **spec["member"]}
        return f"{spec['size']} x {_model_text(member)} (ensemble)"
    if "widths" in spec:
        n_out = 1 if spec["out_size"] == "scalar" else spec["out_size"]
        sizes = [spec["in_size"], *spec["widths"], n_out]
        return f"MLP {'-'.join(map(str, sizes))} ({spec['activation']})"
    return str(spec.get("class"))


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


def _check_model_input(
    model, data: Dataset, source: str, explicit_classification: bool = False
) -> None:
    """The model maps one row of the data to the target(s): one number (regression, one
    target), one per target, or one logit per class (checked on shapes, nothing runs)."""
    import jax

    from ._plan import make_plan

    X = jax.ShapeDtypeStruct(data.X.shape, data.X.dtype)
    one = model.member(0) if _is_ensemble(model) else model
    try:
        plan = make_plan(one, X, None, argname="--data")
    except (TypeError, ValueError) as e:
        raise CLIError(f"the model does not fit the data ({source}): {e}") from None
    if data.task == "classification":
        n = len(data.class_names)
        one_logit = n == 2 and explicit_classification  # else a regression model's output
        ok = ((n,),) + (((), (1,)) if one_logit else ())
        need = f"{n} outputs (one logit per class of {data.target_name!r})"
        if n == 2 and plan.out_shape in ((), (1,)) and not one_logit:
            need += (
                "; a model with one output is taken as a sigmoid classifier only with "
                "--task classification (or pass --task regression)"
            )
    else:
        n = len(data.target_names)
        ok = ((), (1,)) if n == 1 else ((n,),)
        need = "one output (the target)" if n == 1 else f"{n} outputs (one per target)"
    if plan.out_shape not in ok:
        if data.task == "regression" and len(plan.out_shape) == 1 and plan.out_shape[0] > 1:
            need += " (if the target holds class labels: --task classification)"
        raise CLIError(f"the model has outputs of shape {plan.out_shape}; analyze needs {need}")


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


def _is_ensemble(model) -> bool:
    from ._ensemble import Ensemble

    return isinstance(model, Ensemble)


def _probability_model(model):
    """Class probabilities of a classifier (for an ensemble, of each member: the ensemble
    then averages the members' probabilities, not their logits)."""
    import jacsens

    if _is_ensemble(model):
        return jacsens.Ensemble(jacsens.Probabilities(model.members), model.size)
    return jacsens.Probabilities(model)


def _scores(model, data: Dataset, X, y, prefix: str) -> dict[str, Any]:
    """The metrics of `model` on `(X, y)`: R² (per target and their mean) for regression;
    accuracy, log-loss, per-class recall and the chance accuracy (the largest class's share)
    for classification. Keys start with `prefix` (`"test_"`, `"train_"`, ...)."""
    import equinox as eqx
    import jax

    y = np.asarray(y)
    floats = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    if floats:  # inputs in the model's precision (a float64 model on float32 data)
        X = np.asarray(X, floats[0].dtype)
    if data.task == "classification":
        p = np.asarray(jax.jit(jax.vmap(_probability_model(model)))(X), np.float64)
        pred = np.argmax(p, axis=1)
        labels = y.astype(np.int64)
        recall = {}
        for k, name in enumerate(data.class_names):
            rows = labels == k
            recall[name] = float(np.mean(pred[rows] == k)) if rows.any() else float("nan")
        counts = np.bincount(labels, minlength=len(data.class_names))
        return {
            f"{prefix}accuracy": float(np.mean(pred == labels)),
            f"{prefix}log_loss": float(
                -np.mean(np.log(np.clip(p[np.arange(len(y)), labels], 1e-15, 1)))
            ),
            f"{prefix}recall": recall,
            f"{prefix}chance_accuracy": float(counts.max() / counts.sum()),
        }
    pred = np.asarray(jax.jit(jax.vmap(model))(X), np.float64).reshape(len(y), -1)
    yy = y.astype(np.float64).reshape(len(y), -1)
    r2 = [_r2(yy[:, t], pred[:, t]) for t in range(yy.shape[1])]
    out: dict[str, Any] = {f"{prefix}r2": float(np.mean(r2))}
    if len(r2) > 1:
        out[f"{prefix}r2_per_target"] = dict(zip(data.target_names, r2, strict=True))
    return out


def _score_line(data: Dataset, metrics: dict[str, Any], where: str) -> str:
    """`Test R² = 0.512 (train 0.601)` or `Test accuracy = 0.944 (train 0.993, chance 0.40)
    ...` for the metrics of `where` (`"test"` or `"all rows"`)."""
    key = "test_" if where == "test" else "all_"
    label = "Test" if where == "test" else "On all rows (model fitted elsewhere):"
    if data.task == "regression" and where != "test":  # the wording earlier reports used
        line = f"R² on all rows (model fitted elsewhere) = {metrics['all_r2']:.3f}"
        if "all_r2_per_target" in metrics:
            per = ", ".join(f"{k} {v:.3f}" for k, v in metrics["all_r2_per_target"].items())
            line += f"; per target: {per}"
        return line
    if data.task == "classification":
        line = f"{label} accuracy = {metrics[key + 'accuracy']:.3f}"
        extra = [f"chance {metrics[key + 'chance_accuracy']:.3f}"]
        if where == "test":
            extra.insert(0, f"train {metrics['train_accuracy']:.3f}")
        line += f" ({', '.join(extra)}), log-loss {metrics[key + 'log_loss']:.3f}"
        recall = ", ".join(f"{k} {v:.2f}" for k, v in metrics[key + "recall"].items())
        return line + f"\n  recall per class: {recall}"
    line = f"{label} R² = {metrics[key + 'r2']:.3f}"
    if where == "test":
        line += f" (train {metrics['train_r2']:.3f})"
    if key + "r2_per_target" in metrics:
        per = ", ".join(f"{k} {v:.3f}" for k, v in metrics[key + "r2_per_target"].items())
        line += f"; per target: {per}"
    return line


def _fit_warnings(data: Dataset, metrics: dict[str, Any]) -> list[str]:
    """Warnings about a model whose sensitivities deserve little trust: poor test
    performance (R² < 0.1; accuracy within 0.05 of always answering the largest class) or
    a train score far above the test score (R² or accuracy more than 0.2 / 0.15 higher)."""
    out = []
    if data.task == "classification":
        if "test_accuracy" not in metrics:
            return out
        acc, chance = metrics["test_accuracy"], metrics["test_chance_accuracy"]
        if acc <= chance + 0.05:
            out.append(
                f"poor test performance: accuracy {acc:.3f} is near chance ({chance:.3f}, "
                "always the largest class); the sensitivities describe a model that has not "
                "learned the task"
            )
        if metrics["train_accuracy"] - acc > 0.15 and metrics["train_accuracy"] > chance + 0.05:
            out.append(
                f"overfitting: train accuracy {metrics['train_accuracy']:.3f} >> test {acc:.3f}"
                " (try --early-stopping, --weight-decay, a smaller --hidden or fewer --epochs)"
            )
        return out
    if "test_r2" not in metrics:
        return out
    r2 = metrics["test_r2"]
    if not r2 >= 0.1:
        out.append(
            f"poor test performance: test R² = {r2:.3f} < 0.1; the sensitivities describe a "
            "model that does not predict the target"
        )
    if metrics["train_r2"] - r2 > 0.2 and metrics["train_r2"] >= 0.1:
        out.append(
            f"overfitting: train R² {metrics['train_r2']:.3f} >> test R² {r2:.3f} (try "
            "--early-stopping, --weight-decay, a smaller --hidden or fewer --epochs)"
        )
    return out


def _ensemble_size(args, n_params: int, n_rows: int) -> tuple[int, str]:
    """`--ensemble` (K, and why): `auto` is AUTO_ENSEMBLE members when five fits cost at
    most AUTO_ENSEMBLE_FLOP training FLOPs (6 FLOPs per parameter per row per epoch:
    forward and backward), else 1."""
    if args.ensemble != "auto":
        return int(args.ensemble), "--ensemble"
    flops = 6.0 * n_params * n_rows * args.epochs * AUTO_ENSEMBLE
    if flops <= AUTO_ENSEMBLE_FLOP:
        return AUTO_ENSEMBLE, f"auto: {flops:.1e} training FLOPs for {AUTO_ENSEMBLE} members"
    return (
        1,
        f"auto: {AUTO_ENSEMBLE} members would cost {flops:.1e} FLOPs > {AUTO_ENSEMBLE_FLOP:.0e}",
    )


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
    """Fit an MLP (or an ensemble of them) on the train part of the split of `--seed` and
    `--test-fraction`: mean squared error for regression, softmax cross-entropy for
    classification; with `--early-stopping` on a validation part of the training rows."""
    import equinox as eqx
    import jax
    import optax

    import jacsens

    from . import datasets

    if not args.lr > 0:
        raise CLIError(f"--lr must be positive, got {args.lr}")
    (X_tr, y_tr), (X_te, y_te) = _split(data, args.seed, args.test_fraction, source)
    k_split, k_init, k_fit = jax.random.split(jax.random.key(args.seed), 3)
    classification = data.task == "classification"
    n_targets = len(data.target_names)
    out_size: int | str = (
        len(data.class_names) if classification else ("scalar" if n_targets == 1 else n_targets)
    )
    # In the data's dtype (float32), whatever JAX's default float is (x64 or not).
    model = jacsens.MLP(
        data.n_features, args.hidden, out_size, args.activation, key=k_init, dtype=data.X.dtype
    )
    X_fit, y_fit, validation = X_tr, y_tr, (X_te, y_te)
    if args.early_stopping:
        if len(y_tr) < 4:
            raise CLIError(f"--early-stopping needs at least 4 training rows, got {len(y_tr)}")
        (X_fit, y_fit), validation = datasets.train_test_split(
            (X_tr, y_tr), VAL_FRACTION, key=jax.random.fold_in(k_split, 1)
        )
    n_params = sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    K, why = _ensemble_size(args, n_params, len(y_fit))
    sizes = [data.n_features, *args.hidden, 1 if out_size == "scalar" else out_size]
    what = f"MLP {'-'.join(map(str, sizes))} ({args.activation})"
    kind = (
        f"classification, {len(data.class_names)} classes, cross-entropy"
        if classification
        else "regression, mean squared error"
    )
    _say(
        args,
        f"Fitting {what if K == 1 else f'{K} x {what} (an ensemble, {why})'} on {len(y_fit)} "
        f"rows, {args.epochs} epochs ({kind})...",
    )
    optimizer = (
        optax.adamw(args.lr, weight_decay=args.weight_decay)
        if args.weight_decay > 0
        else optax.adam(args.lr)
    )
    t0 = time.perf_counter()
    try:
        model, history = jacsens.fit(
            model,
            X_fit,
            y_fit,
            loss="cross_entropy" if classification else "mse",
            optimizer=optimizer,
            epochs=args.epochs,
            batch_size=args.batch_size,
            key=k_fit,
            validation=validation,
            early_stopping=args.early_stopping,
            ensemble=K if K > 1 else None,
            progress=False if args.quiet else "auto",
        )
    except jacsens.NonFiniteLossError as e:
        where = "the validation loss" if e.step is None else f"mini-batch step {e.step}"
        raise CLIError(
            f"training diverged in epoch {e.epoch + 1} ({where} became non-finite): lower "
            f"--lr (now {args.lr:g}) or check the data"
        ) from None
    timings["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = {
        **_scores(model, data, X_tr, y_tr, "train_"),
        **_scores(model, data, X_te, y_te, "test_"),
        "evaluated_on": "held-out test rows of this fit",
    }
    timings["evaluate_s"] = time.perf_counter() - t0
    training = {
        "fitted": True,
        "task": data.task,
        "classes": list(data.class_names),
        "seed": args.seed,
        "epochs": args.epochs,
        "epochs_run": history.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "weight_decay": args.weight_decay,
        "ensemble": K,
        "ensemble_rule": why,
        "early_stopping": args.early_stopping,
        "best_epoch": history.best_epoch,
        "final_train_loss": history.train_loss[-1],
        "final_validation_loss" if args.early_stopping else "final_test_loss": history.val_loss[-1],
        "n_train": len(y_tr),
        "n_fit": len(y_fit),
        "n_test": len(y_te),
    }
    record = _record(
        data,
        source,
        model,
        split=Split(args.seed, args.test_fraction, len(data), MODEL_FILE),
        training=training,
        metrics=metrics,
    )
    line = _score_line(data, metrics, "test")
    if args.early_stopping:
        line += (
            f"\n(early stopping: {history.epochs} of {args.epochs} epochs, best validation "
            f"loss at epoch {history.best_epoch + 1}"
            + (", mean over members; each member keeps its own best epoch)" if K > 1 else ")")
        )
    return _Outcome(model, record, line)


def _load_and_score(
    args, data: Dataset, source: str, fitted: FitRecord | None, reused: bool
) -> _Outcome:
    """Load `--model` and score it: on the split it was fitted on when `fitted` (the record
    beside it) is of these very rows, otherwise on all rows, labelled so."""
    model = _load_model(args.model)
    _check_model_input(model, data, source, getattr(args, "task", "auto") == "classification")
    training: dict[str, Any] = {
        "fitted": False,
        "model_file": os.path.abspath(args.model),
        "task": data.task,
        "classes": list(data.class_names),
        "ensemble": model.size if _is_ensemble(model) else 1,
    }
    if reused:
        training["fit_summary"] = os.path.join(
            os.path.dirname(training["model_file"]), "summary.json"
        )
    split = None
    if reused and fitted is not None and fitted.source == source and fitted.n_rows == len(data):
        split = fitted.split
        (X_tr, y_tr), (X_te, y_te) = _split(data, split.seed, split.test_fraction, source)
        training.update(n_train=len(y_tr), n_test=len(y_te))
        metrics = {
            **_scores(model, data, X_tr, y_tr, "train_"),
            **_scores(model, data, X_te, y_te, "test_"),
            "evaluated_on": "the train/test split the model was fitted on (from its summary.json)",
        }
        line = _score_line(data, metrics, "test") + "; on the split the model was fitted on"
    else:
        metrics = {
            **_scores(model, data, data.X, data.y, "all_"),
            "evaluated_on": "all rows (model fitted elsewhere: its training rows are unknown)",
        }
        if data.task == "regression":  # the name earlier reports used
            metrics["r2_all_rows"] = metrics["all_r2"]
        line = _score_line(data, metrics, "all rows")
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


def _ranked_table(result, output: int | str | None = None, top: int | None = None) -> str:
    """The ranking by mean |dy/dx| of one output (or the RMS over outputs, `None`), with its
    standard error; for an ensemble the spread between members and the rank stability."""
    names = result.ranking(output)
    idx = [result.feature_names.index(n) for n in names][: top or len(names)]
    v, se = result.values("mean_abs", output), result.se("mean_abs", output)
    dgsm, mx = result.values("dgsm", output), result.values("max_abs", output)
    signed = output is not None or result.n_out == 1
    mean = result.values("mean", output) if signed else None
    ens = _is_ensemble_result(result)
    width = max(8, *(len(result.feature_names[i]) for i in idx))
    head = f"{'rank':>4}  {'feature':<{width}}  {'mean|dy/dx|':>12} {'± se':>8}"
    if ens:
        k = _top_k(result.n_in)
        spread, share = result.between_sd("mean_abs", output), result.rank_stability(k, output)
        head += f"  {'spread':>8} {f'top-{k}':>6}"
    if signed:
        head += f"  {'mean dy/dx':>11}"
    head += f"  {'DGSM':>9}  {'max|dy/dx|':>10}"
    lines = [head]
    for rank, i in enumerate(idx, 1):
        row = f"{rank:>4}  {result.feature_names[i]:<{width}}  {v[i]:>12.4f} {se[i]:>8.4f}"
        if ens:
            row += f"  {spread[i]:>8.4f} {share[i]:>6.0%}"
        if signed:
            row += f"  {mean[i]:>+11.4f}"  # type: ignore[index]
        row += f"  {dgsm[i]:>9.4f}  {mx[i]:>10.4f}"
        lines.append(row)
    if top and top < len(names):
        lines.append(f"      ... {len(names) - top} more features in sensitivity.csv")
    return "\n".join(lines)


def _top_k(n_in: int) -> int:
    """The k of the rank-stability column: 5, or fewer for 5 features or fewer (every
    feature is in the top 5 of 5): n_in - 1, at least 1."""
    return max(1, min(5, n_in - 1))


def _is_ensemble_result(result) -> bool:
    from ._sensitivity._ensemble import EnsembleSensitivity

    return isinstance(result, EnsembleSensitivity)


def _sensitivity_summary(result, near_constant, units: str, scale: str) -> dict[str, Any]:
    """The `sensitivity` section of summary.json: rankings of every output and of their
    aggregate, and for an ensemble the rank stability."""
    out: dict[str, Any] = {
        "n": result.n,
        "mode": result.mode,
        "units": units,
        "scale": scale,
        "outputs": list(result.output_names),
        "aggregate": result.output_label(None),
        "near_constant_features": list(near_constant),
        "ranking_by_mean_abs": result.ranking(None, by="mean_abs"),
        "ranking_by_dgsm": result.ranking(None, by="dgsm"),
    }
    if result.n_out > 1:
        out["ranking_by_mean_abs_per_output"] = {
            name: result.ranking(name, by="mean_abs") for name in result.output_names
        }
    if _is_ensemble_result(result):
        k = _top_k(result.n_in)
        share = result.rank_stability(k, None)
        out["ensemble"] = {
            "size": result.size,
            "top_k": k,
            "top_k_share": dict(zip(result.feature_names, share.tolist(), strict=True)),
            "top_feature_agreement": result.top_agreement(),
            "se": "sqrt(between-member sd² + within-data se²)",
        }
    return out


def _report_png(result, outcome: _Outcome, units: str, warnings: list[str], folder: str, files):
    """sensitivity.png (the ranking of the output or the aggregate over outputs) and, for
    several outputs, sensitivity_by_output.png (one panel per output, top 10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plot

    # The figure says what it shows: model, its score on which rows, the data.
    rec = outcome.record
    m = rec.metrics
    if "test_accuracy" in m:
        score = f"test accuracy = {m['test_accuracy']:.3f} (chance {m['test_chance_accuracy']:.2f})"
        score += f" on {rec.training['n_test']} held-out rows"
    elif "test_r2" in m:
        score = f"test R² = {m['test_r2']:.3f} on {rec.training['n_test']} held-out rows"
    elif "all_accuracy" in m:
        score = f"accuracy = {m['all_accuracy']:.3f} on all rows (fitted elsewhere)"
    else:
        score = f"R² = {m['all_r2']:.3f} on all rows (fitted elsewhere)"
    data_line = f"data: {os.path.basename(rec.source)}, {rec.n_rows} rows"
    sub = f"{_model_text(rec.model)}, {score}\n{data_line}"
    if result.n_out > 1 and rec.training.get("task") == "classification":
        sub += "; sensitivity of each class probability"
    for w in warnings:
        sub += f"\nWARNING: {w.split(';')[0].split(' (')[0]}"
    title = None
    if rec.training.get("task") == "classification":
        title = f"Sensitivity of the class probabilities of {rec.target!r}"
        if result.n_out > 1:
            title += f", RMS over {result.n_out} classes"
    fig = result.plot(kind="bar", top=20, title=title, subtitle=sub, units=units)
    fig.savefig(os.path.join(folder, files["png"]), dpi=120, bbox_inches="tight")
    plt.close(fig)
    if result.n_out > 1:
        shown = list(result.output_names)[:12]
        cols = min(3, len(shown))
        rows = -(-len(shown) // cols)
        top = min(10, result.n_in)
        fig, axes = plt.subplots(
            rows, cols, figsize=(5.2 * cols, (1.6 + 0.3 * top) * rows), squeeze=False
        )
        for ax, name in zip(axes.flat, shown, strict=False):
            plot.sensitivity_bar(
                result,
                output=name,
                top=top,
                ax=ax,
                sign=not _is_ensemble_result(result),
                units=units,
            )
        for ax in list(axes.flat)[len(shown) :]:
            ax.axis("off")
        more = "" if len(shown) == result.n_out else f" (first 12 of {result.n_out})"
        fig.suptitle(f"Sensitivity of each output{more}: {_model_text(rec.model)}", fontsize=11)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "sensitivity_by_output.png"), dpi=110, bbox_inches="tight")
        plt.close(fig)
        files["png_by_output"] = "sensitivity_by_output.png"


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
    warnings = _fit_warnings(data, outcome.record.metrics)
    for w in warnings:
        _say(args, f"Warning: {w}")

    t0 = time.perf_counter()
    classification = data.task == "classification"
    target = _probability_model(outcome.model) if classification else outcome.model
    result = jacsens.sensitivity(
        target,
        data.X,
        chunk_size=args.chunk_size,
        feature_names=data.feature_names,
        output_names=data.class_names if classification else data.target_names,
        progress=False if args.quiet else "auto",
    )
    timings["sensitivity_s"] = time.perf_counter() - t0
    from ._sensitivity._result import report_scaling

    scale = args.scale or ("none" if data.standardisation is None else "std")
    y_std = np.ones(result.n_out) if classification else data.y_std
    in_scale, out_scale, units = report_scaling(data.X, scale, data.x_std, y_std)
    if classification:
        units = units.replace("standard deviations of y", "probability")
        units = units.replace("units of y", "probability")
    result = result.rescale(in_scale, out_scale)
    near_constant = result.near_constant(data.X)
    what = repr(data.target_name)
    if result.n_out > 1:
        what = f"the targets {data.target_name!r}, {result.output_label(None)}"
    if classification:
        what = f"the class probabilities of {data.target_name!r}, RMS over {result.n_out} classes"
    ens = ""
    if _is_ensemble_result(result):
        ens = (
            f"; ensemble of {result.size}: ± se includes the spread between members, "
            f"top-{_top_k(result.n_in)} = share of members ranking the feature in their "
            f"top {_top_k(result.n_in)}"
        )
    _say(
        args,
        f"\nSensitivity of {what} to each feature over {result.n} rows ({units}{ens}):",
        _ranked_table(result, None, top=40),
        "",
    )
    if result.n_out > 1:
        for name in result.output_names[:20]:
            top = ", ".join(
                f"{f} ({result.values('mean_abs', name)[result.feature_names.index(f)]:.3g})"
                for f in result.ranking(name)[:5]
            )
            _say(args, f"  {'class' if classification else 'output'} {name}: {top}")
        _say(args, "")
    if _is_ensemble_result(result):
        _say(
            args,
            f"Rank stability: the top feature {result.ranking()[0]!r} is the top feature of "
            f"{result.top_agreement():.0%} of the {result.size} members.",
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
            _report_png(result, outcome, units, warnings, folder, files)
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
            "warnings": warnings,
            "sensitivity": _sensitivity_summary(result, near_constant, units, scale),
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
    batch = args.batch_size
    if batch is None:
        record = _fit_record_beside(args.model, args) if args.model else None
        if record is not None:
            batch = min(record.n_rows, ANALYZE_CHUNK)
            why = f"the chunk analyze streams the {record.n_rows} rows of its data in"
            _say(args, f"Example batch: {batch} rows, {why} (--batch-size sets another)\n")
        else:
            batch = 1
    X = jnp.zeros((batch, *shape), dtype)
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
