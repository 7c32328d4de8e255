"""Training loop: optax optimisers, one jitted epoch, reproducible shuffling."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

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
    - `stopped_early`: whether a callback stopped training before `epochs`.
    """

    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...] | None = None
    stopped_early: bool = False

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
def _run_epoch(params, opt_state, static, X, Y, key, epoch, optimizer, loss_fn, batch_size):
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
        loss, grads = eqx.filter_value_and_grad(_masked_mean_loss)(
            params, static, X[idx], Y[idx], w.astype(X.dtype), loss_fn
        )
        # optax relies on standard promotion (Adam's `decay ** count` mixes a float with
        # the int32 step count): run it so under a strict user setting too
        with jax.numpy_dtype_promotion("standard"):
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
def _eval_loss(params, static, X, Y, loss_fn):
    return _mean_loss(params, static, X, Y, loss_fn)


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


def fit(
    model: Any,
    X: Float[Array, "batch *in"],
    Y: Array,
    *,
    loss: str | LossFn = "mse",
    optimizer: optax.GradientTransformation | None = None,
    epochs: int = 100,
    batch_size: int = 64,
    key: PRNGKeyArray,
    validation: tuple[Array, Array] | None = None,
    progress: Progress = "auto",
    callbacks: Sequence[Callback] = (),
) -> tuple[Any, History]:
    """Train a model on `(X, Y)` with mini-batch gradient descent.

    Each epoch draws a permutation of the rows from `jax.random.fold_in(key, epoch)` and
    takes one optimiser step per mini-batch; the final partial batch is used too (nothing
    is dropped). The whole epoch is one jitted function (`jax.lax.scan` over the
    mini-batches, the last one padded with weight-0 rows), so runs with the same `key`
    are bit-identical on one device.

    **Arguments:**

    - `model`: an `eqx.Module` acting on one sample (`jacsens.MLP`, `eqx.nn.MLP`, ...).
    - `X`: inputs of shape `(N, *in_shape)`, floating point.
    - `Y`: targets of shape `(N, *out_shape)` (the model's output shape): floats for
        regression; for `"cross_entropy"` also integer class labels of shape
        `(N, *out_shape[:-1])` in `[0, out_shape[-1])`. For a named loss any other shape is
        refused (it would broadcast); the targets of a callable loss are not checked.
    - `loss`: a per-sample loss name (`"mse"`, `"cross_entropy"`, see `jacsens.LOSSES`) or
        a callable `(y_pred, y_true) -> scalar` (array outputs are summed); the batch loss
        is the mean over samples.
    - `optimizer`: any `optax.GradientTransformation`; default `optax.adam(1e-3)`.
    - `epochs`: number of passes over the data (at least 1).
    - `batch_size`: mini-batch size (at least 1; clipped to `N`).
    - `key`: a `jax.random` key for the shuffling (keyword only, required).
    - `validation`: optional `(X_val, Y_val)`; its mean loss is recorded after each epoch.
    - `progress`: `"auto"` (default): a progress bar in a terminal or notebook (`tqdm.auto`)
        once the job has run for 2 s, and in logs (stderr not a terminal) a line every 30 s
        (`JACSENS_PROGRESS_INTERVAL`); `True`: always; `False`: never.
    - `callbacks`: callables `(epoch, model, history) -> bool | None`, called after each
        epoch (0-based `epoch`) with the history so far; returning a truthy value
        (`True`, `np.True_`, `jnp.asarray(True)`) stops training.

    **Returns:**

    `(trained_model, History)`.

    **Raises:**

    - `ValueError`/`TypeError` naming the argument, before any training, for mismatched
        shapes or batch sizes, non-positive `epochs`/`batch_size`, an `optimizer` that is
        not an optax transformation, or NaN/Inf in `X`, `Y` or `validation` (the message
        names the first non-finite row).
    - `jacsens.NonFiniteLossError` (a `FloatingPointError`) when training diverges:
        the first mini-batch step whose loss or updated parameters are not finite is not
        applied and training stops; the error carries `.model` (the model
        after the last finite step), `.history` (the completed epochs), `.epoch` and
        `.step`. A non-finite validation loss stops training the same way (`.step` is
        `None`).
    """
    if not isinstance(model, eqx.Module):
        raise TypeError(f"`model` must be an equinox Module, got {type(model).__name__}.")
    loss_fn = get_loss(loss, "loss")
    if optimizer is None:
        optimizer = optax.adam(1e-3)
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation (e.g. optax.adam(1e-3)), "
            f"got {type(optimizer).__name__}."
        )
    epochs = check_positive_int(epochs, "epochs", allow_none=False)
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=False)
    if callable(callbacks):
        callbacks = (callbacks,)
    callbacks = tuple(callbacks)
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"`callbacks[{i}]` must be callable, got {type(cb).__name__}.")
    if not isinstance(key, jax.Array) or key.shape not in ((), (2,)):
        raise TypeError(f"`key` must be a jax.random key (jax.random.key(seed)), got {key!r:.60}.")

    X = as_float_array(X, "X")
    Y = as_targets(Y, "Y")
    X, Y = _check_targets(model, X, Y, loss, loss_fn, "X", "Y")
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
        Xv, Yv = _check_targets(model, Xv, Yv, loss, loss_fn, "validation[0]", "validation[1]")
        if Yv.shape[1:] != Y.shape[1:]:
            raise ValueError(
                f"`validation[1]` must have samples of shape {Y.shape[1:]} like `Y`, got "
                f"{Yv.shape[1:]}."
            )
        _check_finite(Xv, "validation[0]")
        _check_finite(Yv, "validation[1]")
    batch_size = min(batch_size, X.shape[0])

    params, static = eqx.partition(model, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):  # see _run_epoch
        opt_state = optimizer.init(params)
    train_loss: list[float] = []
    val_loss: list[float] | None = [] if validation is not None else None
    stopped = False
    bar = progress_bar(progress, total=epochs, desc="fit", unit="epoch", leave=False)
    try:
        for epoch in range(epochs):
            params, opt_state, epoch_loss, bad_step = _run_epoch(
                params,
                opt_state,
                static,
                X,
                Y,
                key,
                jnp.asarray(epoch, jnp.uint32),
                optimizer,
                loss_fn,
                batch_size,
            )
            bad_step = int(bad_step)
            if bad_step >= 0:
                raise NonFiniteLossError(
                    f"Training stopped: the loss or the updated parameters became "
                    f"non-finite in epoch {epoch}, mini-batch step {bad_step} (the data are "
                    "finite, so the model diverged: lower the learning rate, or check the "
                    "model and loss for NaN-producing operations). The model after the last "
                    "finite step is on this error's `.model`, the history on `.history`.",
                    model=eqx.combine(params, static),
                    history=_history(train_loss, val_loss, False),
                    epoch=epoch,
                    step=bad_step,
                )
            if val_loss is not None:
                v = float(_eval_loss(params, static, Xv, Yv, loss_fn))
                if not np.isfinite(v):
                    raise NonFiniteLossError(
                        f"Training stopped: the validation loss became {v} after epoch "
                        f"{epoch} (the training steps were finite). The model reached is on "
                        "this error's `.model`, the history of the earlier epochs on "
                        "`.history`.",
                        model=eqx.combine(params, static),
                        history=_history(train_loss, val_loss, False),
                        epoch=epoch,
                        step=None,
                    )
            train_loss.append(float(epoch_loss))
            if val_loss is not None:
                val_loss.append(v)
            if bar is not None:
                post = {"loss": f"{train_loss[-1]:.4g}"}
                if val_loss is not None:
                    post["val"] = f"{val_loss[-1]:.4g}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if callbacks:
                hist = _history(train_loss, val_loss, False)
                current = eqx.combine(params, static)
                # Every callback runs each epoch; any truthy answer (True, np.True_,
                # jnp.asarray(True)) stops training, None or a falsy one does not.
                answers = [cb(epoch, current, hist) for cb in callbacks]
                if any(r is not None and bool(r) for r in answers):
                    stopped = epoch + 1 < epochs
                    break
    finally:
        if bar is not None:
            bar.close()
    return eqx.combine(params, static), _history(train_loss, val_loss, stopped)


def _history(train_loss: list[float], val_loss: list[float] | None, stopped: bool) -> History:
    return History(tuple(train_loss), None if val_loss is None else tuple(val_loss), stopped)
