"""One selection step shared by the experiment loop and the labeling session: draw the candidates,
ask the strategy, check what it returned."""

from __future__ import annotations

import torch

from bayesal.exceptions import InvalidInputError, StrategyError
from bayesal.laplace import LastLayerLaplace

from .base import LabeledSet, OracleStrategy, QueryStrategy, Strategy

__all__ = ["subsample_candidates", "select"]


def subsample_candidates(
    available: torch.Tensor, candidate_size: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Pool indices ``(n,)`` of the candidates a query scores.

    All available indices (ascending) when ``candidate_size`` is None or not smaller than their
    number; otherwise the first ``candidate_size`` available ones of a random permutation of the
    *whole* pool, so that runs with the same labels see the same candidates and runs that differ in a
    few picks share all the others (paired comparisons).

    Parameters
    ----------
    available : torch.Tensor
        Boolean mask ``(N,)`` of the instances that may be picked.
    candidate_size : int or None
        How many to score.
    generator : torch.Generator
        Source of the permutation.

    Returns
    -------
    torch.Tensor
        ``(n,)`` long indices into the pool.
    """
    mask = torch.as_tensor(available, dtype=torch.bool).reshape(-1).cpu()
    idx = mask.nonzero().flatten()
    if candidate_size is None or idx.numel() <= candidate_size:
        return idx
    if isinstance(candidate_size, bool) or int(candidate_size) != candidate_size or candidate_size < 1:
        raise InvalidInputError(f"candidate_size must be a positive integer or None, got {candidate_size!r}")
    order = torch.randperm(mask.numel(), generator=generator)
    return order[mask[order]][: int(candidate_size)]


def select(
    strategy: Strategy,
    posterior: LastLayerLaplace,
    pool: torch.Tensor,
    available: torch.Tensor,
    labeled: LabeledSet,
    batch_size: int,
    generator: torch.Generator,
    *,
    candidate_size: int | None = None,
    candidate_generator: torch.Generator | None = None,
    pool_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool indices ``(b,)`` of the next batch: subsample the candidates, query, check the answer.

    Parameters
    ----------
    strategy : Strategy
        A :class:`QueryStrategy`, or an :class:`OracleStrategy` when ``pool_labels`` are known.
    posterior : LastLayerLaplace
        The current posterior (not modified).
    pool : torch.Tensor
        Features of the whole pool ``(N, D)``.
    available : torch.Tensor
        Boolean mask ``(N,)`` of the instances that may be picked (not labeled, not skipped).
    labeled : LabeledSet
        The labeled data so far.
    batch_size : int
        Number of picks ``b``.
    generator : torch.Generator
        The strategy's source of randomness (and the candidates', without ``candidate_generator``).
    candidate_size : int, optional
        Score a random subset of this many available instances (:func:`subsample_candidates`).
    candidate_generator : torch.Generator, optional
        A separate stream for the candidate subset.
    pool_labels : torch.Tensor, optional
        True labels ``(N,)`` of the pool, read by oracle strategies only.

    Returns
    -------
    torch.Tensor
        ``(b,)`` distinct long indices into the pool, all available, in pick order.

    Raises
    ------
    InvalidInputError
        An oracle strategy without ``pool_labels``.
    StrategyError
        The strategy returned a malformed batch.
    """
    cand = subsample_candidates(available, candidate_size,
                                generator if candidate_generator is None else candidate_generator)
    x = pool[cand.to(pool.device)]
    if isinstance(strategy, OracleStrategy):
        if pool_labels is None:
            raise InvalidInputError(
                f"strategy {strategy!r} needs the candidates' true labels (a simulation oracle); none are known here: "
                "use a deployable strategy, e.g. 'seq-margin@expected' or 'lookahead'"
            )
        y = torch.as_tensor(pool_labels)[cand.to(torch.as_tensor(pool_labels).device)]
        result = strategy.query_with_labels(posterior, x, labeled, batch_size, generator, y)
    elif isinstance(strategy, QueryStrategy):
        result = strategy.query(posterior, x, labeled, batch_size, generator)
    else:
        raise InvalidInputError(f"strategy must be a QueryStrategy or OracleStrategy, got {type(strategy).__name__}")
    return _checked_picks(result.indices, cand, batch_size, strategy)


def _checked_picks(indices: torch.Tensor, cand: torch.Tensor, batch_size: int, strategy: Strategy) -> torch.Tensor:
    idx = torch.as_tensor(indices).reshape(-1).cpu()
    picks = idx.tolist()
    if (idx.is_floating_point() or len(picks) != batch_size or len(set(picks)) != len(picks)
            or any(not 0 <= p < cand.numel() for p in picks)):
        raise StrategyError(
            f"strategy {strategy!r} returned invalid indices {picks} for a batch of {batch_size} among "
            f"{cand.numel()} candidates; a strategy must return that many distinct candidate positions"
        )
    return cand[idx.long()]
