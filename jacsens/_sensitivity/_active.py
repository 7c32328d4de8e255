"""Active subspaces: `C = E[J(x)ᵀ M J(x)]` streamed through the sensitivity chunk loop.

For a scalar `f`, `C = E[∇f ∇fᵀ]` (Constantine 2015); its leading eigenvectors span the
directions along which `f` varies most on average, and `λ_k = E[(w_kᵀ∇f)²]`. For several
outputs the matrix is `E[Jᵀ M J]` with a metric `M` on the outputs (the identity sums the
outputs' matrices; one output is `M = e_o e_oᵀ`).

Each chunk is reduced on the device(s) to `Σ_rows Jᵀ M J` in the Jacobian's dtype (at least
float32; float64 with x64) and accumulated on the host in float64, so memory is
`O(n_in²)` whatever the number of samples, and the run shards and backs off exactly as
`sensitivity` does (`_run.execute`).

**Bootstrap.** Intervals come from a Poisson bootstrap over rows (Hanley & MacGibbon 2006;
the streaming form of the bootstrap): every row gets `n_bootstrap` independent Poisson(1)
weights, drawn from its own key (`fold_in` of the row's global index), and each bootstrap
replicate accumulates its own weighted `Σ w Jᵀ M J`. The weights do not depend on the
chunking or the devices, so neither does any interval. This costs `n_bootstrap` more
`n_in × n_in` accumulators (device and host) and as many extra matrix products per chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, PRNGKeyArray

from .._modes import AbstractJacobianMode, get_mode
from .._progress import Progress as ProgressChoice
from .._validate import check_choice, check_positive_int
from ._run import (
    Progress,
    Reduction,
    Run,
    check_chunk_size,
    execute,
    open_data,
    reduction_dtype,
    resolve_mesh,
)
from ._sources import _as_key, to_host

# Poisson(1) CDF at k = 0, 1, ...: a weight is the number of thresholds a uniform exceeds
# (inverse-CDF sampling). Weights above 11 have probability < 1e-9: they are cut there.
_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(12)])


def _poisson_weights(key, rows_hi, rows_lo, n_boot: int, dtype) -> Array:
    """`(n_boot, B)` Poisson(1) weights, row `b`'s drawn from its own key."""

    def one(hi, lo):
        k = jax.random.fold_in(jax.random.fold_in(key, hi), lo)
        return jax.random.uniform(k, (n_boot,), jnp.float32)

    u = jax.vmap(one, out_axes=1)(rows_hi, rows_lo)
    thresholds = jnp.asarray(_POISSON_CDF, jnp.float32)
    return jnp.sum(u[..., None] > thresholds, axis=-1).astype(dtype)


class ActiveReduction(Reduction):
    """`Σ Jᵀ M J` and its count, with `n_boot` Poisson-weighted copies. State: a dict of
    float64 `total (d, d)`, `count`, `boot_total (K, d, d)`, `boot_count (K,)`."""

    metric: Array
    key: PRNGKeyArray
    n_boot: int = eqx.field(static=True)

    def device(self, J, H, ok, rows_hi, rows_lo):
        dtype = reduction_dtype(J.dtype)
        w = ok.astype(dtype)
        Jw = jnp.where(ok[:, None, None], J.astype(dtype), jnp.zeros((), dtype))
        MJ = jnp.einsum("pq,bqi->bpi", self.metric.astype(dtype), Jw)
        out = {
            "total": jnp.einsum("bpi,bpj->ij", Jw, MJ),
            "count": jnp.sum(w),
        }
        if self.n_boot:
            W = _poisson_weights(self.key, rows_hi, rows_lo, self.n_boot, dtype) * w
            out["boot_total"] = jnp.einsum("kb,bpi,bpj->kij", W, Jw, MJ)
            out["boot_count"] = jnp.sum(W, axis=1)
        return out

    def host(self, out, stacked):
        out = {k: np.asarray(to_host(v), np.float64) for k, v in out.items()}
        return {k: v.sum(axis=0) for k, v in out.items()} if stacked else out

    def fold(self, state, start, part):
        return {k: state[k] + part[k] for k in state}

    def bytes_per_row(self, plan):
        item = jnp.dtype(reduction_dtype(plan.dtype)).itemsize
        # J, M·J and the weighted copies of J the bootstrap products make
        return item * plan.n_out * plan.n_in * (3 + self.n_boot) + 4 * (self.n_boot + 1)


