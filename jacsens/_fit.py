"""Training loop: optax optimisers, one jitted epoch, reproducible shuffling."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ._ensemble import Ensemble
from ._io import build_model, describe_model
from ._losses import LossFn, get_loss
from ._plan import make_plan
from ._progress import Progress, progress_bar
from ._validate import (
    as_float_array,
    as_targets,
    check_positive_int,
    check_same_batch,
    check_targets,
)

Callback = Callable[[int, Any, "History"], "bool | None"]


class NonFiniteLossError(FloatingPointError):
    """`jacsens.fit` met a non-finite loss or parameter during training.

    A subclass of `FloatingPointError`. Training stops at the first mini-batch step whose
    loss or updated parameters are not all finite (or at an epoch whose validation loss
    is not finite); that step is not applied. A non-finite gradient stops training
    through the parameters it makes non-finite (an optimizer that drops such gradients,
    `optax.zero_nans()`, keeps training).

    **Attributes:**

    - `model`: the model after the last finite step: every parameter is finite (but the
        model may already produce non-finite outputs, which is what stopped training).
        With `early_stopping`, the model of the best validation epoch so far (what the
        run would have returned), once there is one.
    - `history`: the `History` of the epochs completed before the failure.
    - `epoch`: the 0-based epoch in which training stopped.
    - `step`: the 0-based mini-batch step of that epoch whose update was refused, or
        `None` when the validation loss was the non-finite value.
    """

    def __init__(self, message: str, *, model: Any, history: History, epoch: int, step: int | None):
        super().__init__(message)
        self.model = model
        self.history = history
        self.epoch = epoch
        self.step = step


@dataclasses.dataclass(frozen=True)
class History:
    """Per-epoch losses of a `jacsens.fit` run.

    **Fields:**

    - `train_loss`: mean training loss of each epoch (the average over the epoch's
        mini-batches, weighted by batch size, of the loss before each update).
    - `val_loss`: mean loss on the validation data after each epoch, or `None` if no
        validation data was given.
    - `stopped_early`: whether a callback or early stopping ended training before `epochs`.
    - `best_epoch`: with `early_stopping`, the 0-based epoch whose validation loss was the
        lowest (the returned model is the one of that epoch); otherwise `None`.
    - `member_train_loss`, `member_val_loss`: for an ensemble, the losses of each member,
        shape `(epochs, size)` (`train_loss` and `val_loss` are their means over members);
        `None` otherwise.

    For an ensemble with early stopping each member keeps its own best epoch;
    `best_epoch` is then that of the mean validation loss.
    """

    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...] | None = None
    stopped_early: bool = False
    best_epoch: int | None = None
    member_train_loss: np.ndarray | None = dataclasses.field(default=None, repr=False)
    member_val_loss: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def epochs(self) -> int:
        """Number of epochs run."""
        return len(self.train_loss)

    def __len__(self) -> int:
        return len(self.train_loss)

    def __repr__(self) -> str:
        last = f"train_loss[-1]={self.train_loss[-1]:.4g}" if self.train_loss else "empty"
        if self.val_loss:
            last += f", val_loss[-1]={self.val_loss[-1]:.4g}"
        stop = ", stopped_early=True" if self.stopped_early else ""
        return f"History(epochs={self.epochs}, {last}{stop})"

    def to_frame(self):
        """The losses as a `pandas.DataFrame` indexed by epoch (1-based)."""
        import pandas as pd

        data = {"train_loss": list(self.train_loss)}
        if self.val_loss is not None:
            data["val_loss"] = list(self.val_loss)
        frame = pd.DataFrame(data, index=pd.RangeIndex(1, self.epochs + 1, name="epoch"))
        return frame

    def plot(self, ax=None, *, log: bool = True):
        """Plot the loss curves; returns a `jacsens.plot.Figure` (shown by Jupyter as the
        cell's result; end the line with `;` to hide it).

        **Arguments:**

        - `ax`: an existing `matplotlib` axes to draw into (default: a new figure).
        - `log`: logarithmic loss axis.
        """
        from . import plot

        return plot.loss_curves(self, ax, log=log)


def _mean_loss(params, static, X, Y, loss_fn):
    model = eqx.combine(params, static)
    per_sample = jax.vmap(lambda x, y: loss_fn(model(x), y))(X, Y)
    return jnp.mean(per_sample)


def _masked_mean_loss(params, static, X, Y, weight, loss_fn):
    model = eqx.combine(params, static)
    per_sample = jax.vmap(lambda x, y: loss_fn(model(x), y))(X, Y)
    return jnp.sum(jnp.where(weight > 0, per_sample, 0)) / jnp.sum(weight)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@eqx.filter_jit
def _run_epoch(
    params, opt_state, static, X, Y, key, epoch, optimizer, loss_fn, batch_size, extra, members
):
    """One epoch of one model, or (`members=True`) of every member of a stacked ensemble
    at once: one `vmap` over the members' parameters, optimiser states and keys."""

    def one(params, opt_state, key):
        return _epoch(
            params, opt_state, static, X, Y, key, epoch, optimizer, loss_fn, batch_size, extra
        )

    if members:
        return eqx.filter_vmap(one)(params, opt_state, key)
    return one(params, opt_state, key)


def _epoch(params, opt_state, static, X, Y, key, epoch, optimizer, loss_fn, batch_size, extra):
    """One epoch: a fresh permutation, then `lax.scan` over its mini-batches.

    The final partial batch is padded with weight-0 rows, so every step has the same shape
    and the step is compiled once; its loss and gradient are those of the real rows only.

    A step whose loss or updated parameters are not all finite is not applied,
    and neither is any later step of the epoch: the returned parameters are those after
    the last finite step, and `bad_step` is the index of the first refused step (-1 if
    none), so the caller can stop with a model that is still finite.
    """
    n = X.shape[0]
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(n_batches, batch_size)
    weight = (jnp.arange(n_batches * batch_size) < n).reshape(n_batches, batch_size)
    opt_arrays, opt_static = eqx.partition(opt_state, eqx.is_array)

    def step(carry, batch):
        params, opt_arrays, bad_step = carry
        i, idx, w = batch
        opt_state = eqx.combine(opt_arrays, opt_static)
        Xb, Yb, wb = X[idx], Y[idx], w.astype(X.dtype)
        loss, grads = eqx.filter_value_and_grad(_masked_mean_loss)(
            params, static, Xb, Yb, wb, loss_fn
        )
        # optax relies on standard promotion (Adam's `decay ** count` mixes a float with
        # the int32 step count): run it so under a strict user setting too
        with jax.numpy_dtype_promotion("standard"):
            if extra:  # line searches (lbfgs) and reduce_on_plateau need the loss
                updates, new_opt_state = optimizer.update(
                    grads,
                    opt_state,
                    params,
                    value=loss,
                    grad=grads,
                    value_fn=lambda p: _masked_mean_loss(p, static, Xb, Yb, wb, loss_fn),
                )
            else:
                updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        # gradients are not checked themselves: an optimizer may deliberately drop non-finite
        # ones (optax.zero_nans); a plain one turns them into non-finite parameters
        finite = jnp.isfinite(loss) & _all_finite(new_params)
        take = finite & (bad_step < 0)
        # jnp.where(True, new, old) is `new` bit for bit: finite runs are unchanged
        params = jax.tree.map(lambda a, b: jnp.where(take, a, b), new_params, params)
        opt_arrays = jax.tree.map(
            lambda a, b: jnp.where(take, a, b), eqx.filter(new_opt_state, eqx.is_array), opt_arrays
        )
        bad_step = jnp.where((bad_step < 0) & ~finite, i, bad_step)
        return (params, opt_arrays, bad_step), jnp.where(take, loss, jnp.zeros_like(loss))

    steps = jnp.arange(n_batches, dtype=jnp.int32)
    (params, opt_arrays, bad_step), losses = jax.lax.scan(
        step, (params, opt_arrays, jnp.asarray(-1, jnp.int32)), (steps, idx, weight)
    )
    # the epoch mean in at least float32: a float16 sum over many batches could overflow
    acc = losses.dtype if jnp.finfo(losses.dtype).bits >= 32 else jnp.dtype(jnp.float32)
    rows = jnp.sum(weight, axis=1).astype(acc)
    epoch_loss = jnp.sum(losses.astype(acc) * rows) / n
    return params, eqx.combine(opt_arrays, opt_static), epoch_loss, bad_step


@eqx.filter_jit
def _eval_loss(params, static, X, Y, loss_fn, members):
    if members:
        return eqx.filter_vmap(lambda p: _mean_loss(p, static, X, Y, loss_fn))(params)
    return _mean_loss(params, static, X, Y, loss_fn)


_EXTRA_ARGS_HINT = (
    "jacsens.fit calls `update(grads, state, params)`, and for an "
    "optax.GradientTransformationExtraArgs also passes `value=` (the mini-batch loss), "
    "`grad=` and `value_fn=` (the mini-batch loss as a function of the parameters)"
)


def _as_optimizer(optimizer: Any) -> tuple[optax.GradientTransformation, bool]:
    """The optimiser `fit` runs and whether it takes the loss (`value`, `grad`,
    `value_fn`) as extra arguments.

    `optax.MultiSteps` is unwrapped (it accumulates gradients over `every_k_schedule`
    mini-batches and takes extra arguments). Anything else that is not an optax
    transformation is refused naming what it lacks.
    """
    if optimizer is None:
        return optax.adam(1e-3), False
    if isinstance(optimizer, optax.MultiSteps):
        return optax.GradientTransformationExtraArgs(optimizer.init, optimizer.update), True
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        return optimizer, True
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer, False
    missing = [m for m in ("init", "update") if not callable(getattr(optimizer, m, None))]
    what = (
        f"it has no callable {' or '.join(f'`{m}`' for m in missing)}"
        if missing
        else "it has `init` and `update` but is not one: wrap it as "
        "optax.GradientTransformation(opt.init, opt.update), or as "
        "optax.GradientTransformationExtraArgs if its update takes the loss value"
    )
    raise TypeError(
        "`optimizer` must be an optax.GradientTransformation (e.g. optax.adam(1e-3), "
        f"optax.lbfgs(), optax.MultiSteps(...)), got {type(optimizer).__name__}: {what}."
    )


def _check_optimizer_call(optimizer, extra: bool, params, opt_state, static, X, Y, loss_fn):
    """Call the optimiser's `update` abstractly once (no compilation, no FLOPs) so that an
    update needing arguments `fit` does not pass is refused before training."""
    Xb, Yb = X[:1], Y[:1]
    w = jnp.ones((1,), X.dtype)

    def step(params, opt_state):
        with jax.numpy_dtype_promotion("standard"):
            if extra:
                return optimizer.update(
                    params,
                    opt_state,
                    params,
                    value=jnp.zeros((), X.dtype),
                    grad=params,
                    value_fn=lambda p: _masked_mean_loss(p, static, Xb, Yb, w, loss_fn),
                )
            return optimizer.update(params, opt_state, params)

    try:
        eqx.filter_eval_shape(step, params, opt_state)
    except TypeError as e:
        raise TypeError(
            f"`optimizer`'s update cannot be called the way {_EXTRA_ARGS_HINT}: "
            f"{type(e).__name__}: {e}. Optimisers that need other arguments are not supported."
        ) from e


def _check_finite(A: jax.Array, argname: str) -> None:
    """Refuse NaN/Inf in a data array, naming the argument and the first bad row."""
    if not jnp.issubdtype(A.dtype, jnp.inexact) or A.shape[0] == 0:
        return
    row_ok = np.asarray(jnp.all(jnp.isfinite(A), axis=tuple(range(1, A.ndim))))
    bad = np.flatnonzero(~row_ok)
    if bad.size:
        r = int(bad[0])
        kind = "NaN" if bool(jnp.any(jnp.isnan(A[r]))) else "Inf"
        raise ValueError(
            f"`{argname}` must be finite: row {r} contains {kind} ({bad.size} of "
            f"{A.shape[0]} rows are not finite). Training on it would make every weight NaN; "
            f"drop or impute those rows first."
        )


def _check_targets(model, X, Y, loss, loss_fn: LossFn, xname: str, yname: str):
    """Check `X` and `Y` against the model and the loss; return them in the dtypes the
    model and the loss compute in (the package's dtype rule)."""
    check_same_batch(X, Y, xname, yname)
    plan = make_plan(model, X, None, argname=xname)
    Y = check_targets(loss, Y, plan.out_shape, yname, out_dtype=plan.out_dtype)
    X = X.astype(plan.dtype)
    try:
        out = jax.eval_shape(
            lambda x, y: loss_fn(model(x), y),
            jax.ShapeDtypeStruct(X.shape[1:], X.dtype),
            jax.ShapeDtypeStruct(Y.shape[1:], Y.dtype),
        )
    except Exception as e:
        raise ValueError(
            f"The loss cannot be evaluated on one sample of `{xname}` (shape {X.shape[1:]}) "
            f"and `{yname}` (shape {Y.shape[1:]}): {type(e).__name__}: {e}"
        ) from e
    if out.shape != ():
        raise ValueError(
            f"The loss must return a scalar per sample; with one sample of `{yname}` of shape "
            f"{Y.shape[1:]} it returned shape {out.shape}. Check the shape of `{yname}` "
            "against the model's output."
        )
    return X, Y


def _ensemble_start(model: Any, ensemble: int | None, key: jax.Array) -> tuple[Any, int | None]:
    """The model `fit` trains: a plain model (`None`), or an `Ensemble` and its size."""
    if isinstance(model, Ensemble):
        if ensemble is not None and ensemble != model.size:
            raise ValueError(
                f"`ensemble` ({ensemble}) must equal the size of the Ensemble given as `model` "
                f"({model.size}), or be left out."
            )
        return model, model.size
    if ensemble is None:
        if not isinstance(model, eqx.Module):
            raise TypeError(
                f"`model` must be an equinox Module, got {type(model).__name__} (an "
                "initialiser `key -> model` is taken with `ensemble=K`)."
            )
        return model, None
    ensemble = check_positive_int(ensemble, "ensemble", allow_none=False)
    init_key = jax.random.fold_in(key, _INIT_STREAM)
    if isinstance(model, eqx.Module):
        try:
            tag, hp = describe_model(model)
        except TypeError:
            raise TypeError(
                f"`ensemble={ensemble}` with a {type(model).__name__} instance: jacsens can "
                "re-initialise only a jacsens.MLP or an equinox.nn.MLP from its hyperparameters; "
                "pass an initialiser instead, e.g. `fit(lambda k: MyModel(..., key=k), X, Y, "
                f"ensemble={ensemble}, key=key)`, or a jacsens.Ensemble."
            ) from None
        keys = jax.random.split(init_key, ensemble)
        members = _init_members(tag, json.dumps(hp, sort_keys=True), keys)
        return Ensemble(members, ensemble), ensemble
    if not callable(model):
        raise TypeError(
            f"`model` must be an equinox Module or, with `ensemble`, an initialiser "
            f"`key -> model`, got {type(model).__name__}."
        )
    try:
        return Ensemble.init(model, ensemble, key=init_key), ensemble
    except Exception as e:
        raise TypeError(
            f"`model` was taken as an initialiser `key -> model` (ensemble={ensemble}) but "
            f"`model(key)` under `vmap` failed: {type(e).__name__}: {e}"
        ) from e


@eqx.filter_jit
def _init_members(tag: str, hp_json: str, keys: jax.Array) -> Any:
    """Members of the architecture `describe_model` gave, one per key: one compiled
    program (the strings are static, so it is cached across `fit` calls), not one
    dispatch per initialiser operation."""
    hp = json.loads(hp_json)
    return eqx.filter_vmap(lambda k: build_model(tag, hp, k))(keys)


# fold_in constant separating the members' initialisation keys from the shuffling keys
_INIT_STREAM = 0x1D17


def fit(
    model: Any,
    X: Float[Array, "batch *in"],
    Y: Array,
    *,
    loss: str | LossFn = "mse",
    optimizer: optax.GradientTransformation | optax.MultiSteps | None = None,
    epochs: int = 100,
    batch_size: int = 64,
    key: PRNGKeyArray,
    validation: tuple[Array, Array] | None = None,
    early_stopping: int | None = None,
    ensemble: int | None = None,
    progress: Progress = "auto",
    callbacks: Sequence[Callback] = (),
) -> tuple[Any, History]:
    """Train a model (or an ensemble of models at once) on `(X, Y)` with mini-batch
    gradient descent.

    Each epoch draws a permutation of the rows from `jax.random.fold_in(key, epoch)` and
    takes one optimiser step per mini-batch; the final partial batch is used too (nothing
    is dropped). The whole epoch is one jitted function (`jax.lax.scan` over the
    mini-batches, the last one padded with weight-0 rows), so runs with the same `key`
    are bit-identical on one device.

    **Arguments:**

    - `model`: an `eqx.Module` acting on one sample (`jacsens.MLP`, `eqx.nn.MLP`, ...);
        with `ensemble=K` also an initialiser `key -> model` or a `jacsens.Ensemble`.
    - `X`: inputs of shape `(N, *in_shape)`, floating point.
    - `Y`: targets of shape `(N, *out_shape)` (the model's output shape): floats for
        regression; for `"cross_entropy"` also integer class labels of shape
        `(N, *out_shape[:-1])` in `[0, out_shape[-1])`; for `"binary_cross_entropy"`
        0/1 labels of the output's shape. For a named loss any other shape is refused
        (it would broadcast); the targets of a callable loss are not checked.
    - `loss`: a per-sample loss name (`"mse"`, `"cross_entropy"`,
        `"binary_cross_entropy"`, see `jacsens.LOSSES`) or a callable
        `(y_pred, y_true) -> scalar` (array outputs are summed); the batch loss is the
        mean over samples.
    - `optimizer`: any `optax.GradientTransformation`; default `optax.adam(1e-3)`.
        Optimisers that need the loss (`optax.GradientTransformationExtraArgs`:
        `optax.lbfgs()`, chains ending in `optax.contrib.reduce_on_plateau()`) get
        `value` (the mini-batch loss before the step), `grad` and `value_fn` (the
        mini-batch loss as a function of the parameters); `optax.MultiSteps` is taken as
        is. With `optax.lbfgs` use `batch_size=len(X)`: its line search assumes the same
        objective at every step.
    - `epochs`: number of passes over the data (at least 1).
    - `batch_size`: mini-batch size (at least 1; clipped to `N`).
    - `key`: a `jax.random` key for the shuffling (keyword only, required).
    - `validation`: optional `(X_val, Y_val)`; its mean loss is recorded after each epoch.
    - `early_stopping`: a patience in epochs (needs `validation`): training stops once the
        validation loss has not improved for that many epochs, and the model of the epoch
        with the lowest validation loss is returned (`History.best_epoch`). For an
        ensemble each member keeps its own best epoch and training stops when no member
        has improved for `early_stopping` epochs.
    - `ensemble`: train `K` models at once, in one `vmap` over their initialisation and
        shuffling keys (member `i` shuffles with `jax.random.split(key, K)[i]`; members
        are initialised from `jax.random.fold_in(key, ...)` keys). `model` is then an
        initialiser `key -> model`, a `jacsens.MLP`/`eqx.nn.MLP` whose architecture is
        re-initialised `K` times (its own weights are not used), or a `jacsens.Ensemble`
        (trained further). Returns a `jacsens.Ensemble`.
    - `progress`: `"auto"` (default): a progress bar in a terminal or notebook (`tqdm.auto`)
        once the job has run for 2 s, and in logs (stderr not a terminal) a line every 30 s
        (`JACSENS_PROGRESS_INTERVAL`); `True`: always; `False`: never.
    - `callbacks`: callables `(epoch, model, history) -> bool | None`, called after each
        epoch (0-based `epoch`) with the history so far; returning a truthy value
        (`True`, `np.True_`, `jnp.asarray(True)`) stops training.

    **Returns:**

    `(trained_model, History)`; `trained_model` is a `jacsens.Ensemble` with `ensemble`.

    **Raises:**

    - `ValueError`/`TypeError` naming the argument, before any training, for mismatched
        shapes or batch sizes, non-positive `epochs`/`batch_size`, an `optimizer` that is
        not an optax transformation (or whose update needs arguments other than those
        above), `early_stopping` without `validation`, or NaN/Inf in `X`, `Y` or
        `validation` (the message names the first non-finite row).
    - `jacsens.NonFiniteLossError` (a `FloatingPointError`) when training diverges:
        the first mini-batch step whose loss or updated parameters are not finite is not
        applied and training stops; the error carries `.model` (the model
        after the last finite step), `.history` (the completed epochs), `.epoch` and
        `.step`. A non-finite validation loss stops training the same way (`.step` is
        `None`). In an ensemble, any diverging member stops training.
    """
    if not isinstance(key, jax.Array) or key.shape not in ((), (2,)):
        raise TypeError(f"`key` must be a jax.random key (jax.random.key(seed)), got {key!r:.60}.")
    model, members = _ensemble_start(model, ensemble, key)
    one = model.member(0) if members else model
    loss_fn = get_loss(loss, "loss")
    optimizer, extra = _as_optimizer(optimizer)
    epochs = check_positive_int(epochs, "epochs", allow_none=False)
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=False)
    if early_stopping is not None:
        early_stopping = check_positive_int(early_stopping, "early_stopping", allow_none=False)
        if validation is None:
            raise ValueError("`early_stopping` needs `validation=(X_val, Y_val)` to watch.")
    if callable(callbacks):
        callbacks = (callbacks,)
    callbacks = tuple(callbacks)
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"`callbacks[{i}]` must be callable, got {type(cb).__name__}.")

    X = as_float_array(X, "X")
    Y = as_targets(Y, "Y")
    X, Y = _check_targets(one, X, Y, loss, loss_fn, "X", "Y")
    if X.shape[0] == 0:
        raise ValueError("`X` must contain at least one sample, got 0 rows.")
    _check_finite(X, "X")
    _check_finite(Y, "Y")
    if validation is not None:
        if not isinstance(validation, tuple | list) or len(validation) != 2:
            raise TypeError("`validation` must be a pair (X_val, Y_val).")
        Xv = as_float_array(validation[0], "validation[0]")
        Yv = as_targets(validation[1], "validation[1]")
        if Xv.ndim < 1 or Xv.shape[0] == 0:
            raise ValueError(
                f"`validation[0]` must hold at least one sample, got shape {Xv.shape}."
            )
        Xv, Yv = _check_targets(one, Xv, Yv, loss, loss_fn, "validation[0]", "validation[1]")
        if Yv.shape[1:] != Y.shape[1:]:
            raise ValueError(
                f"`validation[1]` must have samples of shape {Y.shape[1:]} like `Y`, got "
                f"{Yv.shape[1:]}."
            )
        _check_finite(Xv, "validation[0]")
        _check_finite(Yv, "validation[1]")
    batch_size = min(batch_size, X.shape[0])

    root = model.members if members else model
    params, static = eqx.partition(root, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):  # see _epoch
        if members:
            opt_state = eqx.filter_vmap(optimizer.init)(params)
        else:
            opt_state = optimizer.init(params)
    if members:
        # one member's parameters and state, abstractly (shapes only: nothing runs)
        p0, s0 = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype) if eqx.is_array(a) else a,
            (params, opt_state),
        )
        _check_optimizer_call(optimizer, extra, p0, s0, static, X, Y, loss_fn)
    else:
        _check_optimizer_call(optimizer, extra, params, opt_state, static, X, Y, loss_fn)
    keys = jax.random.split(key, members) if members else key

    def assemble(params):
        m = eqx.combine(params, static)
        return Ensemble(m, members) if members else m

    train_rows: list[np.ndarray] = []
    val_rows: list[np.ndarray] | None = [] if validation is not None else None
    best = _Best(early_stopping) if early_stopping is not None else None
    stopped = False

    def failed_model(params):
        """The parameters a NonFiniteLossError carries: with early stopping the best
        validation epoch's so far (what a finished run would return), else the last
        finite step's."""
        return best.params if best is not None and best.params is not None else params

    def history(stopped: bool) -> History:
        return _history(train_rows, val_rows, stopped, best, members)

    bar = progress_bar(progress, total=epochs, desc="fit", unit="epoch", leave=False)
    try:
        for epoch in range(epochs):
            params, opt_state, epoch_loss, bad_step = _run_epoch(
                params,
                opt_state,
                static,
                X,
                Y,
                keys,
                jnp.asarray(epoch, jnp.uint32),
                optimizer,
                loss_fn,
                batch_size,
                extra,
                bool(members),
            )
            bad = np.atleast_1d(np.asarray(bad_step))
            if np.any(bad >= 0):
                who = int(np.flatnonzero(bad >= 0)[0])
                where = f" (ensemble member {who})" if members else ""
                raise NonFiniteLossError(
                    f"Training stopped: the loss or the updated parameters became "
                    f"non-finite in epoch {epoch}, mini-batch step {int(bad[who])}{where} (the "
                    "data are finite, so the model diverged: lower the learning rate, or check "
                    "the model and loss for NaN-producing operations). The model after the "
                    "last finite step is on this error's `.model`, the history on `.history`.",
                    model=assemble(failed_model(params)),
                    history=history(False),
                    epoch=epoch,
                    step=int(bad[who]),
                )
            if val_rows is not None:
                v = np.atleast_1d(
                    np.asarray(_eval_loss(params, static, Xv, Yv, loss_fn, bool(members)))
                )
                if not np.all(np.isfinite(v)):
                    raise NonFiniteLossError(
                        f"Training stopped: the validation loss became "
                        f"{v.tolist() if members else float(v[0])} after "
                        f"epoch {epoch} (the training steps were finite). The model reached is "
                        "on this error's `.model`, the history of the earlier epochs on "
                        "`.history`.",
                        model=assemble(failed_model(params)),
                        history=history(False),
                        epoch=epoch,
                        step=None,
                    )
            train_rows.append(np.atleast_1d(np.asarray(epoch_loss, np.float64)))
            if val_rows is not None:
                val_rows.append(v.astype(np.float64))
            if bar is not None:
                post = {"loss": f"{float(np.mean(train_rows[-1])):.4g}"}
                if val_rows is not None:
                    post["val"] = f"{float(np.mean(val_rows[-1])):.4g}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            patience_out = best is not None and best.update(epoch, val_rows[-1], params)  # type: ignore[index]
            if callbacks:
                hist = history(False)
                current = assemble(params)
                # Every callback runs each epoch; any truthy answer (True, np.True_,
                # jnp.asarray(True)) stops training, None or a falsy one does not.
                answers = [cb(epoch, current, hist) for cb in callbacks]
                if any(r is not None and bool(r) for r in answers):
                    patience_out = True
            if patience_out:
                stopped = epoch + 1 < epochs
                break
    finally:
        if bar is not None:
            bar.close()
    if best is not None:
        params = best.params
    return assemble(params), history(stopped)


