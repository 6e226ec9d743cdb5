"""Least-confidence sampling: the candidates whose most probable class is least probable."""

from __future__ import annotations

import torch

from .registration import register_strategy
from .score import PredictiveScoreStrategy

__all__ = ["LeastConfidence"]


@register_strategy("least_confidence", aliases=("least_confident", "lc"), sequential_score=True)
class LeastConfidence(PredictiveScoreStrategy):
    """Utility ``1 − max_c p_c`` of the (mean-field by default) predictive."""

    name = "least_confidence"
    #: |Δ max_c p_c| ≤ ‖Δp‖_∞ ≤ ½‖Δp‖₁ (Δp sums to zero)
    probs_lipschitz = 0.5

    def score_probs(self, probs: torch.Tensor) -> torch.Tensor:
        return 1.0 - probs.max(dim=1).values

    def top_probability_floor(self, scores: torch.Tensor) -> torch.Tensor:
        return 1.0 - scores  # p₍₁₎ = 1 − u
