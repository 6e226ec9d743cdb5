"""Margin sampling: the candidates with the smallest gap between the two most probable classes."""

from __future__ import annotations

import torch

from ._common import top_two
from .score import PredictiveScoreStrategy

__all__ = ["MarginSampling"]


class MarginSampling(PredictiveScoreStrategy):
    """Utility ``1 − (p_(1) − p_(2))`` of the (mean-field by default) predictive, in ``[0, 1]``."""

    name = "margin"
    #: |Δ(p₍₁₎ − p₍₂₎)| ≤ 2‖Δp‖_∞ ≤ ‖Δp‖₁ (Δp sums to zero)
    probs_lipschitz = 1.0

    def score_probs(self, probs: torch.Tensor) -> torch.Tensor:
        first, second = top_two(probs)
        return 1.0 - (first - second)

    def top_probability_floor(self, scores: torch.Tensor) -> torch.Tensor:
        return 1.0 - scores  # p₍₁₎ ≥ p₍₁₎ − p₍₂₎ = 1 − u
