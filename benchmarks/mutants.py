"""Mutation campaign: plant realistic bugs one at a time and check that the suite fails.

Each mutant is `(file, old snippet, new snippet, description, tests)`: the snippet must
occur exactly once in the file. The campaign runs in a separate git worktree (never in the
tree other people work in), so nothing outside it is disturbed:

    git -C /work/main worktree add /tmp/mut HEAD
    python benchmarks/mutants.py --root /tmp/mut --label after
    python benchmarks/mutants.py --root /tmp/mut --only fit-shuffle-epoch0,stats-n-not-n-1

For every mutant the file is patched, the mutant's test files are run there with
`pytest -x` (`PYTHONPATH=<root>`, so the mutated package is the one imported), the
outcome is recorded (`caught` with the first failing test, or `missed`) and the file is
restored. A mutant whose tests fail to collect or error also counts as caught: the suite
goes red. The results go to `benchmarks/results/mutation-<date>.json` (one entry per
`--label`, so a "before" and an "after" run sit side by side).

`tests` lists the test files (or node ids) that exercise the mutated code; the suite as a
whole may catch more, so a `missed` here is checked against a wider set before a test is
written for it. Not collected by pytest (a plain script).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    old: str
    new: str
    description: str
    tests: tuple[str, ...]


def M(id, file, old, new, description, *tests) -> Mutant:
    return Mutant(id, file, old, new, description, tuple(tests))


K = "jacsens/_kernel.py"
CH = "jacsens/_program/_chain.py"
OR = "jacsens/_order.py"
CO = "jacsens/_cost.py"
MO = "jacsens/_modes.py"
PL = "jacsens/_plan.py"
TR = "jacsens/_program/_trace.py"
SG = "jacsens/_program/_segments.py"
ST = "jacsens/_stats.py"
RU = "jacsens/_sensitivity/_run.py"
RE = "jacsens/_sensitivity/_result.py"
CK = "jacsens/_sensitivity/_checkpoint.py"
SO = "jacsens/_sensitivity/_sources.py"
AT = "jacsens/attribution.py"
GR = "jacsens/_grads.py"
LO = "jacsens/_losses.py"
FI = "jacsens/_fit.py"
IO = "jacsens/_io.py"
DS = "jacsens/datasets.py"
BA = "jacsens/_batching.py"

T_CHAIN = "tests/test_chain.py"
T_BP = "tests/test_backprop.py"
T_JAC = "tests/test_jacobian.py"
T_PLAN = "tests/test_plan.py"
T_COST = "tests/test_cost_model.py"
T_SEG = "tests/test_segments.py"
T_STATS = "tests/test_stats.py"
T_SENS = "tests/test_sensitivity.py"
T_ATTR = "tests/test_attribution.py"
T_GR = "tests/test_grads.py"
T_LOSS = "tests/test_losses.py"
T_FIT = "tests/test_fit.py"
T_IO = "tests/test_io.py"
T_DS = "tests/test_datasets.py"
T_MEM = "tests/test_memory.py"
# files of tests added for mutants the first run of this campaign missed
TM_ENGINE = "tests/test_mutants_engine.py"
TM_SENS = "tests/test_mutants_sensitivity.py"
TM_LOSS = "tests/test_mutants_losses.py"
TM_FIT = "tests/test_mutants_fit.py"
TM_DATA = "tests/test_mutants_data.py"

MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------ the hand-written kernel
    M(
        "kernel-output-diag-dropped",
        K,
        "G = cache.derivs[-1][:, :, None] * linears[-1].weight",
        "G = linears[-1].weight[None] * jnp.ones_like(cache.derivs[-1])[:, :, None]",
        "backprop Jacobian ignores the final activation's derivative",
        TM_ENGINE,
        T_BP,
        T_JAC,
    ),
    M(
        "kernel-input-diag-dropped",
        K,
        "return G * cache.input_deriv[:, None, :]",
        "return G",
        "backprop Jacobian ignores activations applied to the input itself",
        TM_ENGINE,
        T_BP,
        T_CHAIN,
        T_JAC,
    ),
    M(
        "kernel-mean-over-n-1",
        K,
        'scale = 1.0 / max(B, 1) if reduction == "mean" else 1.0',
        'scale = 1.0 / max(B - 1, 1) if reduction == "mean" else 1.0',
        "weight_grads mean divides by B - 1",
        T_BP,
    ),
    M(
        "kernel-delta-no-deriv",
        K,
        "delta = (delta @ linears[idx].weight) * cache.derivs[idx - 1]",
        "delta = delta @ linears[idx].weight",
        "delta recursion drops the hidden activations' derivatives",
        T_BP,
    ),
    M(
        "kernel-per-sample-grad-transposed",
        K,
        'gw = jnp.einsum("bi,bj->bij", delta, a_prev)',
        'gw = jnp.einsum("bi,bj->bji", delta, a_prev)',
        "per-sample weight gradient transposed (silently reshaped back to (out, in))",
        T_BP,
    ),
    M(
        "backprop-squared-error-sign",
        LO,
        "return y_pred - y_true\n",
        "return y_true - y_pred\n",
        "squared_error_grad with the wrong sign",
        T_BP,
    ),
    # ------------------------------------------------------------ the chain view
    M(
        "chain-consecutive-activations-overwrite",
        CH,
        "g = g * act.deriv(z)",
        "g = act.deriv(z)",
        "two activations in a row: the second derivative overwrites the first (missed in "
        "the first campaign)",
        TM_ENGINE,
        T_CHAIN,
        T_BP,
        T_JAC,
    ),
    M(
        "chain-deriv-after-activation",
        CH,
        "        g = g * act.deriv(z)\n        z = act.fn(z)\n",
        "        z = act.fn(z)\n        g = g * act.deriv(z)\n",
        "activation derivative evaluated at the activation's output, not its input",
        T_CHAIN,
        T_BP,
        T_JAC,
    ),
    M(
        "chain-bias-dropped",
        CH,
        "        if lin.bias is not None:\n            z = z + lin.bias\n",
        "",
        "the chain forward pass drops the bias",
        T_CHAIN,
        T_BP,
        T_JAC,
    ),
    M(
        "chain-product-input-diag-dropped",
        OR,
        "    if diags[0] is not None:\n        J = J * diags[0][:, None, :]\n",
        "",
        "chain mode ignores activations on the input",
        TM_ENGINE,
        T_CHAIN,
        T_JAC,
    ),
    M(
        "chain-product-output-diag-wrong-side",
        OR,
        "J = diags[n][:, :, None] * J",
        "J = J * diags[n][:, None, :]",
        "output-side diagonal applied on the input side (right) of the chain product",
        TM_ENGINE,
        T_CHAIN,
        T_JAC,
    ),
    M(
        "order-dp-off-by-one",
        OR,
        "c = best[(i, k)] + best[(k + 1, j)] + dims[j] * dims[k] * dims[i - 1]",
        "c = best[(i, k)] + best[(k + 1, j)] + dims[j] * dims[k] * dims[i]",
        "matrix-chain DP multiplies by the wrong width (off by one)",
        T_CHAIN,
        T_COST,
    ),
    M(
        "order-diag-max-not-min",
        OR,
        "c += min(dims[j], dims[i - 1]) * dims[k]",
        "c += max(dims[j], dims[i - 1]) * dims[k]",
        "diagonal scaling costed on the larger neighbour",
        T_CHAIN,
        T_COST,
    ),
    # ------------------------------------------------------------ cost model and modes
    M(
        "cost-ignores-fwd-efficiency",
        CO,
        "return flops, nbytes, seconds / device.fwd_efficiency",
        "return flops, nbytes, seconds",
        "fwd estimate ignores fwd_efficiency",
        TM_ENGINE,
        T_COST,
        T_CHAIN,
    ),
    M(
        "cost-rev-fwd-swapped",
        CO,
        "_sweep(t, d[::-1], f[::-1], B)",
        "_sweep(t, d, f, B)",
        "rev estimate sweeps from the input side (rev and fwd swapped)",
        T_COST,
        T_CHAIN,
    ),
    M(
        "cost-matmul-flops-halved",
        CO,
        "2.0 * out * m * k * n,",
        "out * m * k * n,",
        "matmul FLOPs counted once per multiply-add instead of twice",
        T_COST,
        T_CHAIN,
    ),
    M(
        "auto-no-margin",
        MO,
        "if best is None or MARGIN * est[2] < best[1]:",
        "if best is None or est[2] < best[1]:",
        "auto switches modes for any estimated gain (no 10% margin)",
        T_COST,
        T_CHAIN,
        T_PLAN,
    ),
    M(
        "auto-fallback-rev-fwd-swapped",
        MO,
        "return Rev() if n_out <= n_in else Fwd()",
        "return Fwd() if n_out <= n_in else Rev()",
        "without any estimate auto picks fwd for narrow outputs and rev for wide ones",
        T_PLAN,
        T_JAC,
        T_COST,
    ),
    M(
        "plan-dtype-rule-dropped",
        PL,
        "dtype = promote_float(x.dtype, *_param_dtypes(model))",
        "dtype = jnp.dtype(x.dtype)",
        "the model is applied in the input's dtype (float64 model on float32 data)",
        T_PLAN,
        T_JAC,
    ),
    M(
        "plan-cache-key-no-dtype",
        PL,
        "akey = (skey, x.shape[1:], x.dtype, flags)",
        "akey = (skey, x.shape[1:], flags)",
        "the analysis cache ignores the input dtype",
        T_PLAN,
        T_JAC,
    ),
    M(
        "plan-peak-bytes-seeds-swapped",
        PL,
        'seeds = self.n_in if self.mode.name == "fwd" else self.n_out',
        'seeds = self.n_out if self.mode.name == "fwd" else self.n_in',
        "peak memory counts reverse seeds for fwd and forward seeds for rev",
        T_PLAN,
        T_MEM,
    ),
    M(
        "plan-chunk-size-ignored",
        PL,
        "batch = x.shape[0] if chunk_size is None else min(x.shape[0], chunk_size)",
        "batch = x.shape[0]",
        "the plan chooses the mode for the whole batch, not the chunk it runs in",
        T_PLAN,
        T_JAC,
        T_COST,
    ),
    # ------------------------------------------------------------ program trace / segments
    M(
        "trace-live-range-off-by-one",
        TR,
        "diff[u + 1] -= _size(v.aval)",
        "diff[u] -= _size(v.aval)",
        "live width drops a value at its last use instead of after it",
        T_SEG,
    ),
    M(
        "trace-candidates-plateau-end",
        TR,
        "if w < limit and widths[p - 1] > w and widths[q + 1] > w:",
        "if w < limit and widths[p - 1] > w and widths[p + 1] > w:",
        "candidate cuts: a plateau compared against its own second position",
        T_SEG,
    ),
    M(
        "trace-dot-flops-halved",
        TR,
        "return 2.0 * out_size * math.prod(lhs.shape[d] for d in lc)",
        "return out_size * math.prod(lhs.shape[d] for d in lc)",
        "dot_general FLOPs counted once per multiply-add",
        T_SEG,
        T_COST,
    ),
    M(
        "trace-product-always-affine",
        TR,
        "        return len(dep_in) == 1\n",
        "        return True\n",
        "x * x (both operands input-dependent) marked affine",
        T_SEG,
    ),
    M(
        "segments-diag-wrong-side",
        SG,
        'return y, a, L[:, None] * R, "dense"',
        'return y, a, L[None, :] * R, "dense"',
        "a diagonal left factor scales the columns of the right factor instead of its rows",
        T_SEG,
    ),
    M(
        "segments-prune-cut-index-off-by-one",
        SG,
        "cur = [p for idx, p in enumerate(cur) if idx + 1 in used]",
        "cur = [p for idx, p in enumerate(cur) if idx in used]",
        "pruning keeps the cut before the one the optimal plan uses",
        T_SEG,
    ),
    M(
        "segments-sweep-ignores-fwd-efficiency",
        SG,
        "slow = self.device.fwd_efficiency if forward else 1.0",
        "slow = 1.0",
        "segment cost model ignores fwd_efficiency",
        T_SEG,
        T_COST,
    ),
    M(
        "segments-dp-keeps-worse",
        SG,
        "cost.seconds < table[kind][0].seconds):",
        "cost.seconds > table[kind][0].seconds):",
        "the bracketing DP keeps the more expensive plan",
        T_SEG,
    ),
    # ------------------------------------------------------------ streaming statistics
    M(
        "stats-var-n-not-n-1",
        ST,
        "return xp.where(n > 1, m2 / xp.maximum(n - 1, 1), xp.nan)",
        "return xp.where(n > 1, m2 / xp.maximum(n, 1), xp.nan)",
        "variance divides by n instead of n - 1",
        T_STATS,
    ),
    M(
        "stats-std-se-normal-approx",
        ST,
        "var_s2 = xp.maximum(mu4 - var * var, 0) / n",
        "var_s2 = 2 * var * var / n",
        "std_se ignores the fourth moment (normal approximation)",
        T_STATS,
    ),
    M(
        "stats-merge-m2-weight",
        ST,
        "return mean_a + delta * wb, m2_a + m2_b + delta * delta * na * wb",
        "return mean_a + delta * wb, m2_a + m2_b + delta * delta * na * wa",
        "Chan's merge of second moments uses the wrong weight",
        T_STATS,
    ),
    M(
        "stats-merge-m4-drops-m3-term",
        ST,
        "        + 4 * delta * (wa * b_s.u_m3 - wb * a_s.u_m3)\n",
        "",
        "Pébay's merge of fourth moments drops the third-moment term",
        T_STATS,
    ),
    M(
        "stats-merge-m3-sign",
        ST,
        "+ 3 * delta * (wa * b_s.u_m2 - wb * a_s.u_m2)",
        "+ 3 * delta * (wb * b_s.u_m2 - wa * a_s.u_m2)",
        "third-moment merge with the weights swapped",
        T_STATS,
    ),
    M(
        "stats-count-ignores-mask",
        ST,
        "n = jnp.sum(mask, dtype=dtype)",
        "n = jnp.asarray(B, dtype)",
        "the count includes masked rows",
        T_STATS,
    ),
    M(
        "stats-missing-abs",
        ST,
        "    a = jnp.abs(u)\n",
        "    a = u\n",
        "mean |g| computed without the abs",
        T_STATS,
    ),
    M(
        "stats-max-summed",
        ST,
        "return (*_add_all(x[:-1], y[:-1]), jnp.maximum(x[-1], y[-1]))",
        "return _add_all(x, y)",
        "max |g| reduced with a sum",
        T_STATS,
    ),
    M(
        "stats-merge-min-exponent",
        ST,
        "exponent = xp.maximum(a.exponent, b.exponent)",
        "exponent = xp.minimum(a.exponent, b.exponent)",
        "merge aligns both states to the smaller scale (overflow on large ones)",
        T_STATS,
    ),
    M(
        "stats-dgsm-se-wrong-power",
        ST,
        "return self._unscale(self._u_se(self.u_sq_m2), 2)",
        "return self._unscale(self._u_se(self.u_sq_m2), 1)",
        "DGSM standard error unscaled with the power of g, not g²",
        T_STATS,
    ),
    # ------------------------------------------------------------ sensitivity
    M(
        "sens-padding-row-counted",
        RU,
        "m = np.arange(chunk) < n_valid",
        "m = np.arange(chunk) <= n_valid",
        "the first padding row of a partial chunk is counted",
        T_SENS + "::test_chunked_matches_one_pass_for_every_data_kind",
        T_SENS + "::test_linear_model_closed_form",
        T_SENS + "::test_scalar_input_model",
    ),
    M(
        "sens-nan-derivatives-kept",
        RU,
        "ok = mask & x_ok & d_ok",
        "ok = mask & x_ok",
        "rows with non-finite derivatives are not left out",
        T_SENS + "::test_nan_policy",
        T_SENS + "::test_non_finite_jacobian_from_finite_inputs_names_the_sample",
    ),
    M(
        "sens-resume-one-chunk-back",
        RU,
        "state = Progress((r.jac, r.hess, r.replicates), ck.rows_done, r.n_omitted)",
        "state = Progress((r.jac, r.hess, r.replicates), max(ck.rows_done - ck.chunk_size, 0), "
        "r.n_omitted)",
        "a resumed run starts one chunk before where the checkpoint stopped",
        T_SENS + "::test_interrupted_run_resumes_to_same_result",
        T_SENS + "::test_checkpoint_auto_chunk_size_and_mode_resume_bit_for_bit",
        "tests/test_kill.py",
    ),
    M(
        "sens-fingerprint-first-1024-rows",
        SO,
        "h.update(np.ascontiguousarray(to_host(X[s : s + step])).tobytes())",
        "h.update(np.ascontiguousarray(to_host(X[s : s + min(step, 1024)])).tobytes())",
        "the data fingerprint hashes only the first 1024 rows (missed in the first campaign)",
        TM_SENS,
        T_SENS + "::test_checkpoint_rejects_other_model_or_data",
        T_SENS + "::test_fingerprint_sees_a_late_row_of_a_large_array",
    ),
    M(
        "sens-model-fingerprint-shapes-only",
        CK,
        "            h.update(a.tobytes())\n",
        "",
        "the model fingerprint hashes shapes and dtypes but not the weights",
        T_SENS + "::test_checkpoint_rejects_other_model_or_data",
    ),
    M(
        "sens-array-read-drops-last-row",
        SO,
        "        n_valid = max(0, min(size, self.n - start))\n        if isinstance(self.X",
        "        n_valid = max(0, min(size, self.n - start - 1))\n        if isinstance(self.X",
        "an array source reads one row fewer at every block (off by one)",
        T_SENS + "::test_linear_model_closed_form",
        T_SENS + "::test_chunked_matches_one_pass_for_every_data_kind",
    ),
    M(
        "sens-merge-drops-omitted",
        RE,
        "self.n_omitted + other.n_omitted,",
        "self.n_omitted,",
        "merging two results drops the other's omitted-row count",
        TM_SENS,
        T_SENS + "::test_merge_two_results_equals_one_run",
    ),
    M(
        "sens-sobol-bound-pi-not-squared",
        RE,
        "(math.pi**2 * var[:, None])",
        "(math.pi * var[:, None])",
        "DGSM Sobol bound with pi instead of pi²",
        T_SENS + "::test_sobol_bound_closed_form",
    ),
    # ------------------------------------------------------------ attribution
    M(
        "ig-riemann-right-is-left",
        AT,
        '"riemann_right": 1.0',
        '"riemann_right": 0.0',
        "riemann_right evaluates at the left ends (missed in the first campaign)",
        T_ATTR,
    ),
    M(
        "ig-trapezoid-ends-not-halved",
        AT,
        "        w[[0, -1]] /= 2\n",
        "",
        "trapezoid rule without the half weights at the ends",
        T_ATTR,
    ),
    M(
        "ig-gauss-weights-not-halved",
        AT,
        "return (x + 1) / 2, w / 2",
        "return (x + 1) / 2, w",
        "Gauss-Legendre weights not mapped from [-1, 1] to [0, 1]",
        T_ATTR,
    ),
    M(
        "ig-delta-sign",
        AT,
        "delta = jnp.sum(attr) - (f(x, t) - f(b, t))",
        "delta = jnp.sum(attr) - (f(b, t) - f(x, t))",
        "completeness error against f(x') - f(x)",
        T_ATTR,
    ),
    M(
        "smoothgrad-same-noise-every-row",
        AT,
        "keys = jax.random.split(key, X.shape[0])",
        "keys = jnp.broadcast_to(key, (X.shape[0],))",
        "SmoothGrad draws the same noise for every row (missed in the first campaign)",
        T_ATTR,
    ),
    M(
        "smoothgrad-squared-is-abs",
        AT,
        "return jnp.mean(g * g if squared else g, axis=0)",
        "return jnp.mean(jnp.abs(g) if squared else g, axis=0)",
        "SmoothGrad-Squared averages |g| instead of g²",
        T_ATTR,
    ),
    M(
        "saliency-missing-abs",
        AT,
        "return jnp.abs(g) if abs else g",
        "return g",
        "saliency ignores abs=True",
        T_ATTR,
    ),
    M(
        "attr-target-range-inclusive",
        AT,
        "scale = jnp.where((t >= 0) & (t < n), 1, jnp.nan).astype(y.dtype)",
        "scale = jnp.where((t >= 0) & (t <= n), 1, jnp.nan).astype(y.dtype)",
        "a traced target equal to n_out is clamped to the last output instead of NaN",
        T_ATTR,
    ),
    # ------------------------------------------------------------ weight gradients
    M(
        "ghost-norm-missing-bias-plus-one",
        GR,
        "        if step.bias is not None:\n            a_sq = a_sq + 1\n",
        "",
        "ghost norms forget the bias term ‖δ‖² (the + 1)",
        T_GR,
    ),
    M(
        "weight-grad-sum-not-mean",
        GR,
        "return jnp.mean(jax.vmap(lambda x, y: _sample_loss(m, x, y, loss))(X, Y))",
        "return jnp.sum(jax.vmap(lambda x, y: _sample_loss(m, x, y, loss))(X, Y))",
        "weight_grad of the summed loss instead of the mean",
        T_GR,
    ),
    M(
        "materialised-norms-squared",
        GR,
        "        return jnp.sqrt(\n            sum(",
        "        return (\n            sum(",
        "materialised per-sample norms returned squared",
        T_GR,
    ),
    M(
        "grads-dtype-rule-dropped",
        GR,
        "    if X.dtype != plan.dtype:  # the package's dtype rule: at the model's precision\n"
        "        X = X.astype(plan.dtype)\n",
        "",
        "per-sample gradients of a float64 model on float32 inputs computed in float32",
        T_GR,
    ),
    # ------------------------------------------------------------ losses
    M(
        "loss-bce-sign",
        LO,
        "return jnp.sum(jax.nn.softplus(logit) - y_true * logit)",
        "return jnp.sum(jax.nn.softplus(-logit) - y_true * logit)",
        "binary cross-entropy with softplus(-logit)",
        TM_LOSS,
        T_LOSS,
        T_GR,
    ),
    M(
        "loss-callable-mean-not-sum",
        LO,
        "return jnp.sum(self.loss(y_pred, y_true))",
        "return jnp.mean(self.loss(y_pred, y_true))",
        "an elementwise user loss is averaged instead of summed",
        T_LOSS,
        T_GR,
    ),
    M(
        "loss-label-range-check-off-by-one",
        LO,
        "if labels.size and (labels.min() < 0 or labels.max() >= n):",
        "if labels.size and (labels.min() < 0 or labels.max() > n):",
        "a class label equal to the number of classes passes the check",
        T_LOSS,
    ),
    # ------------------------------------------------------------ fit
    M(
        "fit-shuffle-epoch0",
        FI,
        "perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)",
        "perm = jax.random.permutation(jax.random.fold_in(key, 0), n)",
        "every epoch reuses the epoch-0 shuffle (missed in the first campaign)",
        T_FIT,
    ),
    M(
        "fit-partial-batch-full-divisor",
        FI,
        "return jnp.sum(jnp.where(weight > 0, per_sample, 0)) / jnp.sum(weight)",
        "return jnp.sum(jnp.where(weight > 0, per_sample, 0)) / weight.shape[0]",
        "the padded last batch's loss divided by the full batch size",
        T_FIT,
    ),
    M(
        "fit-y-nan-check-removed",
        FI,
        '    _check_finite(Y, "Y")\n',
        "",
        "NaN targets are not refused",
        T_FIT,
    ),
    M(
        "fit-steps-after-bad-applied",
        FI,
        "take = finite & (bad_step < 0)",
        "take = finite",
        "finite steps after a refused one are still applied",
        TM_FIT,
        T_FIT,
    ),
    # ------------------------------------------------------------ io, datasets, batching
    M(
        "io-leaf-bytes-ignore-itemsize",
        IO,
        "n_bytes += math.prod(shape) * itemsize",
        "n_bytes += math.prod(shape)",
        "header check counts elements, not bytes",
        TM_DATA,
        T_IO,
    ),
    M(
        "io-trailing-data-accepted",
        IO,
        'if header["payload_bytes"] != n_payload:',
        'if header["payload_bytes"] > n_payload:',
        "a payload longer than announced is accepted",
        T_IO,
    ),
    M(
        "datasets-std-ddof1",
        DS,
        "    std = a.std(axis=0)\n    return (a - mean) / std, mean, std",
        "    std = a.std(axis=0, ddof=1)\n    return (a - mean) / std, mean, std",
        "diabetes standardised with the sample (n - 1) std",
        T_DS,
    ),
    M(
        "datasets-split-floor",
        DS,
        "n_test = int(round(n_rows * test_fraction))",
        "n_test = int(n_rows * test_fraction)",
        "test size rounded down instead of to nearest",
        TM_DATA,
        T_DS,
    ),
    M(
        "datasets-split-overlap",
        DS,
        "return np.sort(perm[n_test:]), np.sort(perm[:n_test])",
        "return np.sort(perm[n_test - 1 :]), np.sort(perm[:n_test])",
        "train and test parts share a row (off by one)",
        TM_DATA,
        T_DS,
    ),
    M(
        "batching-remainder-off-by-one",
        BA,
        "rest = fn(*(a[split:] for a in arrays))",
        "rest = fn(*(a[split + 1 :] for a in arrays))",
        "the partial last chunk skips its first row",
        "tests/test_chunking.py",
        T_GR,
    ),
]


def _run_pytest(
    root: Path, tests: tuple[str, ...], timeout: float, deselect: frozenset[str] = frozenset()
) -> tuple[str, str, float]:
    """`(outcome, detail, seconds)` of the tests on the (mutated) tree at `root`."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE"]
    cmd += [f"--deselect={node}" for node in sorted(deselect)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [*cmd, *tests], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "caught", "timeout", time.perf_counter() - t0
    secs = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "missed", "", secs
    # node ids may hold spaces (parametrize ids); the reason follows " - "
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", out, re.M)
    if failed:
        return "caught", failed[0], secs
    if proc.returncode in (1, 2):  # collection/import error: the suite is red too
        tail = out.strip().splitlines()[-1:] or ["?"]
        return "caught", f"pytest exit {proc.returncode}: {tail[0][:200]}", secs
    raise RuntimeError(f"pytest could not run (exit {proc.returncode}):\n{out[-2000:]}")


BROKEN_ON_CLEAN_TREE: set[str] = set()


def _locate(root: Path, m: Mutant) -> Mutant:
    """`m`, with `file` corrected if the code moved to another module of the package (the
    snippet must then occur exactly once in the whole package)."""
    if (root / m.file).read_text().count(m.old) == 1:
        return m
    hits = [
        (f, f.read_text().count(m.old))
        for f in sorted((root / "jacsens").rglob("*.py"))
        if m.old in f.read_text()
    ]
    if len(hits) != 1 or hits[0][1] != 1:
        where = [(str(f.relative_to(root)), n) for f, n in hits]
        raise SystemExit(f"{m.id}: the snippet is not once in {m.file} nor once elsewhere: {where}")
    return dataclasses.replace(m, file=str(hits[0][0].relative_to(root)))


def run(root: Path, mutants: list[Mutant], timeout: float) -> list[dict]:
    check = subprocess.run(
        [sys.executable, "-c", "import jacsens; print(jacsens.__file__)"],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        check=True,
    )
    if not Path(check.stdout.strip()).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"jacsens imports from {check.stdout.strip()}, not from {root}")
    # A test that fails on the unmutated tree (someone's work in progress) catches nothing:
    # each test that "catches" a mutant is run once on the clean tree, and if it fails
    # there too it is deselected and the mutant run again.
    clean_result: dict[str, bool] = {}
    broken = BROKEN_ON_CLEAN_TREE

    def fails_clean(node: str) -> bool:
        if node not in clean_result:
            outcome, _, _ = _run_pytest(root, (node,), timeout)
            clean_result[node] = outcome == "caught"
            if clean_result[node]:
                broken.add(node)
                print(f"    (fails on the clean tree, deselected: {node})", flush=True)
        return clean_result[node]

    results = []
    for i, m in enumerate(mutants):
        m = _locate(root, m)
        path = root / m.file
        original = path.read_text()
        compile(original.replace(m.old, m.new), str(path), "exec")  # no syntax-error mutants
        secs_total = 0.0
        try:
            while True:
                path.write_text(original.replace(m.old, m.new))
                outcome, detail, secs = _run_pytest(root, m.tests, timeout, frozenset(broken))
                secs_total += secs
                path.write_text(original)
                if outcome != "caught" or "::" not in detail or not fails_clean(detail):
                    break
        finally:
            path.write_text(original)
        secs = secs_total
        results.append(
            {
                "id": m.id,
                "file": m.file,
                "description": m.description,
                "tests": list(m.tests),
                "outcome": outcome,
                "caught_by": detail,
                "seconds": round(secs, 1),
            }
        )
        print(f"[{i + 1}/{len(mutants)}] {outcome:6s} {m.id}  {detail}  ({secs:.0f} s)", flush=True)
    if broken:
        print(f"tests failing on the clean tree (deselected): {sorted(broken)}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/mut"), help="git worktree")
    parser.add_argument("--only", default="", help="comma-separated mutant ids")
    parser.add_argument("--label", default="run", help="name of this run in the results file")
    parser.add_argument("--out", type=Path, default=None, help="results file (JSON)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--tests", default="", help="comma-separated test files run instead of each mutant's"
    )
    parser.add_argument(
        "--missed-from",
        default="",
        help="rerun only the mutants missed in this earlier run (label); the ones it caught "
        "are carried over (tests are only ever added, so a caught mutant stays caught)",
    )
    args = parser.parse_args()

    ids = {m.id for m in MUTANTS}
    if len(ids) != len(MUTANTS):
        raise SystemExit("duplicate mutant ids")
    if args.list:
        for m in MUTANTS:
            print(f"{m.id:45s} {m.file:32s} {m.description}")
        return
    chosen = MUTANTS
    if args.only:
        want = args.only.split(",")
        unknown = set(want) - ids
        if unknown:
            raise SystemExit(f"unknown mutant ids {sorted(unknown)}")
        chosen = [m for m in MUTANTS if m.id in want]
    if args.tests:
        chosen = [dataclasses.replace(m, tests=tuple(args.tests.split(","))) for m in chosen]

    today = datetime.date.today().isoformat()
    out = args.out or Path(__file__).parent / "results" / f"mutation-{today}.json"
    doc = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    carried: dict[str, dict] = {}
    if args.missed_from:
        earlier = {r["id"]: r for r in doc["runs"][args.missed_from]["mutants"]}
        carried = {
            k: dict(r, carried_from=args.missed_from)
            for k, r in earlier.items()
            if r["outcome"] == "caught"
        }
        chosen = [m for m in chosen if m.id not in carried]

    root = args.root.resolve()
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    fresh = {r["id"]: r for r in run(root, chosen, args.timeout)}
    results = [carried.get(m.id) or fresh[m.id] for m in MUTANTS if m.id in carried | fresh]
    caught = sum(r["outcome"] == "caught" for r in results)
    print(f"caught {caught}/{len(results)} ({100 * caught / max(len(results), 1):.0f}%)")

    doc["runs"][args.label] = {
        "date": today,
        "commit": commit,
        "caught": caught,
        "total": len(results),
        "failing_on_clean_tree": sorted(BROKEN_ON_CLEAN_TREE),
        "mutants": results,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
