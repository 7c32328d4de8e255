"""Matplotlib figures for sensitivity results (optional dependency: `pip install 'jacsens[plot]'`).

Figures are built with `matplotlib.figure.Figure` (no pyplot global state), so they work
headless; save them with `fig.savefig(path)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from ._sensitivity._result import SensitivityResult

_LABELS = {
    "mean": "mean ∂y/∂x",
    "mean_abs": "mean |∂y/∂x|",
    "dgsm": "DGSM ν = E[(∂y/∂x)²]",
    "std": "std ∂y/∂x",
    "max_abs": "max |∂y/∂x|",
}


def _figure_module():
    try:
        import matplotlib.figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jacsens.plot needs matplotlib, which is in the `plot` extra: "
            "pip install 'jacsens[plot]'."
        ) from e
    return matplotlib.figure


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = _figure_module().Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def sensitivity_bar(
    result: SensitivityResult,
    *,
    output: int | str = 0,
    by: str = "mean_abs",
    top: int | None = 20,
    z: float = 1.96,
    ax: Any = None,
):
    """Horizontal bar chart of one statistic per feature, with error bars.

    **Arguments:**

    - `result`: a `SensitivityResult`.
    - `output`: output index or name.
    - `by`: `"mean_abs"`, `"dgsm"`, `"std"`, `"mean"` or `"max_abs"`; features are
        sorted by it (by `|mean|` for `"mean"`).
    - `top`: show only the `top` most important features (None: all).
    - `z`: error bars are `± z` standard errors (1.96: 95% normal intervals); `max_abs`
        has none.
    - `ax`: an existing matplotlib Axes to draw on.

    **Returns:**

    The matplotlib `Figure`.
    """
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"`top` must be a positive int or None, got {top!r}.")
    if not z >= 0:
        raise ValueError(f"`z` must be >= 0, got {z!r}.")
    values = result.values(by, output)
    se = result.se(by, output)
    names = result.ranking(output, by)
    order = [result.feature_names.index(n) for n in names][: top or len(names)]
    k = len(order)
    fig, ax = _new_axes(ax, (6.4, 1.2 + 0.28 * k))
    pos = np.arange(k)[::-1]
    xerr = None if se is None else z * np.nan_to_num(se[order])
    ax.barh(pos, values[order], xerr=xerr, color="tab:blue", ecolor="black", capsize=2)
    ax.set_yticks(pos, [result.feature_names[i] for i in order])
    label = _LABELS[by] + ("" if se is None else f"  (± {z:g} SE)")
    ax.set_xlabel(label)
    ax.set_title(
        f"Sensitivity of {result.output_names[result._output_index(output)]}, n={result.n}"
    )
    ax.axvline(0, color="grey", lw=0.8)
    return fig


def sensitivity_heatmap(result: SensitivityResult, *, by: str = "mean_abs", ax: Any = None):
    """Heatmap of one statistic over all (output, feature) pairs.

    **Arguments:**

    - `result`: a `SensitivityResult`.
    - `by`: the statistic (`"mean_abs"`, `"dgsm"`, `"std"`, `"mean"`, `"max_abs"`).
    - `ax`: an existing matplotlib Axes to draw on.

    **Returns:**

    The matplotlib `Figure`.
    """
    vals = np.stack([result.values(by, o) for o in range(result.n_out)])
    fig, ax = _new_axes(ax, (1.5 + 0.3 * result.n_in, 1.2 + 0.35 * result.n_out))
    cmap = "RdBu_r" if by == "mean" else "viridis"
    kw = {}
    if by == "mean":
        v = float(np.nanmax(np.abs(vals))) or 1.0
        kw = {"vmin": -v, "vmax": v}
    im = ax.imshow(vals, aspect="auto", cmap=cmap, **kw)
    ax.set_xticks(np.arange(result.n_in), result.feature_names, rotation=90)
    ax.set_yticks(np.arange(result.n_out), result.output_names)
    fig.colorbar(im, ax=ax, label=_LABELS[by])
    ax.set_title(f"{_LABELS[by]}, n={result.n}")
    return fig


def plot_sensitivity(
    result: SensitivityResult, kind: Literal["bar", "heatmap"] = "bar", **kwargs: Any
):
    """Dispatch to `sensitivity_bar` (`kind="bar"`) or `sensitivity_heatmap`."""
    if kind == "bar":
        return sensitivity_bar(result, **kwargs)
    if kind == "heatmap":
        return sensitivity_heatmap(result, **kwargs)
    raise ValueError(f"Unknown `kind` {kind!r}; expected one of ('bar', 'heatmap').")
