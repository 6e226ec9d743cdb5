"""BALD: mutual information between the label and the weights, from Laplace logit samples."""

from __future__ import annotations

import torch

from ._common import entropy
from .registration import register_strategy
from .score import SampledScoreStrategy

__all__ = ["BALD"]


@register_strategy("bald")
class BALD(SampledScoreStrategy):
    """Utility ``H[E_k p_k] − E_k H[p_k]`` with ``p_k = softmax(z_k)``, ``z_k`` the ``n_samples``
    Laplace logit samples (the same draws as :meth:`LastLayerLaplace.sample_logits`, in row blocks)."""

    name = "bald"

    def __init__(self, n_samples: int = 5000) -> None:
        super().__init__(n_samples)

    def score_samples(self, samples: torch.Tensor) -> torch.Tensor:  # noqa: D102 (see base)
        p = torch.softmax(samples, dim=-1)  # (K, n, C)
        return (entropy(p.mean(0)) - entropy(p).mean(0)).clamp_min(0.0)
