"""Global sensitivity analysis: stream inputs through the Jacobian engine into `_stats`.

`sensitivity(model, data)` computes, for every (output, input) pair, statistics of the
derivative `∂y_o/∂x_i` over the input distribution given by `data`: the mean, mean
absolute value, the derivative-based global sensitivity measure (DGSM) `ν = E[(∂y/∂x)²]`,
the standard deviation and the max, each mean with its Monte Carlo standard error.

- `_result.py`: `SensitivityResult`, the accumulators and every statistic derived from
  them; merging; the one checksummed `.npz` file format.
- `_sources.py`: arrays, array-likes, streams of batches and samplers
  (`AbstractSampler` → `Uniform`, `Normal`, `Marginals`); SALib problem dicts
  (`from_problem`).
- `_active.py`: `active_subspace()`, `E[Jᵀ M J]` through the same chunk loop, with a
  Poisson bootstrap over rows.
- `_qmc.py`: randomised quasi-Monte Carlo samplers (`sobol`, `halton`) in independent
  scrambles, whose spread gives the standard errors.
- `_checkpoint.py`: a checkpoint is a result plus progress counters and the run's
  identity, in the same format.
- `_run.py`: `sensitivity()`: plan once, one jitted chunk kernel, accumulate.
"""

from ._active import (
    ActiveSubspaceResult as ActiveSubspaceResult,
    active_subspace as active_subspace,
)
from ._checkpoint import model_fingerprint as model_fingerprint
from ._ensemble import EnsembleSensitivity as EnsembleSensitivity
from ._qmc import (
    QMCSampler as QMCSampler,
    from_problem as from_problem,
    halton as halton,
    sobol as sobol,
)
from ._result import (
    NormalisedDGSM as NormalisedDGSM,
    ReplicateMedian as ReplicateMedian,
    SensitivityResult as SensitivityResult,
)
from ._run import sensitivity as sensitivity
from ._sources import (
    AbstractSampler as AbstractSampler,
    Marginals as Marginals,
    Normal as Normal,
    Uniform as Uniform,
    normal as normal,
    uniform as uniform,
)
