"""Random sampling: a uniformly random batch drawn with the generator."""

from __future__ import annotations

import torch

from bayesal.laplace import LastLayerLaplace

from ._common import prepare
from .base import LabeledSet, QueryResult, QueryStrategy
from .registration import register_strategy

__all__ = ["RandomSampling"]


@register_strategy("random")
class RandomSampling(QueryStrategy):
    """``b`` distinct candidates uniformly at random (utilities are all zero)."""

    name = "random"

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
    ) -> QueryResult:
        x, _, _, b, gen = prepare(posterior, candidates, labeled, batch_size, generator)
        idx = torch.randperm(x.shape[0], generator=gen)[:b].to(x.device)
        return QueryResult(indices=idx, utilities=torch.zeros(b, dtype=x.dtype, device=x.device))
