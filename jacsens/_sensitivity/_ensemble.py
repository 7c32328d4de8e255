"""Sensitivity of an ensemble: every member analysed in one pass over the data (the
members' outputs stacked into one model), the spread between members beside the
within-data standard errors, and how stable each feature's rank is across members."""

from __future__ import annotations

from typing import Any, Literal

import equinox as eqx
import jax
import numpy as np

from .._ensemble import Ensemble
from .._validate import check_choice, check_positive_int
from ._result import _STATS, SensitivityResult, _pandas


class Stacked(eqx.Module):
    """Every member's output on one sample, stacked: `(size, *out_shape)`."""

    ensemble: Ensemble

    def __call__(self, x):
        return self.ensemble.outputs(x)


def _rows(stats: Any, start: int, stop: int) -> Any:
    """The statistics of outputs `start:stop` (the leading axis of every non-scalar field)."""
    return jax.tree.map(lambda a: a if np.ndim(a) == 0 else a[start:stop], stats)


def split_members(stacked: SensitivityResult, size: int, names: tuple[str, ...]):
    """The result of the stacked model split into one result per member."""
    n_out = stacked.n_out // size
    members = []
    for k in range(size):
        lo, hi = k * n_out, (k + 1) * n_out
        reps = stacked.replicates
        members.append(
            SensitivityResult(
                _rows(stacked.jac, lo, hi),
                None if stacked.hess is None else _rows(stacked.hess, lo, hi),
                stacked.n_omitted,
                stacked.feature_names,
                names,
                stacked.mode,
                None if reps is None else tuple(_rows(r, lo, hi) for r in reps),
            )
        )
    return EnsembleSensitivity(tuple(members))


