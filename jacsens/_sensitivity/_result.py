"""`SensitivityResult`: derivative statistics held as accumulators, and their file format.

The result stores state only, the `StreamingStats` of the Jacobian (and Hessian), and
derives every statistic from it (optax's rule). So two results over disjoint data merge
exactly, and a checkpoint is a result plus progress counters, in the same file format.

**File format** (`.npz`, no pickle): `_header`, a JSON object (names, mode, counters, the
number of replicates); `jac_<field>`, optionally `hess_<field>` and, for a run over
`R` randomised-QMC replicates, `rep<k>_<field>` for `k < R`, the float64 fields of the
accumulators; and
`_checksum`, a SHA-256 over the header and every array's name, dtype, shape and bytes.
Loading verifies the checksum, the header's types, every array's shape against the names
and the values an accumulator can hold, and turns any corruption into a `ValueError`
naming the file. (The checksum detects corruption and accidental edits; it is not a
signature: someone who recomputes it can still forge a file.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import equinox as eqx
import numpy as np
from jaxtyping import Array, Float

from .._atomic import atomic_write
from .._stats import (
    _POWERS,
    STATS_FIELDS,
    StreamingStats,
    stats_from_state_dict,
    stats_merge,
    stats_state_dict,
)
from .._validate import check_choice
from ._sources import parse_problem

FORMAT = "jacsens.SensitivityResult"
VERSION = 3  # 3: accumulators with per-element power-of-two scales, checksummed

_STATS = ("mean", "mean_abs", "dgsm", "std", "max_abs")
_SE_OF = {"mean": "mean_se", "mean_abs": "mean_abs_se", "dgsm": "dgsm_se", "std": "std_se"}
_FRAME_COLUMNS = (
    "mean",
    "mean_se",
    "mean_abs",
    "mean_abs_se",
    "dgsm",
    "dgsm_se",
    "std",
    "std_se",
    "max_abs",
)


class SensitivityResult(eqx.Module):
    """Derivative statistics of a model over an input distribution.

    Every statistic has shape `(n_out, n_in)`: row `o`, column `i` describes `∂y_o/∂x_i`
    (outputs and inputs flattened in C order). Standard errors are Monte Carlo standard
    errors of the estimate, `std(quantity)/sqrt(n)`; `std_se` is the delta-method
    large-sample value. `max_abs` has no standard error. All are float64 numpy arrays
    derived from the accumulators on access.

    **Fields:**

    - `jac`: the `StreamingStats` of the Jacobian entries, shape `(n_out, n_in)`.
    - `hess`: the `StreamingStats` of the Hessian entries `(n_out, n_in, n_in)`, or `None`.
    - `n_omitted`: rows skipped as non-finite (`nan_policy="omit"`).
    - `feature_names`, `output_names`: tuples of `n_in` and `n_out` names.
    - `mode`: the Jacobian mode that was used.
    - `replicates`: for randomised quasi-Monte Carlo data (`jacsens.sobol`/`halton`), a
        tuple of one Jacobian `StreamingStats` per independent scramble (their merge is
        `jac`); else `None`. With replicates, the standard errors of `mean`, `mean_abs`,
        `dgsm` and `std` are the spread of the replicate estimates over `sqrt(R)` (NaN for
        `R = 1`), not the i.i.d. formula, which ignores how evenly QMC points fill space.

    **Statistics (properties):**

    - `mean`, `mean_se`: `E[∂y/∂x]` and its standard error.
    - `mean_abs`, `mean_abs_se`: `E|∂y/∂x|` and its standard error.
    - `dgsm`, `dgsm_se`: `ν = E[(∂y/∂x)²]` and its standard error.
    - `std`, `std_se`: the standard deviation of `∂y/∂x` over the inputs.
    - `max_abs`: the largest `|∂y/∂x|` seen.
    - `n`: number of samples used.
    - `interactions`, `interactions_se`: `E|∂²y_o/∂x_i∂x_j|`, shape `(n_out, n_in, n_in)`,
        when computed with `interactions=True`, else `None`.
    """

    jac: StreamingStats
    hess: StreamingStats | None
    n_omitted: int = eqx.field(static=True)
    feature_names: tuple[str, ...] = eqx.field(static=True, converter=tuple)
    output_names: tuple[str, ...] = eqx.field(static=True, converter=tuple)
    mode: str = eqx.field(static=True, default="auto")
    replicates: tuple[StreamingStats, ...] | None = None

    def __check_init__(self):
        shape = (len(self.output_names), len(self.feature_names))
        if self.jac.shape != shape:
            raise ValueError(
                f"`jac` must have shape {shape} (outputs, features), got {self.jac.shape}."
            )
        if self.hess is not None and self.hess.shape != (*shape, shape[1]):
            raise ValueError(f"`hess` must have shape {(*shape, shape[1])}, got {self.hess.shape}.")
        if isinstance(self.n_omitted, bool) or not isinstance(self.n_omitted, int):
            raise TypeError(f"`n_omitted` must be an int, got {self.n_omitted!r}.")
        if self.n_omitted < 0:
            raise ValueError(f"`n_omitted` must be >= 0, got {self.n_omitted}.")
        if self.replicates is not None:
            if not isinstance(self.replicates, tuple) or not self.replicates:
                raise TypeError("`replicates` must be None or a non-empty tuple of states.")
            for r in self.replicates:
                if r.shape != shape:
                    raise ValueError(f"`replicates` must have shape {shape}, got {r.shape}.")

    # ---------------------------------------------------------------- statistics

    @property
    def n(self) -> int:
        return self.jac.n

    @property
    def n_out(self) -> int:
        return len(self.output_names)

    @property
    def n_in(self) -> int:
        return len(self.feature_names)

    def _derive(self, stats: StreamingStats, name: str) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return np.asarray(getattr(stats, name), np.float64)

    def _se(self, stats: StreamingStats, estimate: str, iid_se: str) -> np.ndarray:
        """The i.i.d. standard error `iid_se`, or with replicates the spread of the
        replicate values of `estimate`: `std_r(estimate_r) / sqrt(R)`."""
        if self.replicates is None:
            return self._derive(stats, iid_se)
        values = np.stack([self._derive(r, estimate) for r in self.replicates])
        R = values.shape[0]
        if R < 2:
            return np.full(values.shape[1:], np.nan)
        return values.std(axis=0, ddof=1) / math.sqrt(R)

    @property
    def mean(self) -> np.ndarray:
        return self._derive(self.jac, "mean")

    @property
    def mean_se(self) -> np.ndarray:
        return self._se(self.jac, "mean", "mean_se")

    @property
    def mean_abs(self) -> np.ndarray:
        return self._derive(self.jac, "abs_mean")

    @property
    def mean_abs_se(self) -> np.ndarray:
        return self._se(self.jac, "abs_mean", "abs_mean_se")

    @property
    def dgsm(self) -> np.ndarray:
        return self._derive(self.jac, "sq_mean")

    @property
    def dgsm_se(self) -> np.ndarray:
        return self._se(self.jac, "sq_mean", "sq_mean_se")

    @property
    def std(self) -> np.ndarray:
        return self._derive(self.jac, "std")

    @property
    def std_se(self) -> np.ndarray:
        return self._se(self.jac, "std", "std_se")

    @property
    def max_abs(self) -> np.ndarray:
        return self._derive(self.jac, "max_abs")

    @property
    def interactions(self) -> np.ndarray | None:
        return None if self.hess is None else self._derive(self.hess, "abs_mean")

    @property
    def interactions_se(self) -> np.ndarray | None:
        return None if self.hess is None else self._derive(self.hess, "abs_mean_se")

    def __repr__(self) -> str:
        extra = ", interactions" if self.hess is not None else ""
        if self.replicates is not None:
            extra += f", replicates={len(self.replicates)}"
        return (
            f"SensitivityResult(n_out={self.n_out}, n_in={self.n_in}, n={self.n}, "
            f"n_omitted={self.n_omitted}, mode={self.mode!r}{extra})"
        )

    def _output_index(self, output: int | str) -> int:
        if isinstance(output, str):
            if output not in self.output_names:
                raise ValueError(
                    f"Unknown `output` {output!r}; expected one of {self.output_names}."
                )
            return self.output_names.index(output)
        if isinstance(output, bool) or not isinstance(output, int | np.integer):
            raise TypeError(f"`output` must be an int or an output name, got {output!r}.")
        if not -self.n_out <= output < self.n_out:
            raise ValueError(f"`output` must be in [0, {self.n_out}), got {output}.")
        return int(output) % self.n_out

    def output_label(self, output: int | str | None = None) -> str:
        """The name of the output a table or figure describes: the output's name, or for
        `output=None` on a multi-output result `"RMS over <n_out> outputs"`."""
        if output is None:
            if self.n_out == 1:
                return self.output_names[0]
            return f"RMS over {self.n_out} outputs"
        return self.output_names[self._output_index(output)]

    def values(self, by: str = "mean_abs", output: int | str | None = None) -> np.ndarray:
        """The `(n_in,)` values of statistic `by` for one output, or aggregated.

        **Arguments:**

        - `by`: `"mean_abs"` (default), `"dgsm"`, `"std"`, `"max_abs"` or `"mean"`.
        - `output`: an output index or name; or `None` (default): the only output of a
            single-output result, else the root mean square over the outputs,
            `A_i = sqrt(Σ_o v_oi² / n_out)` for the statistic `v` (so for `"mean"` the
            aggregate is unsigned: it says how large the mean effects are, not their
            sign).

        **Returns:**

        A float64 `(n_in,)` array.
        """
        check_choice(by, "by", _STATS)
        v = getattr(self, by)
        if output is None:
            if self.n_out == 1:
                return v[0]
            return np.sqrt(np.mean(v * v, axis=0))
        return v[self._output_index(output)]

    def se(self, by: str = "mean_abs", output: int | str | None = None) -> np.ndarray | None:
        """The `(n_in,)` standard errors of `values(by, output)` (None for `max_abs`).

        For the root-mean-square aggregate over outputs (`output=None`, several outputs)
        the standard error is the delta method's,
        `se(A_i) = sqrt(Σ_o (v_oi · se_oi)²) / (n_out · A_i)` (0 where `A_i = 0`), which
        treats the outputs' estimates as independent. They come from the same rows, so
        with outputs whose derivatives move together the true error can be larger (up to
        `Σ_o |v_oi| se_oi / (n_out A_i)` for perfectly correlated estimates).
        """
        check_choice(by, "by", _STATS)
        if by not in _SE_OF:
            return None
        se = getattr(self, _SE_OF[by])
        if output is None:
            if self.n_out == 1:
                return se[0]
            v = getattr(self, by)
            agg = np.sqrt(np.mean(v * v, axis=0))
            with np.errstate(invalid="ignore", divide="ignore"):
                num = np.sqrt(np.sum((v * se) ** 2, axis=0))
                return np.where(agg > 0, num / (self.n_out * np.where(agg > 0, agg, 1)), 0.0)
        return se[self._output_index(output)]

    def ranking(self, output: int | str | None = None, by: str = "mean_abs") -> list[str]:
        """Feature names sorted by decreasing importance.

        **Arguments:**

        - `output`: output index or name; `None` (default) ranks a multi-output result by
            the root mean square of the statistic over its outputs (see `values`), and a
            single-output result by its one output.
        - `by`: `"mean_abs"` (default), `"dgsm"`, `"std"`, `"max_abs"`, or `"mean"`
            (ranked by `|mean|`).

        **Returns:**

        A list of the `n_in` feature names, most important first (ties keep input order).
        `ranked_frame` gives the same order as a table that names the output.

        **Raises:**

        `ValueError` if the statistic is undefined (NaN) for a feature, as `std` is with
        a single sample: a ranking that silently put such features anywhere would lie.
        """
        return [self.feature_names[i] for i in self._order(by, output)]

    def _order(self, by: str, output: int | str | None) -> np.ndarray:
        v = self.values(by, output)
        if by == "mean":
            v = np.abs(v)
        if np.any(np.isnan(v)):
            i = int(np.argmax(np.isnan(v)))
            raise ValueError(
                f"Cannot rank by {by!r}: it is undefined (NaN) for feature "
                f"{self.feature_names[i]!r} (n={self.n}; std needs at least 2 samples)."
            )
        return np.argsort(-v, kind="stable")

    def ranked_frame(self, output: int | str | None = None, by: str = "mean_abs"):
        """The ranking as a `pandas.DataFrame` that names the output it describes.

        Columns: `output` (the output's name, or `"RMS over <n> outputs"` for the
        aggregate), `rank` (1 = most important), `feature`, the statistic `by` and, except
        for `max_abs`, its standard error `<by>_se` (for the aggregate, the delta-method
        value of `se`).
        """
        pd = _pandas()
        order = self._order(by, output)
        data: dict[str, Any] = {
            "output": [self.output_label(output)] * self.n_in,
            "rank": np.arange(1, self.n_in + 1),
            "feature": [self.feature_names[i] for i in order],
            by: self.values(by, output)[order],
        }
        se = self.se(by, output)
        if se is not None:
            data[f"{by}_se"] = se[order]
        return pd.DataFrame(data)

    def to_frame(self):
        """A tidy `pandas.DataFrame`: one row per (output, feature).

        Columns: `output` (the name of the output each row describes), `feature`, `mean,
        mean_se, mean_abs, mean_abs_se, dgsm, dgsm_se, std, std_se, max_abs`.
        """
        pd = _pandas()
        data: dict[str, Any] = {
            "output": np.repeat(np.asarray(self.output_names, dtype=object), self.n_in),
            "feature": np.tile(np.asarray(self.feature_names, dtype=object), self.n_out),
        }
        for c in _FRAME_COLUMNS:
            data[c] = getattr(self, c).reshape(-1)
        return pd.DataFrame(data)

    # ---------------------------------------------------------------- units

    def rescale(
        self, input_scale: Float[Array, " in"] | Any, output_scale: float | Any = 1.0
    ) -> SensitivityResult:
        """The result in other units: derivatives multiplied by `s_i / t_o`.

        If the inputs are measured in units of `s_i` (`x_i = s_i x̃_i`) and the outputs in
        units of `t_o`, the derivative becomes `∂ỹ_o/∂x̃_i = (s_i / t_o) ∂y_o/∂x_i`; every
        statistic follows (DGSM by the square, interactions by `s_i s_j / t_o`), as do the
        standard errors and QMC replicates. The accumulators are rescaled exactly (the
        power of two of each factor moves into their exponents), so the rescaled result
        still merges and saves.

        **Arguments:**

        - `input_scale`: `s`, `(n_in,)` finite factors `>= 0` (a scalar applies to all).
        - `output_scale`: `t`, a scalar or `(n_out,)` finite factors `> 0`.

        **Returns:**

        A new `SensitivityResult`.
        """
        s = _scale_factors(input_scale, self.n_in, "input_scale", positive=False)
        t = _scale_factors(output_scale, self.n_out, "output_scale", positive=True)
        c = s[None, :] / t[:, None]
        hess = None
        if self.hess is not None:
            hess = _scale_stats(self.hess, c[:, :, None] * s[None, None, :])
        reps = None
        if self.replicates is not None:
            reps = tuple(_scale_stats(r, c) for r in self.replicates)
        return SensitivityResult(
            _scale_stats(self.jac, c),
            hess,
            self.n_omitted,
            self.feature_names,
            self.output_names,
            self.mode,
            reps,
        )

    def scaled(
        self,
        X: Float[Array, "batch *in"] | Any,
        scale: Literal["std", "range", "none"] = "std",
    ) -> SensitivityResult:
        """The result per standard deviation or per range of each input over `X`.

        `scale="std"` multiplies `∂y/∂x_i` by the standard deviation of column `i` of `X`
        (the effect of a one-standard-deviation change of `x_i`), `"range"` by its range
        `max - min` (the effect of moving `x_i` across the data), `"none"` leaves the
        model's units. Per-standard-deviation units mislead for a feature whose standard
        deviation is made by a few rows: check `near_constant(X)`.

        **Arguments:**

        - `X`: data `(N, *in_shape)`, usually the rows the result was computed on.
        - `scale`: `"std"` (default), `"range"` or `"none"`.

        **Returns:**

        A new `SensitivityResult` (see `rescale`).
        """
        check_choice(scale, "scale", ("std", "range", "none"))
        if scale == "none":
            return self
        return self.rescale(_input_factors(self._flat_data(X), scale))

    def near_constant(self, X: Float[Array, "batch *in"] | Any, *, share: float = 0.99):
        """The features whose standard deviation over `X` is made by a few rows.

        A feature is flagged when more than `share` of the rows of `X` hold (within
        `1e-12` of the column's largest magnitude) one and the same value, its mode: its
        standard deviation then measures a handful of outliers, and a sensitivity per
        standard deviation (or per range) of it is not comparable with the others. (A
        digits pixel that is non-zero in 1 of 1797 images is; a continuous feature, or a
        binary one with more than 1% of each value, is not.) Constant columns are flagged.

        **Arguments:**

        - `X`: data `(N, *in_shape)`.
        - `share`: the fraction of rows at the mode above which a feature is flagged, in
            `(0, 1)`.

        **Returns:**

        A tuple of the flagged feature names, in input order.
        """
        if isinstance(share, bool) or not isinstance(share, float | int) or not 0 < share < 1:
            raise ValueError(f"`share` must be in (0, 1), got {share!r}.")
        mode_share = _mode_share(self._flat_data(X))
        return tuple(n for n, m in zip(self.feature_names, mode_share, strict=True) if m > share)

    def _flat_data(self, X: Any) -> np.ndarray:
        a = np.asarray(X, np.float64)
        if a.ndim < 2 or a.shape[0] < 1 or math.prod(a.shape[1:]) != self.n_in:
            raise ValueError(
                f"`X` must have shape (N, *in_shape) with {self.n_in} features per row, got "
                f"{a.shape}."
            )
        a = a.reshape(a.shape[0], self.n_in)
        if not np.all(np.isfinite(a)):
            raise ValueError("`X` must be finite.")
        return a

    def plot(self, kind: Literal["bar", "heatmap", "map"] = "bar", **kwargs):
        """A matplotlib figure: `"bar"` (error bars), `"heatmap"` or `"map"`.

        Keyword arguments go to `jacsens.plot.sensitivity_bar` / `sensitivity_heatmap` /
        `sensitivity_map` (`output`, `by`, `top`, `ax`, ...). The bar chart of a
        multi-output result shows, unless `output=` picks one, the root mean square over
        the outputs (see `values`), and its title says so. Needs the `plot` extra.
        """
        from .. import plot  # imported here: plot imports this module for its types

        return plot.plot_sensitivity(self, kind, **kwargs)

    def sobol_bound(
        self, bounds: Float[Array, "in 2"] | Any, output_variance: float | Any
    ) -> np.ndarray:
        """DGSM upper bound on total Sobol indices, for independent uniform inputs.

        For `x_i ~ U(a_i, b_i)`, `S_i^T ≤ (b_i - a_i)² ν_i / (π² Var[y])`
        (Sobol' & Kucherenko 2009, Lamboni et al. 2013).

        **Arguments:**

        - `bounds`: `(n_in, 2)` rows `[a_i, b_i]` with `a_i < b_i`.
        - `output_variance`: `Var[y]`, a positive scalar or one per output `(n_out,)`.

        **Returns:**

        `(n_out, n_in)` upper bounds (they may exceed 1; the bound is loose when the
        model is far from additive).
        """
        b = np.asarray(bounds, dtype=np.float64)
        if b.shape != (self.n_in, 2):
            raise ValueError(f"`bounds` must have shape ({self.n_in}, 2), got {b.shape}.")
        width = b[:, 1] - b[:, 0]
        if np.any(~(width > 0)):
            i = int(np.argmax(~(width > 0)))
            raise ValueError(f"`bounds` must have low < high; input {i} has {b[i].tolist()}.")
        var = np.asarray(output_variance, dtype=np.float64)
        if var.ndim == 0:
            var = np.full((self.n_out,), float(var))
        if var.shape != (self.n_out,):
            raise ValueError(
                f"`output_variance` must be a scalar or have shape ({self.n_out},), "
                f"got {var.shape}."
            )
        if np.any(~(var > 0)):
            raise ValueError(f"`output_variance` must be > 0, got {var.tolist()}.")
        return width[None, :] ** 2 * self.dgsm / (math.pi**2 * var[:, None])

    def dgsm_normalised(
        self,
        bounds: Float[Array, "in 2"] | Any,
        output_variance: float | Any,
        output_variance_se: float | Any = 0.0,
        *,
        level: float = 0.95,
    ) -> NormalisedDGSM:
        """SALib's normalised DGSM, `ν_i (b_i - a_i)² / (π² Var[y])`, with its error.

        For independent uniform inputs `x_i ~ U(a_i, b_i)` this is the upper bound on the
        total Sobol' index of `sobol_bound` (Sobol' & Kucherenko 2009), and what SALib's
        `dgsm.analyze` reports as `dgsm`. It applies to uniform inputs only: a problem
        dict with other `dists` is refused (for other distributions the constant differs:
        `σ²` in place of `(b - a)²/π²` for a normal input).

        The standard error combines those of `ν` (`dgsm_se`: i.i.d., or randomised QMC
        with replicates) and of `Var[y]` by the delta method, treating the two estimates
        as independent, which they are when `Var[y]` comes from another sample (say a
        plain `jax.vmap(model)` over fresh inputs, or a closed form with `se = 0`):
        `se = S · sqrt((se_ν / ν)² + (se_V / V)²)`. The interval is `S ± z · se`.

        **Arguments:**

        - `bounds`: `(n_in, 2)` rows `[a_i, b_i]`, or a SALib problem dict (all `unif`;
            its `names`, if any, must match `feature_names`).
        - `output_variance`: `Var[y]`, a scalar or one per output `(n_out,)`, `> 0`.
        - `output_variance_se`: the standard error of `output_variance` (same shape;
            default 0: exact).
        - `level`: confidence level of the interval, in `(0, 1)`.

        **Returns:**

        A `NormalisedDGSM` `(value, se, low, high)`, each `(n_out, n_in)` float64, in
        the units of a Sobol' index (a fraction of `Var[y]`).

        **Raises:**

        `ValueError` naming `bounds` (shape, `low >= high`, non-uniform dists, names that
        differ from the result's), `output_variance`, `output_variance_se` or `level`.
        """
        if isinstance(bounds, Mapping):
            spec = parse_problem(bounds)
            if any(d != "unif" for d in spec.dists):
                raise ValueError(
                    f"`bounds` is a problem with dists {list(spec.dists)}: the normalised "
                    "DGSM (b-a)²/π² constant holds for uniform inputs only."
                )
            if spec.names is not None and spec.names != self.feature_names:
                raise ValueError(
                    f"`bounds` problem names {list(spec.names)} differ from the result's "
                    f"feature_names {list(self.feature_names)}."
                )
            bounds = spec.bounds[:, :2]
        value = self.sobol_bound(bounds, output_variance)
        var = np.broadcast_to(np.asarray(output_variance, np.float64), (self.n_out,))
        var_se = np.asarray(output_variance_se, np.float64)
        try:
            var_se = np.broadcast_to(var_se, (self.n_out,))
        except ValueError as e:
            raise ValueError(
                f"`output_variance_se` must be a scalar or have shape ({self.n_out},), "
                f"got {var_se.shape}."
            ) from e
        if np.any(~(var_se >= 0)):
            raise ValueError(f"`output_variance_se` must be >= 0, got {var_se.tolist()}.")
        if isinstance(level, bool) or not isinstance(level, float | int) or not 0 < level < 1:
            raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
        with np.errstate(invalid="ignore", divide="ignore"):
            rel_nu = np.where(self.dgsm > 0, self.dgsm_se / self.dgsm, 0.0)
        rel = np.sqrt(rel_nu**2 + (var_se / var)[:, None] ** 2)
        se = value * rel
        z = _normal_quantile(0.5 + level / 2)
        return NormalisedDGSM(value, se, value - z * se, value + z * se)

    def replicate_median(
        self,
        statistic: Literal["mean", "mean_abs", "dgsm", "std"] = "dgsm",
        *,
        level: float = 0.9,
    ) -> ReplicateMedian:
        """The median of the randomised-QMC replicate estimates, with an interval.

        The replicate estimates of scrambled Sobol' points are heavy-tailed: most
        scrambles integrate a smooth function far better than the root-mean-square error
        says, a few much worse (a scramble whose error stays flat over several doublings
        of the points), and the average over replicates (`dgsm`, ...) inherits the worst
        one. Their median ("median of means", Pan & Owen 2024, *Super-polynomial
        accuracy of multidimensional randomized nets using the median-of-means*) leaves
        those out. `[low, high]` are the `k`-th smallest and `k`-th largest replicate
        values, with the largest `k` for which they cover the median of the estimator's
        distribution with probability `coverage = 1 - 2·P(Binomial(R, 1/2) < k) ≥ level`
        (any distribution; `k = 1` and a smaller coverage where `R` is too small for
        `level`). Unlike the average, the median is not unbiased: use it where the
        replicates' spread (`dgsm_se`) is dominated by one or two outlying scrambles.

        **Arguments:**

        - `statistic`: `"mean"`, `"mean_abs"`, `"dgsm"` or `"std"`.
        - `level`: the coverage wanted, in `(0, 1)`.

        **Returns:**

        A `ReplicateMedian` `(value, low, high, coverage)`: three `(n_out, n_in)` float64
        arrays and the interval's coverage probability (a float).

        **Raises:**

        `ValueError` for a result without replicates (not from `jacsens.sobol` or
        `jacsens.halton` data), an unknown `statistic` or `level` outside `(0, 1)`.
        """
        if self.replicates is None:
            raise ValueError(
                "`replicate_median` needs replicates: run `sensitivity` on "
                "`jacsens.sobol(...)` or `jacsens.halton(...)` data."
            )
        check_choice(statistic, "statistic", tuple(_REPLICATE_FIELD))
        if isinstance(level, bool) or not isinstance(level, float | int) or not 0 < level < 1:
            raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
        field = _REPLICATE_FIELD[statistic]
        values = np.sort(np.stack([self._derive(r, field) for r in self.replicates]), axis=0)
        R = values.shape[0]
        k, coverage = 1, _order_coverage(R, 1)
        while k < R // 2 and _order_coverage(R, k + 1) >= level:
            k += 1
            coverage = _order_coverage(R, k)
        return ReplicateMedian(np.median(values, axis=0), values[k - 1], values[R - k], coverage)

    # ---------------------------------------------------------------- combining, files

    def merge(self, other: SensitivityResult) -> SensitivityResult:
        """The result over the union of two disjoint sets of samples.

        Equal, up to round-off, to one run over all the samples. Both results must
        describe the same features and outputs and both have (or lack) interactions;
        the mode is kept if both used the same one, else recorded as `"mixed"`.
        """
        if not isinstance(other, SensitivityResult):
            raise TypeError(f"`other` must be a SensitivityResult, got {type(other).__name__}.")
        for attr in ("feature_names", "output_names"):
            if getattr(self, attr) != getattr(other, attr):
                raise ValueError(
                    f"Cannot merge results with different {attr}: {getattr(self, attr)} "
                    f"and {getattr(other, attr)}."
                )
        if (self.hess is None) != (other.hess is None):
            raise ValueError("Cannot merge a result with interactions and one without.")
        hess = None if self.hess is None else stats_merge(self.hess, other.hess)
        reps = None
        if self.replicates is not None or other.replicates is not None:
            if (
                self.replicates is None
                or other.replicates is None
                or len(self.replicates) != len(other.replicates)
            ):
                raise ValueError(
                    "Cannot merge results with different numbers of QMC replicates; merge "
                    "two runs over further points of the same scrambles, replicate by "
                    "replicate."
                )
            reps = tuple(
                stats_merge(a, b) for a, b in zip(self.replicates, other.replicates, strict=True)
            )
        return SensitivityResult(
            stats_merge(self.jac, other.jac),
            hess,
            self.n_omitted + other.n_omitted,
            self.feature_names,
            self.output_names,
            self.mode if self.mode == other.mode else "mixed",
            reps,
        )

    def _header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "n_omitted": self.n_omitted,
            "feature_names": list(self.feature_names),
            "output_names": list(self.output_names),
            "mode": self.mode,
            "interactions": self.hess is not None,
            "replicates": 0 if self.replicates is None else len(self.replicates),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the result to `path` atomically, in jacsens' one `.npz` format.

        No pickle; checksummed (see the module docstring). Load with
        `SensitivityResult.load(path)`. For a table, use `to_frame()`.

        **Raises:**

        `ValueError` naming `path` if it does not end in `.npz` or its folder does not
        exist.
        """
        path = _npz_path(path, "path")
        write_file(path, self._header(), self.jac, self.hess, self.replicates)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityResult:
        """Read a result written by `save` (or the partial result in a checkpoint).

        **Raises:**

        `FileNotFoundError` if `path` does not exist; `ValueError` naming `path` for any
        file that is not an intact result (truncated, corrupted, edited, another format).
        """
        header, jac, hess = read_file(path)
        return result_from(header, jac, hess, path)


def _pandas():
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "`SensitivityResult` tables need pandas: pip install 'jacsens[data]'."
        ) from e
    return pd


def _scale_factors(value: Any, n: int, argname: str, *, positive: bool) -> np.ndarray:
    """`value` as `(n,)` finite float64 factors (a scalar applies to all), `> 0` if
    `positive` else `>= 0`; a `ValueError` naming `argname` otherwise."""
    v = np.asarray(value, np.float64)
    try:
        v = np.broadcast_to(v, (n,))
    except ValueError as e:
        raise ValueError(
            f"`{argname}` must be a scalar or have shape ({n},), got {v.shape}."
        ) from e
    ok, bound = (v > 0, "> 0") if positive else (v >= 0, ">= 0")
    if not np.all(np.isfinite(v) & ok):
        raise ValueError(f"`{argname}` must be finite and {bound}, got {v.tolist()}.")
    return v


def _scale_stats(state: StreamingStats, factor: np.ndarray) -> StreamingStats:
    """`state` of `g` turned into the state of `factor · g` (`factor >= 0`, per element).

    `factor = m · 2^k` with `m` in `[0.5, 1)`: the power of two goes into the exponent
    (exact) and the scaled moments are multiplied by `m^p`, so `|u|` stays below 4."""
    m, k = np.frexp(np.broadcast_to(np.asarray(factor, np.float64), state.shape))
    moments = {f: np.asarray(getattr(state, f), np.float64) * m**p for f, p in _POWERS.items()}
    exponent = np.asarray(state.exponent, np.float64) + k.astype(np.float64)
    return StreamingStats(np.asarray(state.count, np.float64), exponent, **moments)


def _input_factors(X: np.ndarray, scale: str) -> np.ndarray:
    """Per-column `(n_in,)` unit of `X (N, n_in)`: its standard deviation (`ddof=0`), its
    range `max - min`, or 1."""
    if scale == "std":
        return X.std(axis=0)
    if scale == "range":
        return X.max(axis=0) - X.min(axis=0)
    return np.ones(X.shape[1])


def _mode_share(X: np.ndarray) -> np.ndarray:
    """Per column of `X (N, n)`, the largest fraction of rows within `1e-12 · max|x|` of
    one value (sorted column; for each value, the rows up to it plus the tolerance)."""
    N = X.shape[0]
    S = np.sort(X, axis=0)
    tol = 1e-12 * np.max(np.abs(S), axis=0)
    share = np.empty(X.shape[1])
    for j in range(X.shape[1]):
        ends = np.searchsorted(S[:, j], S[:, j] + tol[j], side="right")
        share[j] = np.max(ends - np.arange(N)) / N
    return share


def report_scaling(
    X: np.ndarray,
    scale: str,
    x_std: np.ndarray | None = None,
    y_std: float | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """For a model fitted on `X` (standardised with raw column `x_std` and target `y_std`
    if given, else raw): `(input_scale, output_scale, units)` that put its derivatives
    into `scale` units (the CLI's `--scale`) through `SensitivityResult.rescale`."""
    check_choice(scale, "scale", ("std", "range", "none"))
    n_in = X.shape[1]
    standardised = x_std is not None
    y_unit = "standard deviations of y" if standardised else "units of y"
    one_out = np.ones(1)
    if scale == "range":
        return _input_factors(X, "range"), one_out, f"{y_unit} per range (max - min) of x"
    if scale == "std":
        if standardised:
            return np.ones(n_in), one_out, f"{y_unit} per standard deviation of x"
        return _input_factors(X, "std"), one_out, f"{y_unit} per standard deviation of x"
    if standardised:
        ys = np.ravel(np.asarray(y_std, np.float64))
        return 1.0 / np.asarray(x_std, np.float64), 1.0 / ys, "units of y per unit of x"
    return np.ones(n_in), one_out, "units of y per unit of x"


class NormalisedDGSM(NamedTuple):
    """`SensitivityResult.dgsm_normalised`: value, standard error and interval bounds,
    each `(n_out, n_in)`."""

    value: np.ndarray
    se: np.ndarray
    low: np.ndarray
    high: np.ndarray


class ReplicateMedian(NamedTuple):
    """`SensitivityResult.replicate_median`: the median of the replicate estimates, an
    interval `[low, high]` (each `(n_out, n_in)`) and the interval's coverage."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    coverage: float


_REPLICATE_FIELD = {"mean": "mean", "mean_abs": "abs_mean", "dgsm": "sq_mean", "std": "std"}


def _order_coverage(R: int, k: int) -> float:
    """`P(X_(k) ≤ median ≤ X_(R+1-k))` for `R` independent draws of a continuous
    distribution: `1 - 2·P(Binomial(R, 1/2) < k)`."""
    return 1.0 - 2.0 * sum(math.comb(R, j) for j in range(k)) / 2.0**R


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (bisection on `erf`: no scipy needed)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _npz_path(path: Any, argname: str) -> str:
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(
            f"`{argname}` must end in '.npz' (jacsens' one result format), got {path!r}; "
            "for a table use result.to_frame().to_csv(...)."
        )
    return path


# --------------------------------------------------------------------------- the format


def _checksum(header_text: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(FORMAT.encode() + b"\0" + header_text.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}:{a.dtype.str}:{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_file(
    path: str,
    header: dict[str, Any],
    jac: StreamingStats,
    hess: StreamingStats | None,
    replicates: tuple[StreamingStats, ...] | None = None,
) -> None:
    """Write `header` and the accumulators atomically as a checksummed `.npz`."""
    arrays = stats_state_dict(jac, "jac_")
    if hess is not None:
        arrays.update(stats_state_dict(hess, "hess_"))
    for k, r in enumerate(replicates or ()):
        arrays.update(stats_state_dict(r, f"rep{k}_"))
    text = json.dumps(header, allow_nan=False, sort_keys=True)
    blob = {"_header": np.array(text), "_checksum": np.array(_checksum(text, arrays))}
    atomic_write(path, lambda f: np.savez(f, **blob, **arrays))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in the header")


def read_file(path: str | os.PathLike) -> tuple[dict[str, Any], StreamingStats, Any]:
    """Read and verify a file written by `write_file`: `(header, jac, hess or None)`.

    The replicate accumulators, if any, are returned in the header under the key
    `"replicate_stats"` (a tuple of states; not part of the JSON), where `result_from`
    reads them."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No sensitivity result or checkpoint at {path!r}.")
    expected = {"_header", "_checksum", *("jac_" + f for f in STATS_FIELDS)}
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            names = set(z.files)
            if not {"_header", "_checksum"} <= names:
                raise ValueError("no header or checksum (not a jacsens result file)")
            reps = {n for n in names if re.fullmatch(r"rep\d+_\w+", n)}
            if names - expected - reps - {"hess_" + f for f in STATS_FIELDS}:
                raise ValueError(f"unexpected entries {sorted(names - expected)}")
            loaded = {k: z[k] for k in names}
    except ValueError as e:
        raise ValueError(f"{path!r} is not an intact jacsens sensitivity file: {e}") from e
    except Exception as e:  # zip/zlib/EOF/OS errors of a truncated or damaged archive
        raise ValueError(
            f"{path!r} is not an intact jacsens sensitivity file: {type(e).__name__}: {e}"
        ) from e
    try:
        header_arr, checksum_arr = loaded.pop("_header"), loaded.pop("_checksum")
        if header_arr.dtype.kind != "U" or header_arr.shape != ():
            raise ValueError("its header is not a text entry")
        if checksum_arr.dtype.kind != "U" or checksum_arr.shape != ():
            raise ValueError("its checksum is not a text entry")
        text = str(header_arr)
        if str(checksum_arr) != _checksum(text, loaded):
            raise ValueError("checksum mismatch: the file was corrupted or edited")
        header = json.loads(text, parse_constant=_reject_constant)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("not a jacsens sensitivity file")
        if header.get("version") != VERSION:
            raise ValueError(
                f"format version {header.get('version')!r}, this jacsens reads {VERSION}"
            )
        names_in = _str_list(header, "feature_names")
        names_out = _str_list(header, "output_names")
        interactions = header.get("interactions")
        if not isinstance(interactions, bool):
            raise ValueError("header field 'interactions' must be true or false")
        has_hess = any(k.startswith("hess_") for k in loaded)
        if has_hess != interactions:
            raise ValueError("its Hessian statistics do not match its 'interactions' flag")
        shape = (len(names_out), len(names_in))
        jac = stats_from_state_dict(loaded, "jac_", shape)
        hess = stats_from_state_dict(loaded, "hess_", (*shape, shape[1])) if has_hess else None
        if hess is not None and hess.n != jac.n:
            raise ValueError("its Jacobian and Hessian statistics count different samples")
        R = header.get("replicates", 0)
        if isinstance(R, bool) or not isinstance(R, int) or R < 0:
            raise ValueError("header field 'replicates' must be an int >= 0")
        if {k.split("_", 1)[0] for k in loaded if k.startswith("rep")} != {
            f"rep{k}" for k in range(R)
        }:
            raise ValueError(f"its replicate statistics do not match 'replicates' = {R}")
        if R:
            reps = tuple(stats_from_state_dict(loaded, f"rep{k}_", shape) for k in range(R))
            if sum(r.n for r in reps) != jac.n:
                raise ValueError("its replicates do not add up to its Jacobian statistics")
            header["replicate_stats"] = reps
    except ValueError as e:
        raise ValueError(f"{path!r} is not an intact jacsens sensitivity file: {e}") from e
    return header, jac, hess


def _str_list(header: dict[str, Any], key: str) -> list[str]:
    v = header.get(key)
    if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
        raise ValueError(f"header field {key!r} must be a non-empty list of names")
    return v


def header_int(header: dict[str, Any], key: str, path: Any, minimum: int = 0) -> int:
    """An integer header field `>= minimum`, or a `ValueError` naming the file."""
    v = header.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(
            f"{os.fspath(path)!r} is not an intact jacsens sensitivity file: header field "
            f"{key!r} must be an int >= {minimum}, got {v!r}."
        )
    return v


def result_from(header: dict[str, Any], jac, hess, path: Any) -> SensitivityResult:
    """The result described by a verified header and accumulators."""
    mode = header.get("mode")
    if not isinstance(mode, str):
        raise ValueError(
            f"{os.fspath(path)!r} is not an intact jacsens sensitivity file: header field "
            f"'mode' must be a string, got {mode!r}."
        )
    return SensitivityResult(
        jac,
        hess,
        header_int(header, "n_omitted", path),
        tuple(header["feature_names"]),
        tuple(header["output_names"]),
        mode,
        header.get("replicate_stats"),
    )
