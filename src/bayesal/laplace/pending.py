"""A mean update kept as its low-rank factors until the mean is read.

A one-point update of the shared covariance moves the mean by a rank-1 term, ``μ' = μ + a bᵀ`` with
``a (C,)`` and ``b (D,)``. Forming ``μ'`` writes a fresh ``(C, D)`` tensor: at ``C = 10,000`` and
``D = 768`` that is 61 MB, whose first touch (page faults) costs several times the arithmetic. The
posterior therefore keeps ``(μ, A, B)`` with ``μ' = μ + AᵀB`` and forms ``μ'`` when it is first read
(a predictive, a query, :meth:`~bayesal.laplace.posterior.LastLayerLaplace.state_dict`); the next
update's logits of its new points are ``Φμᵀ + (ΦBᵀ)A`` meanwhile. A read right after each update
gives bit for bit the mean of the eager update (the same outer product).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["PendingMean", "MAX_PENDING_MEAN_RANK", "dense_mean", "pending_logits"]

#: Rank of the pending correction above which an update forms the mean itself (each pending row costs
#: the next update's logits ``O(D + C)`` per new point).
MAX_PENDING_MEAN_RANK = 16


class PendingMean(NamedTuple):
    """``μ = base + leftᵀ right``: ``base (C, D)``, ``left (k, C)``, ``right (k, D)``."""

    base: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        """Rows ``k`` of the pending correction."""
        return int(self.left.shape[0])


def dense_mean(mean: torch.Tensor | PendingMean) -> torch.Tensor:
    """The mean as a tensor: ``base`` plus the pending outer products, in the order the updates made them
    (an outer product each, as the eager update; torch's matrix product with a short inner dimension is
    several times slower on the CPU)."""
    if isinstance(mean, torch.Tensor):
        return mean
    out = torch.addr(mean.base, mean.left[0], mean.right[0])
    for k in range(1, mean.rank):
        out.addr_(mean.left[k], mean.right[k])
    return out


def pending_logits(bias: torch.Tensor, x: torch.Tensor, mean: torch.Tensor | PendingMean) -> torch.Tensor:
    """Logits ``(M, C)`` of rows ``x (M, D)`` under the mean, without forming a pending one."""
    if isinstance(mean, torch.Tensor):
        return torch.addmm(bias, x, mean.T)
    return torch.addmm(torch.addmm(bias, x, mean.base.T), x @ mean.right.T, mean.left)
