"""CoreSet: greedy k-center selection in feature space, starting from the labeled features."""

from __future__ import annotations

import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import BLOCK_ELEMENTS, LastLayerLaplace

from ._common import argmax_first, prepare
from ._kmeans import sq_dists
from .base import LabeledSet, QueryResult, QueryStrategy
from .registration import register_strategy

__all__ = ["CoreSet"]


@register_strategy("coreset", aliases=("core_set",))
class CoreSet(QueryStrategy):
    """k-center greedy: repeatedly pick the candidate farthest from the labeled set and the picks.

    Utilities are that Euclidean distance. With no labeled data the first pick is drawn uniformly with
    ``generator`` (its utility is ``inf``). ``chunk_elements`` bounds the ``(N, rows)`` blocks of
    distances to the labeled set.
    """

    name = "coreset"

    def __init__(self, chunk_elements: int = BLOCK_ELEMENTS) -> None:
        if int(chunk_elements) < 1:
            raise InvalidInputError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.chunk_elements = int(chunk_elements)

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
    ) -> QueryResult:
        x, lx, _, b, gen = prepare(posterior, candidates, labeled, batch_size, generator)
        n = x.shape[0]
        mind = torch.full((n,), torch.inf, dtype=x.dtype, device=x.device)
        step = max(1, self.chunk_elements // max(1, n))
        for start in range(0, lx.shape[0], step):
            mind = torch.minimum(mind, sq_dists(x, lx[start : start + step]).min(1).values)
        picks, utils = [], []
        for t in range(b):
            if t == 0 and lx.shape[0] == 0:
                i = int(torch.randint(n, (1,), generator=gen)[0])
            else:
                i = argmax_first(mind)
            picks.append(i)
            utils.append(mind[i].sqrt())
            mind = torch.minimum(mind, ((x - x[i]) ** 2).sum(1))
            mind[i] = -torch.inf  # never again
        idx = torch.tensor(picks, dtype=torch.long, device=x.device)
        return QueryResult(indices=idx, utilities=torch.stack(utils).to(x.dtype))
