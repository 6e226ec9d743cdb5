"""BADGE: k-means++ seeding in the space of last-layer gradient embeddings."""

from __future__ import annotations

import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import LastLayerLaplace

from ._common import argmax_first, predictive_from_logits, prepare
from ._kmeans import _draw
from .base import LabeledSet, QueryResult, QueryStrategy
from .registration import register_strategy

__all__ = ["BADGE", "gradient_embedding_factors"]


def gradient_embedding_factors(probs: torch.Tensor) -> torch.Tensor:
    """``a = p − onehot(argmax p)`` ``(N, C)``: the embedding is ``g = a ⊗ φ`` ``(N, C·D)``."""
    return probs - torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)


@register_strategy("badge")
class BADGE(QueryStrategy):
    """k-means++ seeding on ``g_i = (p_i − onehot(ŷ_i)) ⊗ φ_i`` without forming ``g``.

    ``‖g_i − g_j‖² = ‖a_i‖²‖φ_i‖² + ‖a_j‖²‖φ_j‖² − 2 (a_i·a_j)(φ_i·φ_j)`` costs ``O(C + D)`` per pair,
    so a batch costs ``O(b N (C + D))``. As in the reference BADGE code, the first seed is the
    largest-norm embedding; later seeds are drawn ∝ squared distance with ``generator``. Utilities are
    the squared distance (first: squared norm) at the time of the pick. ``predictive``: probabilities
    from the mean-field predictive (default) or the MAP head (``"map"``).
    """

    name = "badge"

    def __init__(self, predictive: str = "mean_field") -> None:
        if predictive not in ("mean_field", "map"):
            raise InvalidInputError(f"unknown predictive {predictive!r}; choose 'mean_field' or 'map'")
        self.predictive = predictive

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
    ) -> QueryResult:
        x, _, _, b, gen = prepare(posterior, candidates, labeled, batch_size, generator)
        z, var = posterior.logits(x, checked=True), posterior.logit_variance(x, checked=True)
        probs = predictive_from_logits(posterior, z, var) if self.predictive == "mean_field" else torch.softmax(z, 1)
        a = gradient_embedding_factors(probs)
        an, fn = (a * a).sum(1), (x * x).sum(1)
        norms = an * fn
        alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        d2 = torch.full_like(norms, torch.inf)
        picks, utils = [], []
        for t in range(b):
            if t == 0:
                i = argmax_first(norms)
                u = norms[i]
            else:
                i = _draw(d2, alive, gen)
                u = d2[i]
            picks.append(i)
            utils.append(u)
            alive[i] = False
            dist = norms + norms[i] - 2.0 * (a @ a[i]) * (x @ x[i])
            # exact duplicates (and round-off around them) are at distance zero
            dist = torch.where(dist <= 1e-12 * (norms + norms[i]), torch.zeros_like(dist), dist)
            d2 = torch.minimum(d2, dist)
        idx = torch.tensor(picks, dtype=torch.long, device=x.device)
        return QueryResult(indices=idx, utilities=torch.stack(utils).to(x.dtype))

    def __repr__(self) -> str:
        return f"BADGE(predictive={self.predictive!r})"
