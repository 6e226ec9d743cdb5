"""The method: a Gaussian last-layer posterior, its closed-form update, predictives and head training.

Pure tensor code, no I/O. Everything above (strategies, experiments, labeling) talks to it through
:class:`LastLayerLaplace` and the functions re-exported here. ``LastLayerLaplace(hessian=...)`` builds the
subclass of a covariance structure (:class:`SharedLaplace`, :class:`FullLaplace`, or one registered
with :func:`register_structure`).
"""

from .full import FullLaplace
from .head import HeadConfig, train_head
from .posterior import LastLayerLaplace
from .shared import SharedLaplace
from .structures import register_structure, structure_names
from .update import FIDELITY_OPTIONS, PAPER_OPTIONS

__all__ = [
    "LastLayerLaplace",
    "SharedLaplace",
    "FullLaplace",
    "register_structure",
    "structure_names",
    "HeadConfig",
    "train_head",
    "FIDELITY_OPTIONS",
    "PAPER_OPTIONS",
]
