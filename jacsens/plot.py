"""Matplotlib figures for sensitivity results and attributions (optional dependency:
`pip install 'jacsens[plot]'`).

Every function returns a `jacsens.plot.Figure`, a `matplotlib.figure.Figure` that is not
managed by pyplot (no global state: it works headless, in scripts and in threads, and is
freed with its last reference) and that shows itself as a PNG in Jupyter: end the cell
with the call or with the figure (no trailing `;`, which hides a cell's value). Save it
with `fig.savefig(path)`. Functions that take `ax=` draw into that axes and return its
own figure instead.

Inputs with a shape. Statistics and attributions are stored flat (C order). For 2-D
inputs (images) and 3-D inputs (channels × rows × columns) the map functions draw one
image per output or sample: `sensitivity_heatmap` switches to `sensitivity_map` when the
input shape is known, from `shape=` or from feature names of the form `x[r,c]` /
`x[ch,r,c]` (`index_names`, the default names of multi-dimensional inputs).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from jaxtyping import ArrayLike

from ._names import index_names as index_names, shape_from_names as shape_from_names

if TYPE_CHECKING:
    from ._fit import History
    from ._sensitivity._result import SensitivityResult

_LABELS = {
    "mean": "mean ∂y/∂x",
    "mean_abs": "mean |∂y/∂x|",
    "dgsm": "DGSM ν = E[(∂y/∂x)²]",
    "std": "std ∂y/∂x",
    "max_abs": "max |∂y/∂x|",
}
_SIGN_COLORS = {"positive": "tab:blue", "negative": "tab:orange", "unclear": "tab:gray"}
_DIVERGING, _SEQUENTIAL = "RdBu_r", "viridis"


# --------------------------------------------------------------------------- the figure


def _figure_module():
    try:
        import matplotlib.figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jacsens.plot needs matplotlib, which is in the `plot` extra: "
            "pip install 'jacsens[plot]'."
        ) from e
    return matplotlib.figure


@functools.cache
def _figure_class() -> type:
    base = _figure_module().Figure

    class Figure(base):
        """A `matplotlib.figure.Figure` that Jupyter shows as a PNG (`_repr_png_`).

        Not registered with pyplot, so Jupyter shows it exactly once, as the value of the
        cell that returns it, whatever matplotlib backend is active (with the inline
        backend, its own figure formatter is used; with `Agg`, this method).
        """

        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", bbox_inches="tight")
            return buf.getvalue()

    Figure.__module__, Figure.__qualname__ = __name__, "Figure"
    return Figure


def __getattr__(name: str) -> Any:
    # `Figure` subclasses matplotlib's, imported on first use (matplotlib is optional);
    # resolving it here also lets pickle find the class of a pickled figure.
    if name == "Figure":
        return _figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _new_figure(figsize: tuple[float, float]):
    return _figure_class()(figsize=figsize, layout="constrained")


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(figsize)
    return fig, fig.add_subplot()


# --------------------------------------------------------------------------- names


def _check_shape(shape: Any, n: int | None, argname: str = "shape") -> tuple[int, ...]:
    """`shape` as a tuple of positive ints holding `n` elements (any number if `None`)."""
    try:
        dims = tuple(int(s) for s in shape)
        ok = all(d >= 1 and d == s for d, s in zip(dims, shape, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"`{argname}` must be a tuple of positive ints, got {shape!r}.")
    if n is not None and math.prod(dims) != n:
        raise ValueError(
            f"`{argname}` {dims} holds {math.prod(dims)} elements, but there are {n} features."
        )
    return dims


def _input_shape(shape: Any, n: int, names: Sequence[str]) -> tuple[int, ...]:
    if shape is not None:
        return _check_shape(shape, n)
    return shape_from_names(names) or (n,)


def _image(values: np.ndarray, shape: tuple[int, ...], channel_axis: int, how: str):
    """`values (..., prod(shape))` as images `(..., rows, cols)`; 3-D inputs are reduced
    over `channel_axis` by `how` (`"sum"`, `"max"` or `"mean"`)."""
    if len(shape) not in (2, 3):
        raise ValueError(
            f"An image needs a 2-D (rows, cols) or 3-D (channels, rows, cols) input shape, "
            f"got {shape}: pass `shape=`."
        )
    arr = values.reshape(*values.shape[:-1], *shape)
    if len(shape) == 3:
        if not -3 <= channel_axis < 3:
            raise ValueError(f"`channel_axis` must be in [-3, 3), got {channel_axis!r}.")
        axis = values.ndim - 1 + channel_axis % 3
        arr = {"sum": np.sum, "max": np.max, "mean": np.mean}[how](arr, axis=axis)
    return arr


def _grid(n: int, ncols: int | None) -> tuple[int, int]:
    if ncols is not None and (isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1):
        raise ValueError(f"`ncols` must be a positive int or None, got {ncols!r}.")
    cols = min(n, ncols or 5)
    return math.ceil(n / cols), cols


def _norm_kwargs(values: np.ndarray, signed: bool) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    if signed:
        v = float(np.max(np.abs(finite), initial=0.0)) or 1.0
        return {"cmap": _DIVERGING, "vmin": -v, "vmax": v}
    hi = float(np.max(finite, initial=0.0)) or 1.0
    return {"cmap": _SEQUENTIAL, "vmin": min(0.0, float(np.min(finite, initial=0.0))), "vmax": hi}


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- sensitivity


def _check_top(top: Any) -> None:
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"`top` must be a positive int or None, got {top!r}.")


def sensitivity_bar(
    result: SensitivityResult,
    *,
    output: int | str | None = None,
    by: str = "mean_abs",
    top: int | None = 20,
    z: float = 1.96,
    sign: bool = True,
    title: str | None = None,
    subtitle: str | None = None,
    units: str | None = None,
    ax: Any = None,
):
    """Horizontal bar chart of one statistic per feature, with error bars.

    The title says what is shown: the output, how many features of how many (`top 20
    of 200 features by mean |∂y/∂x|`) and the number of samples; `subtitle` adds a line
    (the model, its test metric, the data), `units` the units of the derivatives.

    **Arguments:**

    - `result`: a `SensitivityResult`.
    - `output`: output index or name; `None` (default): the only output, or for a
        multi-output result the root mean square of the statistic over the outputs
        (`SensitivityResult.values`), with delta-method error bars
        (`SensitivityResult.se`) and a title that says so.
    - `by`: `"mean_abs"`, `"dgsm"`, `"std"`, `"mean"` or `"max_abs"`; features are
        sorted by it (by `|mean|` for `"mean"`).
    - `top`: show only the `top` most important features (None: all).
    - `z`: error bars are `± z` standard errors (1.96: 95% normal intervals); `max_abs`
        has none.
    - `sign`: colour each bar by the sign of the feature's mean effect `E[∂y/∂x]`:
        positive, negative, or unclear (`|mean| <= z` standard errors), with a legend.
        `False`: one colour. The aggregate over several outputs has no sign: one colour.
    - `title`: the first line of the title (default `"Sensitivity of <output>"`, or
        `"Sensitivity, RMS over <n> outputs"` for the aggregate).
    - `subtitle`: an extra line under it.
    - `units`: the units of `∂y/∂x` (e.g. `"sd of y per sd of x"`), shown on the axis.
    - `ax`: an existing matplotlib Axes to draw on.

    **Returns:**

    The figure (a `jacsens.plot.Figure` unless `ax` is given).
    """
    _check_top(top)
    if not z >= 0:
        raise ValueError(f"`z` must be >= 0, got {z!r}.")
    values = result.values(by, output)
    se = result.se(by, output)
    names = result.ranking(output, by)
    order = [result.feature_names.index(n) for n in names][: top or len(names)]
    k = len(order)
    aggregate = output is None and result.n_out > 1
    sign = sign and not aggregate  # the RMS over outputs has no sign
    out_name = result.output_label(output)
    default_title = f"Sensitivity, {out_name}" if aggregate else f"Sensitivity of {out_name}"
    lines = [title if title is not None else default_title]
    shown = f"top {k} of {result.n_in} features" if k < result.n_in else f"all {k} features"
    lines.append(f"{shown} by {_LABELS[by]}, n = {result.n:,} samples")
    if subtitle:
        lines.append(subtitle)
    fig, ax = _new_axes(ax, (6.4, 1.0 + 0.28 * k + 0.22 * len(lines)))
    pos = np.arange(k)[::-1]
    xerr = None if se is None else z * np.nan_to_num(se[order])
    colors: Any = "tab:blue"
    if sign:
        mean = result.values("mean", output)[order]
        mean_se = np.nan_to_num(result.se("mean", output)[order])
        kind = np.where(
            mean > z * mean_se, "positive", np.where(mean < -z * mean_se, "negative", "unclear")
        )
        colors = [_SIGN_COLORS[c] for c in kind]
    ax.barh(pos, values[order], xerr=xerr, color=colors, ecolor="black", capsize=2)
    ax.set_yticks(pos, [result.feature_names[i] for i in order])
    label = _LABELS[by] + ("" if se is None else f"  (± {z:g} SE)")
    if units:
        label += f"\nin {units}"
    ax.set_xlabel(label)
    ax.set_title("\n".join(lines), fontsize=10)
    ax.axvline(0, color="grey", lw=0.8)
    if sign:
        from matplotlib.patches import Patch

        legend = {
            "positive": "mean effect > 0",
            "negative": "mean effect < 0",
            "unclear": f"sign unclear (|mean| ≤ {z:g} SE)",
        }
        present = [c for c in legend if c in set(kind)]
        ax.legend(
            handles=[Patch(color=_SIGN_COLORS[c], label=legend[c]) for c in present],
            loc="lower right",
            fontsize=8,
        )
    return fig


def sensitivity_heatmap(
    result: SensitivityResult,
    *,
    by: str = "mean_abs",
    shape: Sequence[int] | None = None,
    channel_axis: int = 0,
    ax: Any = None,
):
    """Heatmap of one statistic over all (output, feature) pairs.

    For a 2-D or 3-D input shape (given as `shape`, or read from feature names like
    `x[r,c]`) this is `sensitivity_map`: one image per output instead of a strip of
    `n_in` columns. Pass `shape=(n_in,)` to force the strip.

    **Arguments:**

    - `result`: a `SensitivityResult`.
    - `by`: the statistic (`"mean_abs"`, `"dgsm"`, `"std"`, `"mean"`, `"max_abs"`).
    - `shape`: the input shape, `prod(shape) == n_in` (default: from the names, else flat).
    - `channel_axis`: for 3-D shapes, see `sensitivity_map`.
    - `ax`: an existing matplotlib Axes to draw on (strip only).

    **Returns:**

    The figure (a `jacsens.plot.Figure` unless `ax` is given).
    """
    in_shape = _input_shape(shape, result.n_in, result.feature_names)
    if len(in_shape) >= 2:
        if ax is not None:
            raise ValueError(
                f"A {in_shape} input is drawn as one image per output, on a figure of its "
                f"own: pass `ax=None`, or `shape=({result.n_in},)` for a strip."
            )
        return sensitivity_map(result, by=by, shape=in_shape, channel_axis=channel_axis)
    vals = np.stack([result.values(by, o) for o in range(result.n_out)])
    fig, ax = _new_axes(ax, (1.5 + 0.3 * result.n_in, 1.2 + 0.35 * result.n_out))
    kw = _norm_kwargs(vals, signed=by == "mean")
    im = ax.imshow(vals, aspect="auto", **kw)
    ax.set_xticks(np.arange(result.n_in), result.feature_names, rotation=90)
    ax.set_yticks(np.arange(result.n_out), result.output_names)
    fig.colorbar(im, ax=ax, label=_LABELS[by])
    ax.set_title(f"{_LABELS[by]}, n = {result.n:,} samples")
    return fig


def sensitivity_map(
    result: SensitivityResult,
    *,
    by: str = "mean_abs",
    shape: Sequence[int] | None = None,
    outputs: Sequence[int | str] | None = None,
    channel_axis: int = 0,
    ncols: int | None = None,
    title: str | None = None,
):
    """One image per output of a statistic over an image-shaped input.

    Panel `o` shows the statistic of `∂y_o/∂x` reshaped to the input's rows × columns
    (e.g. the 8 × 8 pixels of a digit, one panel per class), all on one colour scale
    so panels compare; `"mean"` uses a diverging scale centred on 0.

    **Arguments:**

    - `result`: a `SensitivityResult`.
    - `by`: the statistic (`"mean_abs"`, `"dgsm"`, `"std"`, `"mean"`, `"max_abs"`).
    - `shape`: the input shape, 2-D `(rows, cols)` or 3-D; default: read from feature
        names like `x[r,c]` (`index_names`).
    - `outputs`: the outputs to draw, by index or name (default: all).
    - `channel_axis`: for a 3-D shape, the axis of the channels (default 0:
        `(channels, rows, cols)`; `-1` for `(rows, cols, channels)`). The statistic is
        summed over the channels (`max_abs`: their maximum).
    - `ncols`: panels per row (default up to 5).
    - `title`: the figure title (default: the statistic and the number of samples).

    **Returns:**

    A `jacsens.plot.Figure`.

    **Raises:**

    `ValueError` if the shape is not 2-D or 3-D or does not hold `n_in` elements.
    """
    in_shape = _input_shape(shape, result.n_in, result.feature_names)
    picked = list(range(result.n_out)) if outputs is None else list(outputs)
    if not picked:
        raise ValueError("`outputs` must name at least one output, got none.")
    idx = [result._output_index(o) for o in picked]
    flat = np.stack([result.values(by, o) for o in idx])
    images = _image(flat, in_shape, channel_axis, "max" if by == "max_abs" else "sum")
    nrows, ncols = _grid(len(idx), ncols)
    fig = _new_figure((1.8 * ncols + 0.9, 1.9 * nrows + 0.5))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    kw = _norm_kwargs(images, signed=by == "mean")
    im = None
    for ax, o, img in zip(axes, idx, images, strict=False):
        im = ax.imshow(img, **kw)
        ax.set_title(result.output_names[o], fontsize=9)
        _bare(ax)
    for ax in axes[len(idx) :]:
        ax.set_axis_off()
    reduced = f", summed over axis {channel_axis} of {in_shape}" if len(in_shape) == 3 else ""
    fig.colorbar(im, ax=axes.tolist(), label=_LABELS[by] + reduced, shrink=0.9)
    fig.suptitle(title if title is not None else f"{_LABELS[by]} per output, n = {result.n:,}")
    return fig


def plot_sensitivity(
    result: SensitivityResult, kind: Literal["bar", "heatmap", "map"] = "bar", **kwargs: Any
):
    """Dispatch to `sensitivity_bar` (`kind="bar"`), `sensitivity_heatmap` or
    `sensitivity_map`; keyword arguments go to that function."""
    if kind == "bar":
        return sensitivity_bar(result, **kwargs)
    if kind == "heatmap":
        return sensitivity_heatmap(result, **kwargs)
    if kind == "map":
        return sensitivity_map(result, **kwargs)
    raise ValueError(f"Unknown `kind` {kind!r}; expected one of ('bar', 'heatmap', 'map').")


# --------------------------------------------------------------------------- attributions


def attribution_map(
    attr: ArrayLike,
    *,
    shape: Sequence[int] | None = None,
    images: ArrayLike | None = None,
    titles: Sequence[str] | None = None,
    channel_axis: int = 0,
    ncols: int | None = None,
    title: str | None = None,
    label: str = "attribution",
):
    """Attributions (saliency, gradient × input, integrated gradients, ...) as images.

    One panel per sample, all on one colour scale: a diverging one centred on 0 if any
    attribution is negative (red raises the explained output, blue lowers it), else a
    sequential one. With `images`, each sample's input is drawn in grey above its map.

    **Arguments:**

    - `attr`: attributions `(B, *in_shape)` as returned by `jacsens.attribution`:
        `(B, rows, cols)`, `(B, channels, rows, cols)`, or flat `(B, n)` with `shape`.
    - `shape`: the shape of one sample, 2-D or 3-D (e.g. `(8, 8)` for 64 pixels);
        required for flat attributions (`attr[..., n]`, `prod(shape) == n`).
    - `images`: the inputs, the same shape as `attr` (optional).
    - `titles`: one title per sample (default: `0`, `1`, ...).
    - `channel_axis`: for 3-D inputs, the channel axis (default 0, `(channels, rows,
        cols)`); attributions are summed over it, images averaged.
    - `ncols`: samples per row (default up to 5).
    - `title`: the figure title.
    - `label`: the colour bar's label (what the attributions are).

    **Returns:**

    A `jacsens.plot.Figure`.

    **Raises:**

    `ValueError` naming the argument for a flat `attr` without `shape`, a `shape` that
    does not match or is not 2-D/3-D, `images` of another size, or the wrong number of
    `titles`.
    """
    a = np.asarray(attr, dtype=np.float64)
    if shape is not None:
        sample_shape = _check_shape(shape, None)
        n = math.prod(sample_shape)
        fits = a.shape[-len(sample_shape) :] == sample_shape or (a.ndim >= 1 and a.shape[-1] == n)
        if a.size == 0 or not fits:
            raise ValueError(
                f"`shape` {sample_shape} does not match `attr` of shape {a.shape}: its "
                f"trailing axes must be {sample_shape} or hold {n} elements."
            )
        batch = a.reshape(-1, *sample_shape)
    elif a.ndim in (3, 4) and a.size:
        sample_shape = a.shape[1:]
        batch = a
    else:
        # (B, n) and one (rows, cols) image look alike: a 2-D `attr` needs `shape`.
        raise ValueError(
            f"`attr` of shape {a.shape} needs `shape=` (e.g. (8, 8) for 64 pixels): pass "
            "attributions (B, rows, cols) or (B, channels, rows, cols), or flat ones with "
            "their image shape."
        )
    B = batch.shape[0]
    flat = batch.reshape(B, -1)
    maps = _image(flat, sample_shape, channel_axis, "sum")
    inputs = None
    if images is not None:
        im_arr = np.asarray(images, dtype=np.float64)
        if im_arr.size != batch.size:
            raise ValueError(
                f"`images` must have the shape of `attr` {a.shape}, got {im_arr.shape}."
            )
        inputs = _image(im_arr.reshape(B, -1), sample_shape, channel_axis, "mean")
    if titles is not None and len(titles) != B:
        raise ValueError(f"`titles` must have {B} entries (one per sample), got {len(titles)}.")
    nrows, ncols = _grid(B, ncols)
    rows = nrows * (2 if inputs is not None else 1)
    fig = _new_figure((1.8 * ncols + 0.9, 1.9 * rows + 0.5))
    axes = fig.subplots(rows, ncols, squeeze=False)
    kw = _norm_kwargs(maps, signed=bool(np.any(maps < 0)))
    im = None
    for b in range(B):
        r, c = divmod(b, ncols)
        if inputs is not None:
            top, ax = axes[2 * r, c], axes[2 * r + 1, c]
            top.imshow(inputs[b], cmap="gray_r")
            top.set_title(str(titles[b]) if titles is not None else str(b), fontsize=9)
            _bare(top)
        else:
            ax = axes[r, c]
            ax.set_title(str(titles[b]) if titles is not None else str(b), fontsize=9)
        im = ax.imshow(maps[b], **kw)
        _bare(ax)
    for extra in range(B, nrows * ncols):
        r, c = divmod(extra, ncols)
        for rr in (2 * r, 2 * r + 1) if inputs is not None else (r,):
            axes[rr, c].set_axis_off()
    fig.colorbar(im, ax=axes.ravel().tolist(), label=label, shrink=0.9)
    if title is not None:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- training


def loss_curves(history: History, ax: Any = None, *, log: bool = True):
    """Training (and validation) loss per epoch.

    **Arguments:**

    - `history`: the `History` returned by `jacsens.fit`.
    - `ax`: an existing matplotlib Axes to draw on.
    - `log`: a logarithmic loss axis (when every training loss is positive).

    **Returns:**

    The figure (a `jacsens.plot.Figure` unless `ax` is given).
    """
    fig, ax = _new_axes(ax, (5.0, 3.5))
    epochs = np.arange(1, history.epochs + 1)
    ax.plot(epochs, history.train_loss, label="train")
    if history.val_loss is not None:
        ax.plot(epochs, history.val_loss, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if log and min(history.train_loss, default=1.0) > 0:
        ax.set_yscale("log")
    ax.legend()
    return fig