class EnsembleSensitivity(eqx.Module):
    """Sensitivity of every member of an ensemble, and how much they agree.

    Made by `jacsens.sensitivity(ensemble, data)` for a `jacsens.Ensemble`. For each
    statistic (`"mean_abs"`, `"dgsm"`, ...) and output:

    - `values(by, output)`: the mean over members of each member's estimate;
    - `between_sd(by, output)`: the standard deviation of the members' estimates (ddof
        1): how much the answer depends on the initialisation and shuffling of the fit
        (model uncertainty), which the within-data standard errors of one model miss;
    - `within_se(by, output)`: the root mean square over members of each member's Monte
        Carlo standard error (uncertainty from the finite data);
    - `se(by, output)`: `sqrt(between_sd² + within_se²)`, the standard error of one
        refitted model's estimate (used for the error bars of `plot`);
    - `rank_stability(k)`: for each feature, the share of members in which it is among
        the `k` most important.

    **Fields:**

    - `members`: one `SensitivityResult` per member.
    """

    members: tuple[SensitivityResult, ...]

    def __check_init__(self):
        if not self.members:
            raise ValueError("`members` must hold at least one SensitivityResult.")
        first = self.members[0]
        for r in self.members[1:]:
            if r.feature_names != first.feature_names or r.output_names != first.output_names:
                raise ValueError("Every member must describe the same features and outputs.")

    @property
    def size(self) -> int:
        """Number of members."""
        return len(self.members)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.members[0].feature_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.members[0].output_names

    @property
    def n(self) -> int:
        return self.members[0].n

    @property
    def n_in(self) -> int:
        return self.members[0].n_in

    @property
    def n_out(self) -> int:
        return self.members[0].n_out

    @property
    def mode(self) -> str:
        return self.members[0].mode

    def __repr__(self) -> str:
        m = self.members[0]
        return (
            f"EnsembleSensitivity(size={self.size}, n_out={m.n_out}, n_in={m.n_in}, n={m.n}, "
            f"mode={m.mode!r})"
        )

    def output_label(self, output: int | str | None = None) -> str:
        return self.members[0].output_label(output)

    def _stack(self, by: str, output: int | str | None) -> np.ndarray:
        check_choice(by, "by", _STATS)
        return np.stack([r.values(by, output) for r in self.members])

    def values(self, by: str = "mean_abs", output: int | str | None = None) -> np.ndarray:
        """`(n_in,)`: the mean over members of statistic `by` (aggregated over outputs as
        `SensitivityResult.values` does for `output=None`)."""
        return self._stack(by, output).mean(axis=0)

    def between_sd(self, by: str = "mean_abs", output: int | str | None = None) -> np.ndarray:
        """`(n_in,)`: the standard deviation over members (ddof 1; 0 for one member)."""
        v = self._stack(by, output)
        return v.std(axis=0, ddof=1) if self.size > 1 else np.zeros(v.shape[1])

    def within_se(self, by: str = "mean_abs", output: int | str | None = None):
        """`(n_in,)`: the root mean square of the members' standard errors (None for
        `max_abs`, which has none)."""
        se = [r.se(by, output) for r in self.members]
        if se[0] is None:
            return None
        return np.sqrt(np.mean(np.square(se), axis=0))

    def se(self, by: str = "mean_abs", output: int | str | None = None):
        """`(n_in,)`: `sqrt(between_sd² + within_se²)` (for `max_abs`: `between_sd`)."""
        within = self.within_se(by, output)
        between = self.between_sd(by, output)
        return between if within is None else np.sqrt(between**2 + within**2)

    def ranking(self, output: int | str | None = None, by: str = "mean_abs") -> list[str]:
        """Feature names by decreasing member-mean of `by` (by `|mean|` for `"mean"`)."""
        v = self.values(by, output)
        if by == "mean":
            v = np.abs(v)
        return [self.feature_names[i] for i in np.argsort(-v, kind="stable")]

    def rank_stability(
        self, k: int = 5, output: int | str | None = None, by: str = "mean_abs"
    ) -> np.ndarray:
        """`(n_in,)`: for each feature, the share of members (0..1) that rank it among
        their `k` most important by `by` (`k` is clipped to the number of features)."""
        k = min(check_positive_int(k, "k", allow_none=False), self.n_in)
        hits = np.zeros(self.n_in)
        for r in self.members:
            hits[r._order(by, output)[:k]] += 1
        return hits / self.size

    def top_agreement(
        self, k: int = 1, output: int | str | None = None, by: str = "mean_abs"
    ) -> float:
        """The share of members whose `k` most important features (as a set) are the
        ensemble's `k` most important; `k = 1` (default): the top feature."""
        k = min(check_positive_int(k, "k", allow_none=False), self.n_in)
        top = {self.feature_names.index(n) for n in self.ranking(output, by)[:k]}
        return float(np.mean([set(r._order(by, output)[:k].tolist()) == top for r in self.members]))

    def ranked_frame(self, output: int | str | None = None, by: str = "mean_abs", k: int = 5):
        """The ranking as a `pandas.DataFrame` naming the output: `output`, `rank`,
        `feature`, `<by>` (member mean), `<by>_between_sd`, `<by>_within_se`,
        `top<k>_share` (rank stability)."""
        pd = _pandas()
        names = self.ranking(output, by)
        order = [self.feature_names.index(n) for n in names]
        data: dict[str, Any] = {
            "output": [self.output_label(output)] * self.n_in,
            "rank": np.arange(1, self.n_in + 1),
            "feature": names,
            by: self.values(by, output)[order],
            f"{by}_between_sd": self.between_sd(by, output)[order],
        }
        within = self.within_se(by, output)
        if within is not None:
            data[f"{by}_within_se"] = within[order]
        data[f"top{min(k, self.n_in)}_share"] = self.rank_stability(k, output, by)[order]
        return pd.DataFrame(data)

    def to_frame(self):
        """One row per (output, feature): `output`, `feature`, the member means of `mean,
        mean_abs, dgsm, std, max_abs`, their standard errors `<stat>_se` (`se`: between
        members and within the data), `<stat>_between_sd`, `<stat>_within_se`, and
        `top5_share` (rank stability of each output's ranking by `mean_abs`)."""
        pd = _pandas()
        n_in = self.n_in
        data: dict[str, Any] = {
            "output": np.repeat(np.asarray(self.output_names, dtype=object), n_in),
            "feature": np.tile(np.asarray(self.feature_names, dtype=object), self.n_out),
        }
        for stat in _STATS:
            data[stat] = np.concatenate([self.values(stat, o) for o in range(self.n_out)])
            if stat != "max_abs":
                data[f"{stat}_se"] = np.concatenate([self.se(stat, o) for o in range(self.n_out)])
                data[f"{stat}_within_se"] = np.concatenate(
                    [self.within_se(stat, o) for o in range(self.n_out)]
                )
            data[f"{stat}_between_sd"] = np.concatenate(
                [self.between_sd(stat, o) for o in range(self.n_out)]
            )
        data["top5_share"] = np.concatenate([self.rank_stability(5, o) for o in range(self.n_out)])
        return pd.DataFrame(data)

    def members_frame(self):
        """One row per (member, output, feature): the members' `to_frame()` with a
        `member` column first."""
        pd = _pandas()
        frames = []
        for i, r in enumerate(self.members):
            f = r.to_frame()
            f.insert(0, "member", i)
            frames.append(f)
        return pd.concat(frames, ignore_index=True)

    def rescale(self, input_scale: Any, output_scale: Any = 1.0) -> EnsembleSensitivity:
        """Every member rescaled (`SensitivityResult.rescale`)."""
        return EnsembleSensitivity(
            tuple(r.rescale(input_scale, output_scale) for r in self.members)
        )

    def near_constant(self, X: Any, *, share: float = 0.99):
        """As `SensitivityResult.near_constant` (a property of the data, not the models)."""
        return self.members[0].near_constant(X, share=share)

    def plot(self, kind: Literal["bar"] = "bar", **kwargs):
        """Bar chart of the member-mean statistic with error bars `± z · se` (between
        members and within the data together; see `se`). Keyword arguments as
        `jacsens.plot.sensitivity_bar`."""
        check_choice(kind, "kind", ("bar",))
        from .. import plot

        kwargs.setdefault("sign", False)
        title = kwargs.pop("subtitle", None)
        extra = f"ensemble of {self.size}: error bars include the spread between members"
        kwargs["subtitle"] = extra if title is None else f"{title}\n{extra}"
        return plot.sensitivity_bar(self, **kwargs)  # type: ignore[arg-type]
