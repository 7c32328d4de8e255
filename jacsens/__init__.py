"""jacsens: per-sample Jacobians, weight gradients and sensitivity analysis in JAX."""

import importlib.metadata

from . import backprop as backprop
from ._chain import (
    ChainError as ChainError,
    JacobianCost as JacobianCost,
    read_chain as read_chain,
)
from ._check import (
    Comparison as Comparison,
    CrosscheckError as CrosscheckError,
    CrosscheckReport as CrosscheckReport,
    crosscheck as crosscheck,
    finite_difference_jacobian as finite_difference_jacobian,
)
from ._grads import (
    per_sample_grad_norms as per_sample_grad_norms,
    per_sample_grads as per_sample_grads,
    weight_grad as weight_grad,
)
from ._jacobian import (
    explain as explain,
    input_hessian as input_hessian,
    input_jacobian as input_jacobian,
    jacobian_cost as jacobian_cost,
    jvp as jvp,
    vjp as vjp,
)
from ._losses import LOSSES as LOSSES
from ._models import ACTIVATIONS as ACTIVATIONS, MLP as MLP, Activation as Activation

try:
    __version__ = importlib.metadata.version("jacsens")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
