"""Entropy sampling: the candidates whose predictive has the highest entropy."""

from __future__ import annotations

import torch

from ._common import entropy
from .registration import register_strategy
from .score import PredictiveScoreStrategy

__all__ = ["EntropySampling"]


@register_strategy("entropy")
class EntropySampling(PredictiveScoreStrategy):
    """Utility ``H[p(y|x)] = −Σ_c p_c log p_c`` of the (mean-field by default) predictive."""

    name = "entropy"

    def score_probs(self, probs: torch.Tensor) -> torch.Tensor:
        return entropy(probs)
