"""The method: a Gaussian last-layer posterior, its closed-form update, predictives and head training.

Pure tensor code, no I/O. Everything above (strategies, experiments, labeling) talks to it through
:class:`LastLayerLaplace`, its settings :class:`PosteriorOptions` and the functions re-exported here.
"""

from .head import HeadConfig, train_head
from .options import HeadSolver, PriorSelection
from .posterior import LastLayerLaplace
from .settings import PosteriorOptions
from .update import FIDELITY_OPTIONS, PAPER_OPTIONS

__all__ = [
    "LastLayerLaplace", "PosteriorOptions", "HeadConfig", "HeadSolver", "PriorSelection", "train_head",
    "FIDELITY_OPTIONS", "PAPER_OPTIONS",
]
