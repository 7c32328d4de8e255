"""jacsens: per-sample Jacobians, weight gradients and sensitivity analysis in JAX."""

import importlib.metadata

from . import attribution as attribution, backprop as backprop, datasets as datasets, plot as plot
from ._cost import JacobianCost as JacobianCost
from ._crosscheck import (
    Comparison as Comparison,
    CrosscheckError as CrosscheckError,
    CrosscheckReport as CrosscheckReport,
    crosscheck as crosscheck,
    finite_difference_jacobian as finite_difference_jacobian,
)
from ._ensemble import Ensemble as Ensemble
from ._fit import History as History, NonFiniteLossError as NonFiniteLossError, fit as fit
from ._grads import (
    per_sample_grad_norms as per_sample_grad_norms,
    per_sample_grads as per_sample_grads,
    weight_grad as weight_grad,
)
from ._io import load as load, save as save
from ._jacobian import (
    explain as explain,
    input_hessian as input_hessian,
    input_jacobian as input_jacobian,
    jacobian_cost as jacobian_cost,
    jvp as jvp,
    vjp as vjp,
)
from ._losses import LOSSES as LOSSES
from ._models import (
    ACTIVATIONS as ACTIVATIONS,
    MLP as MLP,
    Activation as Activation,
    Probabilities as Probabilities,
)
from ._modes import (
    AbstractJacobianMode as AbstractJacobianMode,
    Auto as Auto,
    Backprop as Backprop,
    Chain as Chain,
    Fwd as Fwd,
    Rev as Rev,
    Segments as Segments,
)
from ._program._chain import ChainError as ChainError, read_chain as read_chain
from ._sensitivity import (
    AbstractSampler as AbstractSampler,
    ActiveSubspaceResult as ActiveSubspaceResult,
    EnsembleSensitivity as EnsembleSensitivity,
    NormalisedDGSM as NormalisedDGSM,
    QMCSampler as QMCSampler,
    ReplicateMedian as ReplicateMedian,
    SensitivityResult as SensitivityResult,
    active_subspace as active_subspace,
    from_problem as from_problem,
    halton as halton,
    normal as normal,
    sensitivity as sensitivity,
    sobol as sobol,
    uniform as uniform,
)
from ._stats import (
    StreamingStats as StreamingStats,
    stats_from_batch as stats_from_batch,
    stats_init as stats_init,
    stats_merge as stats_merge,
    stats_to_host as stats_to_host,
    stats_update as stats_update,
)

Sampler = AbstractSampler  # the name samplers had before they became a class hierarchy

try:
    __version__ = importlib.metadata.version("jacsens")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
