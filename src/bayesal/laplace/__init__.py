"""The method: a Gaussian last-layer posterior, its closed-form update, predictives and head training.

Pure tensor code, no I/O. Everything above (strategies, experiments, labeling) talks to it through
:class:`LastLayerLaplace` and the functions re-exported here.
"""

from .head import HeadConfig, train_head
from .posterior import LastLayerLaplace
from .update import FIDELITY_OPTIONS, PAPER_OPTIONS

__all__ = ["LastLayerLaplace", "HeadConfig", "train_head", "FIDELITY_OPTIONS", "PAPER_OPTIONS"]
