"""Variation ratio: one minus the frequency of the modal class over Laplace logit samples."""

from __future__ import annotations

import torch

from .registration import register_strategy
from .score import SampledScoreStrategy

__all__ = ["VariationRatio"]


@register_strategy("variation_ratio")
class VariationRatio(SampledScoreStrategy):
    """Utility ``1 − max_c #{k : argmax z_k = c} / K`` over ``K = n_samples`` logit samples."""

    name = "variation_ratio"

    def __init__(self, n_samples: int = 1000) -> None:
        super().__init__(n_samples)

    def score_samples(self, samples: torch.Tensor) -> torch.Tensor:  # noqa: D102 (see base)
        votes = torch.nn.functional.one_hot(samples.argmax(-1), samples.shape[-1]).sum(0)  # (n, C)
        return 1.0 - votes.max(1).values.to(samples.dtype) / self.n_samples
