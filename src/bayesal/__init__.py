"""bayesal: deep active learning with fast Bayesian updates of a last-layer Laplace approximation."""

from .laplace import HeadConfig, LastLayerLaplace, PosteriorOptions, train_head

__all__ = ["LastLayerLaplace", "PosteriorOptions", "HeadConfig", "train_head", "__version__"]
__version__ = "0.1.0"