class _Best:
    """Early-stopping book-keeping: the best validation loss of each member so far, the
    parameters of that epoch, and the epochs since any member last improved."""

    def __init__(self, patience: int):
        self.patience = patience
        self.loss: np.ndarray | None = None
        self.params: Any = None
        self.epoch: np.ndarray | None = None
        self.since = 0

    def update(self, epoch: int, val: np.ndarray, params: Any) -> bool:
        """Record epoch `epoch`'s validation losses; `True` when training should stop."""
        if self.loss is None:
            self.loss, self.params = val.copy(), params
            self.epoch = np.zeros(val.shape, np.int64)
            return False
        better = val < self.loss
        if np.any(better):
            self.since = 0
            take = jnp.asarray(better if val.size > 1 else better[0])

            def pick(new, old):
                cond = take.reshape(take.shape + (1,) * (new.ndim - take.ndim))
                return jnp.where(cond, new, old)

            self.params = jax.tree.map(pick, params, self.params)
            self.loss = np.where(better, val, self.loss)
            self.epoch = np.where(better, epoch, self.epoch)  # type: ignore[arg-type]
        else:
            self.since += 1
        return self.since >= self.patience


def _history(train_rows, val_rows, stopped: bool, best: _Best | None, members) -> History:
    width = members or 1
    train = np.array(train_rows, np.float64).reshape(len(train_rows), width)
    val = None if val_rows is None else np.array(val_rows, np.float64).reshape(-1, width)
    best_epoch = None
    if best is not None and val is not None and len(val):
        best_epoch = int(np.argmin(val.mean(axis=1)))
    return History(
        tuple(float(t) for t in train.mean(axis=1)),
        None if val is None else tuple(float(t) for t in val.mean(axis=1)),
        stopped,
        best_epoch,
        train if members else None,
        val if members and val is not None else None,
    )
