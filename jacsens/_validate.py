"""Trace-time checks shared by the public functions.

Every check raises `ValueError` or `TypeError` naming the argument, what was expected and
what was given. Checks look at shapes and dtypes only, so they run unchanged under `jit`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def as_float_array(x: Any, argname: str) -> jax.Array:
    """Convert array-likes to a JAX array; refuse non-floating dtypes.

    Accepts JAX and NumPy arrays, nested lists/tuples of numbers, and objects that
    convert themselves with `__array__` (pandas DataFrames and Series, xarray, ...).
    """
    if isinstance(x, jax.Array):  # the common case: no conversion, no copy
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"`{argname}` must have a floating dtype, got dtype {x.dtype}.")
        return x
    if isinstance(x, np.ndarray):
        arr = x
    elif isinstance(x, list | tuple | float | int) and not isinstance(x, bool):
        try:
            arr = np.asarray(x)
        except ValueError as e:  # ragged nesting
            raise ValueError(f"`{argname}` must be a rectangular array: {e}") from None
        if np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"`{argname}` must be floating point, got integer values {x!r:.60}.")
    elif hasattr(x, "__array__") and not isinstance(x, str | bytes | dict):
        arr = np.asarray(x)
    else:
        raise TypeError(f"`{argname}` must be an array, got {type(x).__name__}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"`{argname}` must have a floating dtype, got dtype {arr.dtype}.")
    return jnp.asarray(arr)


def check_positive_int(value: Any, argname: str, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        or_none = " or None" if allow_none else ""
        raise ValueError(f"`{argname}` must be a positive int{or_none}, got {value!r}.")
    return int(value)


def check_chunk_size(value: Any, argname: str = "chunk_size") -> int | str | None:
    """`None` (no chunking), a positive int, or `"auto"` (fit the device's memory)."""
    if isinstance(value, str) and value == "auto":
        return value
    if value is None or (isinstance(value, int | np.integer) and not isinstance(value, bool)):
        if value is None or value >= 1:
            return None if value is None else int(value)
    raise ValueError(f'`{argname}` must be a positive int, "auto" or None, got {value!r}.')


def check_choice(value: Any, argname: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"Unknown `{argname}` {value!r}; expected one of {choices}.")
    return value


def promote_float(*dtypes: Any) -> Any:
    """The smallest floating dtype that holds every one of `dtypes` exactly (the promotion
    rule of the whole package, applied explicitly, so it holds under strict promotion)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.dtype(jnp.result_type(*[jnp.dtype(d) for d in dtypes]))


def check_same_batch(X: jax.Array, Y: jax.Array, xname: str = "X", yname: str = "Y") -> None:
    if Y.ndim < 1 or Y.shape[0] != X.shape[0]:
        raise ValueError(
            f"`{xname}` and `{yname}` must have the same batch size; got {xname} of shape "
            f"{X.shape} and {yname} of shape {Y.shape}."
        )


def as_targets(Y: Any, argname: str = "Y") -> jax.Array:
    """Convert targets to a JAX array; accept floating or integer dtypes only.

    Accepts JAX and NumPy arrays, nested lists/tuples of numbers, and objects that convert
    themselves with `__array__` (a pandas Series of targets, a DataFrame of several).
    """
    if isinstance(Y, jax.Array | np.ndarray):
        arr = Y
    elif isinstance(Y, list | tuple | float | int) and not isinstance(Y, bool):
        arr = np.asarray(Y)
    elif hasattr(Y, "__array__") and not isinstance(Y, str | bytes | dict):
        arr = np.asarray(Y)
    else:
        raise TypeError(f"`{argname}` must be an array, got {type(Y).__name__}.")
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"`{argname}` must be floating point or integer, got dtype {arr.dtype}.")
    return jnp.asarray(arr)


def _batch_shape(shape: tuple[int, ...]) -> str:
    return f"(batch{''.join(f', {d}' for d in shape)})" if shape else "(batch,)"


def check_targets(
    loss: Any,
    Y: jax.Array,
    out_shape: tuple[int, ...],
    argname: str = "Y",
    *,
    kernel: bool = False,
    out_dtype: Any = None,
) -> jax.Array:
    """Check a batch of targets `Y` against the model's per-sample output shape; return
    them ready for the loss.

    - A named loss (a key of `jacsens.LOSSES`, or that function itself) needs
      `Y.shape[1:] == out_shape` whatever `Y`'s dtype, except that `"cross_entropy"` takes
      integer class labels of shape `out_shape[:-1]`: a target that would broadcast against
      the output is refused, since broadcasting silently fits the wrong target.
    - `kernel=True` (a `loss_grad` of the hand-written kernel): `Y.shape[1:] == out_shape`,
      or, for `backprop.softmax_cross_entropy_grad` only, integer class labels of shape
      `out_shape[:-1]`.
    - Any other callable loss cannot be checked here (its meaning of `Y` is its own).

    Integer class labels, when concrete (not traced), must lie in `[0, out_shape[-1])`:
    an out-of-range label would give NaN, or silently index from the end (`-1`), or
    one-hot encode to zeros. Other targets of a named loss or kernel gradient are returned
    in `out_dtype` (if given): the loss compares them with the output.
    """
    from ._losses import LOSSES

    out_shape = tuple(out_shape)
    loss_fn = loss
    if not isinstance(loss, str):
        loss = next((name for name, fn in LOSSES.items() if fn is loss), None)
    integer = jnp.issubdtype(Y.dtype, jnp.integer)
    if kernel:
        # Only the softmax cross-entropy gradient takes class labels; any other `loss_grad`
        # (e.g. `y_pred - y_true`) would broadcast them.
        from ._losses import softmax_cross_entropy_grad

        takes_labels = loss_fn is softmax_cross_entropy_grad
        labels = takes_labels and integer and out_shape != () and Y.shape[1:] == out_shape[:-1]
        what = "the kernel's `loss_grad`"
    elif loss in LOSSES:
        labels = loss == "cross_entropy" and integer
        what = f"loss {loss!r}"
    else:
        return Y
    if loss == "cross_entropy" and out_shape == ():
        raise ValueError(
            f"`loss` 'cross_entropy' needs a model output with a class axis (logits of shape "
            f"(classes,)), but the model's output is a scalar, with no class axis; for a "
            f"binary target use "
            f"'binary_cross_entropy' (`{argname}` of shape (batch,))."
        )
    if labels and out_shape == ():
        raise ValueError(
            f"`{argname}` holds integer class labels (dtype {Y.dtype}), but the model's output "
            "is a scalar, with no class axis; give float targets of shape (batch,)."
        )
    expected = out_shape[:-1] if labels else out_shape
    if Y.shape[1:] != expected:
        alt = ""
        if kernel and takes_labels and out_shape:
            alt = f", or integer class labels of shape {_batch_shape(out_shape[:-1])}"
        elif loss == "cross_entropy" and integer:
            alt = " (integer class labels; cast one-hot targets to float)"
        raise ValueError(
            f"`{argname}` must have shape {_batch_shape(expected)}{alt} for {what} and a "
            f"model output of shape {out_shape}, got {Y.shape}; broadcasting the two would "
            "silently use the wrong target."
        )
    if labels and not isinstance(Y, jax.core.Tracer) and Y.size:
        values = np.asarray(Y)
        n_classes = out_shape[-1]
        bad = (values < 0) | (values >= n_classes)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"`{argname}` must hold class labels in [0, {n_classes}) for a model output "
                f"with {n_classes} classes, got {int(values[first])} at index "
                f"{first if len(first) > 1 else first[0]}."
            )
    if not labels and out_dtype is not None and Y.dtype != out_dtype:
        # targets compared with the output (integer regression targets, float32 targets of
        # a float64 model) are cast to its dtype, as numpy-style promotion would
        Y = Y.astype(out_dtype)
    return Y