def _metric(metric: Any, output: Any, n_out: int, output_names: tuple[str, ...]) -> np.ndarray:
    if output is not None:
        if metric is not None:
            raise ValueError("Pass `output` or `metric`, not both.")
        if isinstance(output, str):
            if output not in output_names:
                raise ValueError(f"Unknown `output` {output!r}; expected one of {output_names}.")
            output = output_names.index(output)
        if isinstance(output, bool) or not isinstance(output, int | np.integer):
            raise TypeError(f"`output` must be an int, an output name or None, got {output!r}.")
        if not -n_out <= output < n_out:
            raise ValueError(f"`output` must be in [0, {n_out}), got {output}.")
        M = np.zeros((n_out, n_out))
        M[output, output] = 1.0
        return M
    if metric is None:
        return np.eye(n_out)
    M = np.asarray(metric, np.float64)
    if M.shape == (n_out,):
        M = np.diag(M)
    if M.shape != (n_out, n_out):
        raise ValueError(
            f"`metric` must have shape ({n_out},) (weights) or ({n_out}, {n_out}), got {M.shape}."
        )
    if not np.all(np.isfinite(M)) or not np.allclose(M, M.T):
        raise ValueError("`metric` must be finite and symmetric.")
    if np.linalg.eigvalsh(M).min() < -1e-12 * max(1.0, np.abs(M).max()):
        raise ValueError("`metric` must be positive semi-definite.")
    return M


