"""Variation ratio: one minus the frequency of the modal class over Laplace logit samples."""

from __future__ import annotations

import torch

from ..posterior import LastLayerLaplace
from ._common import logit_sample_chunks
from .score import ScoreStrategy

__all__ = ["VariationRatio"]


class VariationRatio(ScoreStrategy):
    """Utility ``1 − max_c #{k : argmax z_k = c} / K`` over ``K = n_samples`` logit samples."""

    name = "variation_ratio"

    stochastic = True

    def __init__(self, n_samples: int = 1000) -> None:
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples = int(n_samples)

    def score_logits(
        self,
        posterior: LastLayerLaplace,
        logits: torch.Tensor,
        variance: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        c = logits.shape[1]
        out = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
        for rows, samples in logit_sample_chunks(logits, variance, self.n_samples, generator):
            votes = torch.nn.functional.one_hot(samples.argmax(-1), c).sum(0)  # (n, C)
            out[rows] = 1.0 - votes.max(1).values.to(logits.dtype) / self.n_samples
        return out

    def __repr__(self) -> str:
        return f"VariationRatio(n_samples={self.n_samples})"
