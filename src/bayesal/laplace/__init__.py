"""The method: a Gaussian last-layer posterior, its closed-form update, predictives and head training.

Pure tensor code, no I/O. Everything above (strategies, experiments, labeling) talks to it through
:class:`LastLayerLaplace`, its settings :class:`PosteriorOptions` and the functions re-exported here.
``LastLayerLaplace(hessian=...)`` builds the subclass of a covariance structure (:class:`SharedLaplace`,
:class:`FullLaplace`, or one registered with :func:`register_structure`).
"""

import importlib
import pkgutil

from .full import FullLaplace
from .head import HeadConfig, train_head
from .linalg import TiledRows, safe_cholesky, spd_inverse, symmetrize
from .loo import LeaveOneOut, LeaveOneOutCache, leave_one_out
from .options import (
    BLOCK_ELEMENTS,
    MAX_DENSE_PARAMETERS,
    Curvature,
    HeadSolver,
    Hessian,
    Option,
    Predictive,
    PriorSelection,
    SpreadSelection,
)
from .posterior import LastLayerLaplace
from .predictive import (
    DEFAULT_LAMBDA_MF,
    logit_sample_blocks,
    mean_field_probs,
    mean_field_scaled,
    predictive_from_logits,
    tempered,
)
from .settings import PosteriorOptions
from .shared import SharedLaplace
from .structures import register_structure, structure_names
from .update import FIDELITY_OPTIONS, PAPER_OPTIONS, batch_update_reference, curvature_weights, fisher_factor
from .updating import DEFAULT_EXACT_UNTIL

__all__ = [
    "LastLayerLaplace",
    "SharedLaplace",
    "FullLaplace",
    "register_structure",
    "structure_names",
    "PosteriorOptions",
    "HeadConfig",
    "HeadSolver",
    "PriorSelection",
    "SpreadSelection",
    "train_head",
    "LeaveOneOut",
    "LeaveOneOutCache",
    "leave_one_out",
    "FIDELITY_OPTIONS",
    "PAPER_OPTIONS",
    "BLOCK_ELEMENTS",
    "MAX_DENSE_PARAMETERS",
    "Curvature",
    "DEFAULT_EXACT_UNTIL",
    "DEFAULT_LAMBDA_MF",
    "Hessian",
    "Option",
    "Predictive",
    "TiledRows",
    "batch_update_reference",
    "curvature_weights",
    "fisher_factor",
    "logit_sample_blocks",
    "mean_field_probs",
    "mean_field_scaled",
    "predictive_from_logits",
    "tempered",
    "safe_cholesky",
    "spd_inverse",
    "symmetrize",
]

# every module of the package is imported: a covariance structure registers itself on import
# (register_structure), so a new structure is one new file
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
