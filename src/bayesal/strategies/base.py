"""The two strategy interfaces: deployable :class:`QueryStrategy` and simulation-only :class:`OracleStrategy`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from bayesal.laplace import LastLayerLaplace

__all__ = ["LabeledSet", "QueryResult", "Strategy", "QueryStrategy", "OracleStrategy"]


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


class Strategy:  # noqa: B024 (a common base only; the abstract methods are on the two kinds)
    """What every strategy has: a ``name``. Subclass :class:`QueryStrategy` or :class:`OracleStrategy`."""

    name: str = "strategy"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class QueryStrategy(Strategy, ABC):
    """A deployable strategy: it needs no labels of the candidates.

    Implementations must return ``batch_size`` distinct indices and be deterministic for a seeded
    ``generator``.
    """

    @abstractmethod
    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
    ) -> QueryResult:
        """Pick ``batch_size`` of the ``candidates``.

        Parameters
        ----------
        posterior : LastLayerLaplace
            The current (fitted) posterior; it is not modified.
        candidates : torch.Tensor
            Candidate features ``(N, D)``.
        labeled : LabeledSet
            The labeled data so far (``L`` may be 0).
        batch_size : int
            Number of picks ``b``, ``1 <= b <= N``.
        generator : torch.Generator
            Source of every random draw.

        Returns
        -------
        QueryResult
            ``indices (b,)`` into ``candidates`` and their ``utilities (b,)``.
        """


class OracleStrategy(Strategy, ABC):
    """A simulation-only strategy: it reads the true labels of the candidates (an upper bound, as in
    the paper's experiments), so it cannot run where labels are still unknown (a labeling session)."""

    @abstractmethod
    def query_with_labels(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
        candidate_labels: torch.Tensor,
    ) -> QueryResult:
        """Pick ``batch_size`` of the ``candidates`` knowing their labels.

        Parameters
        ----------
        posterior, candidates, labeled, batch_size, generator
            As in :meth:`QueryStrategy.query`.
        candidate_labels : torch.Tensor
            True class indices of the candidates ``(N,)``.

        Returns
        -------
        QueryResult
            ``indices (b,)`` into ``candidates`` and their ``utilities (b,)``.
        """
