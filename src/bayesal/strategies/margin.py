"""Margin sampling: the candidates with the smallest gap between the two most probable classes."""

from __future__ import annotations

import torch

from bayesal.laplace import Predictive, mean_field_scaled

from ._common import top_two
from .registration import register_strategy
from .score import PredictiveScoreStrategy

__all__ = ["MarginSampling"]


@register_strategy("margin", sequential_score=True)
class MarginSampling(PredictiveScoreStrategy):
    """Utility ``1 − (p_(1) − p_(2))`` of the (mean-field by default) predictive, in ``[0, 1]``."""

    name = "margin"
    #: |Δ(p₍₁₎ − p₍₂₎)| ≤ 2‖Δp‖_∞ ≤ ‖Δp‖₁ (Δp sums to zero)
    probs_lipschitz = 1.0

    def score_probs(self, probs: torch.Tensor) -> torch.Tensor:
        first, second = top_two(probs)
        return 1.0 - (first - second)

    def score_logits(self, posterior, logits, variance, generator):  # noqa: D102 (see base)
        if self.predictive is not Predictive.MEAN_FIELD:
            return super().score_logits(posterior, logits, variance, generator)
        # The mean-field margin without forming p: with w = κz and its two largest entries w₁ ≥ w₂,
        # p₍₁₎ − p₍₂₎ = (1 − e^(w₂ − w₁)) / Σ_c e^(w_c − w₁). One pass over the (C, N) class rows fewer
        # than softmax-then-margin (no division of every probability), which the whole-pool scorings
        # of sequential selection repeat at every pick. Elementwise along class rows, like the written-out
        # softmax of the predictive: the same values whatever the thread count.
        scaled = mean_field_scaled(logits, variance, posterior.lambda_mf, posterior.fitted_temperature)
        first, second = top_two(scaled)
        total = torch.sub(scaled.T, first).exp_().sum(0)
        return torch.sub(second, first).exp_().neg_().add_(1.0).div_(total).neg_().add_(1.0)

    def top_probability_floor(self, scores: torch.Tensor) -> torch.Tensor:
        return 1.0 - scores  # p₍₁₎ ≥ p₍₁₎ − p₍₂₎ = 1 − u
