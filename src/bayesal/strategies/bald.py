"""BALD: mutual information between the label and the weights, from Laplace logit samples."""

from __future__ import annotations

import torch

from ..posterior import LastLayerLaplace
from ._common import entropy, logit_sample_chunks
from .score import ScoreStrategy

__all__ = ["BALD"]


class BALD(ScoreStrategy):
    """Utility ``H[E_k p_k] − E_k H[p_k]`` with ``p_k = softmax(z_k)``, ``z_k`` the ``n_samples``
    Laplace logit samples (the same draws as :meth:`LastLayerLaplace.sample_logits`, in row blocks)."""

    name = "bald"

    stochastic = True

    def __init__(self, n_samples: int = 5000) -> None:
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
        out = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
        for rows, samples in logit_sample_chunks(logits, variance, self.n_samples, generator):
            p = torch.softmax(samples, dim=-1)  # (K, n, C)
            out[rows] = entropy(p.mean(0)) - entropy(p).mean(0)
        return out.clamp_min(0.0)

    def __repr__(self) -> str:
        return f"BALD(n_samples={self.n_samples})"
