"""The method: a Gaussian last-layer posterior, its closed-form update, predictives and head training.

Pure tensor code, no I/O. Everything above (strategies, experiments, labeling) talks to it through
:class:`LastLayerLaplace`, its settings :class:`PosteriorOptions` and the functions re-exported here.
``LastLayerLaplace(hessian=...)`` builds the subclass of a covariance structure (:class:`SharedLaplace`,
:class:`FullLaplace`, or one registered with :func:`register_structure`).
"""

from .full import FullLaplace
from .head import HeadConfig, train_head
from .options import HeadSolver, PriorSelection, SpreadSelection
from .posterior import LastLayerLaplace
from .settings import PosteriorOptions
from .shared import SharedLaplace
from .structures import register_structure, structure_names
from .update import FIDELITY_OPTIONS, PAPER_OPTIONS

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
    "FIDELITY_OPTIONS",
    "PAPER_OPTIONS",
]
