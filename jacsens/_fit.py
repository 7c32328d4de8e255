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
from ._progress import progress_bar
from ._validate import (
    as_float_array,
    as_targets,
    check_positive_int,
    check_same_batch,
    check_targets,
    sample_shapes,
)

Callback = Callable[[int, Any, "History"], "bool | None"]


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
        """Plot the loss curves; returns the `matplotlib.figure.Figure`.

        **Arguments:**

        - `ax`: an existing `matplotlib` axes to draw into (default: a new figure).
        - `log`: logarithmic loss axis.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError('History.plot needs matplotlib: pip install "jacsens[plot]"') from e
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 3.5))
        else:
            fig = ax.figure
        epochs = np.arange(1, self.epochs + 1)
        ax.plot(epochs, self.train_loss, label="train")
        if self.val_loss is not None:
            ax.plot(epochs, self.val_loss, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if log and min(self.train_loss, default=1.0) > 0:
            ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        return fig


def _mean_loss(params, static, X, Y, loss_fn):
    model = eqx.combine(params, static)
    per_sample = jax.vmap(lambda x, y: loss_fn(model(x), y))(X, Y)
    return jnp.mean(per_sample)


def _masked_mean_loss(params, static, X, Y, weight, loss_fn):
    model = eqx.combine(params, static)
    per_sample = jax.vmap(lambda x, y: loss_fn(model(x), y))(X, Y)
    return jnp.sum(jnp.where(weight > 0, per_sample, 0)) / jnp.sum(weight)


@eqx.filter_jit
def _run_epoch(params, opt_state, static, X, Y, key, epoch, optimizer, loss_fn, batch_size):
    """One epoch: a fresh permutation, then `lax.scan` over its mini-batches.

    The final partial batch is padded with weight-0 rows, so every step has the same shape
    and the step is compiled once; its loss and gradient are those of the real rows only.
    """
    n = X.shape[0]
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(n_batches, batch_size)
    weight = (jnp.arange(n_batches * batch_size) < n).reshape(n_batches, batch_size)
    opt_arrays, opt_static = eqx.partition(opt_state, eqx.is_array)

    def step(carry, batch):
        params, opt_arrays = carry
        idx, w = batch
        opt_state = eqx.combine(opt_arrays, opt_static)
        loss, grads = eqx.filter_value_and_grad(_masked_mean_loss)(
            params, static, X[idx], Y[idx], w.astype(X.dtype), loss_fn
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        return (params, eqx.filter(opt_state, eqx.is_array)), loss

    (params, opt_arrays), losses = jax.lax.scan(step, (params, opt_arrays), (idx, weight))
    rows = jnp.sum(weight, axis=1).astype(losses.dtype)
    return params, eqx.combine(opt_arrays, opt_static), jnp.sum(losses * rows) / n


@eqx.filter_jit
def _eval_loss(params, static, X, Y, loss_fn):
    return _mean_loss(params, static, X, Y, loss_fn)


def _check_targets(model, X, Y, loss, loss_fn: LossFn, xname: str, yname: str):
    check_same_batch(X, Y, xname, yname)
    _, out_shape, _ = sample_shapes(model, X, xname)
    check_targets(loss, Y, out_shape, yname)
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
    progress: bool = True,
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
    - `progress`: show a `tqdm` progress bar (only if `tqdm` is installed and stderr is a
        terminal).
    - `callbacks`: callables `(epoch, model, history) -> bool | None`, called after each
        epoch (0-based `epoch`) with the history so far; returning a truthy value
        (`True`, `np.True_`, `jnp.asarray(True)`) stops training.

    **Returns:**

    `(trained_model, History)`.

    **Raises:**

    `TypeError`/`ValueError` naming the argument for mismatched shapes or batch sizes,
    non-positive `epochs`/`batch_size`, or an `optimizer` that is not an optax
    transformation.
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
    _check_targets(model, X, Y, loss, loss_fn, "X", "Y")
    if X.shape[0] == 0:
        raise ValueError("`X` must contain at least one sample, got 0 rows.")
    if validation is not None:
        if not isinstance(validation, tuple | list) or len(validation) != 2:
            raise TypeError("`validation` must be a pair (X_val, Y_val).")
        Xv = as_float_array(validation[0], "validation[0]")
        Yv = as_targets(validation[1], "validation[1]")
        if Xv.ndim < 1 or Xv.shape[0] == 0:
            raise ValueError(
                f"`validation[0]` must hold at least one sample, got shape {Xv.shape}."
            )
        _check_targets(model, Xv, Yv, loss, loss_fn, "validation[0]", "validation[1]")
        if Yv.shape[1:] != Y.shape[1:]:
            raise ValueError(
                f"`validation[1]` must have samples of shape {Y.shape[1:]} like `Y`, got "
                f"{Yv.shape[1:]}."
            )
    batch_size = min(batch_size, X.shape[0])

    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    train_loss: list[float] = []
    val_loss: list[float] | None = [] if validation is not None else None
    stopped = False
    bar = progress_bar(progress, total=epochs, desc="fit", unit="epoch", leave=False)
    try:
        for epoch in range(epochs):
            params, opt_state, epoch_loss = _run_epoch(
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
            train_loss.append(float(epoch_loss))
            if val_loss is not None:
                val_loss.append(float(_eval_loss(params, static, Xv, Yv, loss_fn)))
            if bar is not None:
                post = {"loss": f"{train_loss[-1]:.4g}"}
                if val_loss is not None:
                    post["val"] = f"{val_loss[-1]:.4g}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if callbacks:
                hist = History(
                    tuple(train_loss), None if val_loss is None else tuple(val_loss), False
                )
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
    history = History(tuple(train_loss), None if val_loss is None else tuple(val_loss), stopped)
    return eqx.combine(params, static), history
