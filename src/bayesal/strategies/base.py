"""The one query-strategy interface every strategy implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from bayesal.laplace.posterior import LastLayerLaplace

__all__ = ["LabeledSet", "QueryResult", "QueryStrategy"]


@dataclass(frozen=True)
class LabeledSet:
    """Labeled data so far: ``features (L, D)`` and integer ``labels (L,)`` (``L`` may be 0)."""

    features: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class QueryResult:
    """``indices (b,)``: distinct positions into the candidate features, in pick order;
    ``utilities (b,)``: the strategy's score of each pick (higher = more wanted)."""

    indices: torch.Tensor
    utilities: torch.Tensor


class QueryStrategy(ABC):
    """``query(posterior, candidates (N, D), labeled, batch_size, generator) → QueryResult``.

    ``candidate_labels (N,)`` is only read by oracle variants (simulation with known labels).
    Implementations must return ``batch_size`` distinct indices and be deterministic for a seeded
    ``generator``.
    """

    name: str = "strategy"

    @abstractmethod
    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
        candidate_labels: torch.Tensor | None = None,
    ) -> QueryResult:
        ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