def _eigh_desc(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues in decreasing order and unit eigenvectors as columns, each with its
    largest-magnitude entry positive (so directions compare across runs)."""
    lam, W = np.linalg.eigh((C + C.T) / 2)
    lam, W = lam[::-1], W[:, ::-1]
    idx = np.argmax(np.abs(W), axis=0)
    W = W * np.sign(W[idx, np.arange(W.shape[1])])
    return lam, W


def _subspace_distance(W: np.ndarray, V: np.ndarray) -> float:
    """`‖W Wᵀ - V Vᵀ‖₂` for orthonormal `W`, `V` `(d, k)`: the sine of the largest principal
    angle between their spans."""
    d = W.shape[0]
    perp = np.eye(d) - W @ W.T
    return float(np.linalg.norm(perp @ V, 2))


class ActiveSubspaceResult(eqx.Module):
    """An estimated active subspace: `C = E[Jᵀ M J]`, its eigenpairs and bootstrap spread.

    **Fields:**

    - `total`: `Σ_rows Jᵀ M J`, `(n_in, n_in)` float64.
    - `count`: rows used.
    - `boot_total`, `boot_count`: the Poisson-bootstrap replicates of `total` and of the
        count, `(K, n_in, n_in)` and `(K,)` (`K = 0`: no bootstrap).
    - `n_omitted`: rows skipped as non-finite (`nan_policy="omit"`).
    - `feature_names`: `n_in` names.
    - `target`: what `C` describes (one output, the sum over outputs, or a metric).
    - `mode`: the Jacobian mode used.

    **Properties:** `matrix` (`C`), `eigenvalues` (decreasing), `eigenvectors` (columns,
    largest entry positive), `eigenvalues_se` (bootstrap standard deviation),
    `suggested_dimension` (largest gap in the log spectrum). Methods give bootstrap
    intervals (`eigenvalues_ci`, `subspace_distance`), `activity_scores(k)` and `plot()`.
    """

    total: np.ndarray
    count: int = eqx.field(static=True)
    boot_total: np.ndarray
    boot_count: np.ndarray
    n_omitted: int = eqx.field(static=True)
    feature_names: tuple[str, ...] = eqx.field(static=True, converter=tuple)
    target: str = eqx.field(static=True)
    mode: str = eqx.field(static=True, default="auto")

    @property
    def n(self) -> int:
        return self.count

    @property
    def n_in(self) -> int:
        return len(self.feature_names)

    @property
    def n_bootstrap(self) -> int:
        return int(self.boot_count.shape[0])

    @property
    def matrix(self) -> Float[np.ndarray, "in in"]:
        """`C = E[Jᵀ M J]`, the float64 mean over the rows used."""
        return self.total / self.count

    @property
    def eigenvalues(self) -> Float[np.ndarray, " in"]:
        return _eigh_desc(self.matrix)[0]

    @property
    def eigenvectors(self) -> Float[np.ndarray, "in in"]:
        """Column `k` is the `k`-th direction (unit norm, largest-magnitude entry > 0)."""
        return _eigh_desc(self.matrix)[1]

    def _bootstrap(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues `(K, d)` and eigenvectors `(K, d, d)` of the bootstrap replicates."""
        if self.n_bootstrap == 0:
            raise ValueError("No bootstrap replicates: run active_subspace with n_bootstrap > 0.")
        pairs = [
            _eigh_desc(t / max(c, 1.0))
            for t, c in zip(self.boot_total, self.boot_count, strict=True)
        ]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    @property
    def eigenvalues_se(self) -> Float[np.ndarray, " in"]:
        """Bootstrap standard deviation of each eigenvalue."""
        return self._bootstrap()[0].std(axis=0, ddof=1)

    def eigenvalues_ci(self, level: float = 0.95) -> Float[np.ndarray, "2 in"]:
        """Percentile bootstrap interval `[low; high]` of each eigenvalue, `(2, n_in)`."""
        q = _quantiles(level)
        return np.quantile(self._bootstrap()[0], q, axis=0)

    def subspace_distance(self, level: float = 0.95) -> dict[str, np.ndarray]:
        """Bootstrap distances between the estimated `k`-dimensional subspace and its
        bootstrap replicates, `‖W_k W_kᵀ - Ŵ_k Ŵ_kᵀ‖₂` (the sine of the largest principal
        angle; 0 = the same subspace, 1 = an orthogonal direction), for `k = 1..n_in-1`.

        **Returns:**

        A dict of `(n_in - 1,)` arrays: `"mean"`, `"low"`, `"high"` (percentile interval
        at `level`); index `k - 1` is dimension `k`.
        """
        q = _quantiles(level)
        W = self.eigenvectors
        _, V = self._bootstrap()
        d = self.n_in
        dist = np.array(
            [[_subspace_distance(W[:, :k], Vb[:, :k]) for k in range(1, d)] for Vb in V]
        ).reshape(len(V), d - 1)
        low, high = np.quantile(dist, q, axis=0)
        return {"mean": dist.mean(axis=0), "low": low, "high": high}

    @property
    def suggested_dimension(self) -> int:
        """The `k` with the largest ratio `λ_k / λ_{k+1}` (a zero `λ_{k+1}` after a positive
        `λ_k` is an infinite gap); 1 if the spectrum is flat. Eigenvalues below
        `1e-10 λ_1` count as zero: they are round-off of an exactly null direction."""
        lam = self.eigenvalues
        if lam[0] <= 0:
            return 1
        lam = np.where(lam > 1e-10 * lam[0], lam, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(lam[1:] > 0, lam[:-1] / np.where(lam[1:] > 0, lam[1:], 1), np.inf)
        ratio = np.where(lam[:-1] > 0, ratio, 0.0)
        return int(np.argmax(ratio)) + 1 if ratio.size else 1

    def activity_scores(self, k: int | None = None) -> Float[np.ndarray, " in"]:
        """Activity scores `α_i = Σ_{j ≤ k} λ_j w_{ij}²` (Constantine & Diaz 2017): how
        much input `i` moves `f` within the `k`-dimensional active subspace (with
        `k = n_in`, `α_i = C_ii = E[(∂f/∂x_i)²]`, the DGSM).

        **Arguments:**

        - `k`: subspace dimension (default: `suggested_dimension`).
        """
        k = self.suggested_dimension if k is None else k
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= self.n_in:
            raise ValueError(f"`k` must be an int in [1, {self.n_in}], got {k!r}.")
        lam, W = _eigh_desc(self.matrix)
        return (W[:, :k] ** 2) @ np.maximum(lam[:k], 0.0)

    def __repr__(self) -> str:
        return (
            f"ActiveSubspaceResult(n_in={self.n_in}, n={self.n}, n_omitted={self.n_omitted}, "
            f"target={self.target!r}, n_bootstrap={self.n_bootstrap}, mode={self.mode!r})"
        )

    def plot(self, n_directions: int = 2, level: float = 0.95):
        """A matplotlib figure: the spectrum (log scale, bootstrap intervals) and the
        first `n_directions` eigenvectors as bars over the features.

        **Returns:**

        A `jacsens.plot.Figure` (a `matplotlib.figure.Figure` that Jupyter shows, not
        registered with pyplot). Needs the `plot` extra (matplotlib).
        """
        from ..plot import _new_figure  # imported here: matplotlib is optional

        n_directions = check_positive_int(n_directions, "n_directions", allow_none=False)
        n_directions = min(n_directions, self.n_in)
        fig = _new_figure((4 + 3.2 * n_directions, 3.4))
        axes = fig.subplots(1, 1 + n_directions, squeeze=False)
        axes = axes[0]
        lam = self.eigenvalues
        k = np.arange(1, self.n_in + 1)
        ax = axes[0]
        positive = lam > 0  # a log axis: zero eigenvalues (exact null directions) are left out
        yerr = None
        if self.n_bootstrap > 1:
            lo, hi = self.eigenvalues_ci(level)
            yerr = np.maximum(np.stack([lam - lo, hi - lam])[:, positive], 0.0)
        ax.errorbar(
            k[positive],
            lam[positive],
            yerr=yerr,
            fmt="o-",
            color="C0",
            capsize=3,
            label=f"eigenvalue ({level:.0%} bootstrap)" if yerr is not None else "eigenvalue",
        )
        ax.set_xlabel("index k")
        ax.set_ylabel("λ_k")
        ax.set_title(f"Spectrum ({self.target})")
        ax.legend(fontsize="small")
        W = self.eigenvectors
        for j in range(n_directions):
            ax = axes[1 + j]
            ax.bar(np.arange(self.n_in), W[:, j], color="C1")
            ax.axhline(0.0, color="k", lw=0.5)
            ax.set_xticks(np.arange(self.n_in))
            ax.set_xticklabels(self.feature_names, rotation=90, fontsize="small")
            ax.set_title(f"direction {j + 1}")
        return fig


def _quantiles(level: Any) -> tuple[float, float]:
    if isinstance(level, bool) or not isinstance(level, float | int) or not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
    return (0.5 - level / 2, 0.5 + level / 2)


def active_subspace(
    model: Callable[[Array], Array],
    data: Any,
    *,
    output: int | str | None = None,
    metric: Float[Array, " out"] | Float[Array, "out out"] | None = None,
    n_bootstrap: int = 100,
    key: PRNGKeyArray | None = None,
    chunk_size: int | Literal["auto"] = "auto",
    mode: str | AbstractJacobianMode = "auto",
    feature_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    devices: Sequence[jax.Device] | Mesh | None = None,
    progress: ProgressChoice = "auto",
    nan_policy: Literal["raise", "omit"] = "raise",
) -> ActiveSubspaceResult:
    """The active subspace of a model over an input distribution, streamed.

    Estimates `C = E[J(x)ᵀ M J(x)]` (`J = ∂y/∂x` flattened to `(n_out, n_in)`) by the mean
    over `data`, chunk by chunk through the Jacobian engine, sharded over `devices` like
    `jacsens.sensitivity`, accumulated in float64 on the host; its eigen-decomposition
    gives the active directions. Bootstrap intervals come from a Poisson bootstrap over
    rows with weights drawn per row (independent of chunking and devices; see the module
    docstring).

    **Arguments:**

    - `model`: callable on one sample `(*in_shape,) -> (*out_shape)`.
    - `data`: as for `jacsens.sensitivity` (arrays, array-likes, iterators of batches,
        samplers including `jacsens.from_problem` and the quasi-random `jacsens.sobol`).
    - `output`: one output (index or name): `C = E[∇y_o ∇y_oᵀ]`.
    - `metric`: a weight per output `(n_out,)` or a symmetric positive semi-definite
        `(n_out, n_out)` matrix `M`; default (and with neither argument) the identity,
        which sums the outputs' matrices. Only one of `output` and `metric`.
    - `n_bootstrap`: Poisson-bootstrap replicates (0 for none); each costs one more
        `n_in × n_in` accumulator.
    - `key`: PRNG key of the bootstrap weights (default `jax.random.key(0)`).
    - `chunk_size`, `mode`, `feature_names`, `output_names`, `devices`, `progress`,
        `nan_policy`: as for `jacsens.sensitivity`. (No `checkpoint`: runs are not
        resumable yet.)

    **Returns:**

    An `ActiveSubspaceResult`.

    **Raises:**

    `ValueError` naming the argument for a bad `output`, `metric`, `n_bootstrap`,
    `chunk_size`, `mode`, `nan_policy` or `devices`, and as `sensitivity` for bad data.
    """
    chunk_size = check_chunk_size(chunk_size)
    if (
        isinstance(n_bootstrap, bool)
        or not isinstance(n_bootstrap, int | np.integer)
        or (n_bootstrap < 0)
    ):
        raise ValueError(f"`n_bootstrap` must be an int >= 0, got {n_bootstrap!r}.")
    n_bootstrap = int(n_bootstrap)
    get_mode(mode)
    check_choice(nan_policy, "nan_policy", ("raise", "omit"))
    mesh = resolve_mesh(devices)
    key = jax.random.key(0) if key is None else _as_key(key)

    source, plan, names, out_names = open_data(model, data, mode, feature_names, output_names)
    M = _metric(metric, output, plan.n_out, out_names)
    if output is not None:
        target = f"output {out_names[int(np.argmax(np.diag(M)))]!r}"
    elif metric is None:
        target = "sum over outputs" if plan.n_out > 1 else f"output {out_names[0]!r}"
    else:
        target = "metric-weighted outputs"

    d = plan.n_in
    state = {
        "total": np.zeros((d, d)),
        "count": np.zeros(()),
        **(
            {"boot_total": np.zeros((n_bootstrap, d, d)), "boot_count": np.zeros(n_bootstrap)}
            if n_bootstrap
            else {}
        ),
    }
    reduce = ActiveReduction(jnp.asarray(M, reduction_dtype(plan.dtype)), key, n_bootstrap)

    def make_result(p: Progress) -> ActiveSubspaceResult:
        s = p.state
        return ActiveSubspaceResult(
            s["total"],
            int(round(float(s["count"]))),
            s.get("boot_total", np.zeros((0, d, d))),
            s.get("boot_count", np.zeros(0)),
            p.n_omitted,
            names,
            target,
            run.mode.name,
        )

    run = Run(
        model=model,
        source=source,
        mode=get_mode(mode),
        reduce=reduce,
        nan_policy=nan_policy,
        mesh=mesh,
        make_result=make_result,
        progress=Progress(state, 0, 0),
    )
    execute(run, plan, chunk_size, progress, "active subspace")
    result = run.result()
    if result.count == 0:
        raise ValueError(
            f"No usable samples in `data`: all {run.progress.n_omitted} rows had non-finite values."
        )
    return result
