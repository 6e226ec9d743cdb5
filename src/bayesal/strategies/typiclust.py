"""TypiClust (Hacohen et al. 2022): the most typical unlabeled instance of each uncovered cluster.

Choices, following the reference implementation where it is well defined:

* k-means of labeled ∪ candidates into ``min(|L| + b, max_clusters)`` clusters (seeded k-means++ and
  Lloyd, not sklearn's; the reference switches to mini-batch k-means above 50 clusters).
* Clusters are ordered once by (labeled members ascending, size descending, id) and visited round
  robin, pick ``i`` from the ``i``-th cluster modulo their number, as in the reference (picks of
  this batch do not re-sort the clusters).
* Only clusters with more than ``min_cluster_size`` members (labeled + candidates; strictly more,
  as in the reference) take part. Unlike the reference, smaller clusters are used as a fallback
  once no larger cluster has candidates left, and clusters without candidates left are skipped,
  so that ``b`` distinct picks always exist.
* Typicality is ``1 / mean distance to the k nearest neighbours`` among the cluster's *remaining
  candidates* (labeled members and earlier picks excluded), recomputed at every pick, with
  ``k = min(n_neighbors, m // 2)`` for ``m`` such members (the reference's guard for small
  clusters; a lone member gets typicality 0). Distances are Euclidean, as in the paper's formula;
  ``squared_distances=True`` gives the squared distances of the published code (faiss ``L2``).
"""

from __future__ import annotations

import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import BLOCK_ELEMENTS, LastLayerLaplace

from ._common import argmax_first, prepare
from ._kmeans import kmeans, sq_dists
from .base import LabeledSet, QueryResult, QueryStrategy
from .registration import register_strategy

__all__ = ["TypiClust", "typicality"]

def typicality(
    x: torch.Tensor, k: int, squared: bool = False, chunk_elements: int = BLOCK_ELEMENTS
) -> torch.Tensor:
    """``1 / mean distance to the k nearest neighbours`` ``(N,)`` within ``x (N, D)``.

    ``k`` is capped at ``N − 1``; all zeros if that leaves ``k < 1``. Row-chunked, so memory is
    ``O(chunk_elements)`` rather than ``O(N²)``.
    """
    n = x.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        return torch.zeros(n, dtype=x.dtype, device=x.device)
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    step = max(1, chunk_elements // n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        d = sq_dists(x[start:stop], x)
        if not squared:
            d = d.sqrt_()
        rows = torch.arange(stop - start, device=x.device)
        d[rows, rows + start] = torch.inf  # not one's own neighbour
        out[start:stop] = d.topk(k, dim=1, largest=False).values.mean(1)
    return 1.0 / (out + 1e-12)


@register_strategy("typiclust")
class TypiClust(QueryStrategy):
    """TypiClust with the choices listed in the module docstring. Utilities are the picks'
    typicality at the time of the pick."""

    name = "typiclust"

    def __init__(
        self,
        n_neighbors: int = 20,
        max_clusters: int = 500,
        n_iter: int = 30,
        min_cluster_size: int = 5,
        squared_distances: bool = False,
    ) -> None:
        if n_neighbors < 1 or max_clusters < 1:
            raise InvalidInputError("n_neighbors and max_clusters must be >= 1")
        self.min_cluster_size = int(min_cluster_size)
        self.n_neighbors = int(n_neighbors)
        self.max_clusters = int(max_clusters)
        self.n_iter = int(n_iter)
        self.squared_distances = bool(squared_distances)

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
    ) -> QueryResult:
        x, lx, _, b, gen = prepare(posterior, candidates, labeled, batch_size, generator)
        n, n_lab = x.shape[0], lx.shape[0]
        feats = torch.cat([lx, x])
        k = max(1, min(n_lab + b, self.max_clusters, feats.shape[0]))
        _, assign = kmeans(feats, k, gen, n_iter=self.n_iter)
        covered = torch.bincount(assign[:n_lab], minlength=k).tolist()
        sizes = torch.bincount(assign, minlength=k).tolist()
        cand_cluster = assign[n_lab:]
        remaining = torch.bincount(cand_cluster, minlength=k).tolist()  # candidates left per cluster
        # static reference order: fewest labeled, then largest, then lowest id
        order = sorted((cl for cl in range(k) if remaining[cl] > 0), key=lambda cl: (covered[cl], -sizes[cl], cl))
        tiers = [
            [cl for cl in order if sizes[cl] > self.min_cluster_size],
            [cl for cl in order if sizes[cl] <= self.min_cluster_size],  # fallback only
        ]
        pointers = [0, 0]
        alive = torch.ones(n, dtype=torch.bool, device=x.device)
        picks, utils = [], []
        for _ in range(b):
            tier = 0 if any(remaining[cl] > 0 for cl in tiers[0]) else 1
            lst = tiers[tier]
            j = pointers[tier]
            while remaining[lst[j % len(lst)]] == 0:  # skip exhausted clusters, keep the cycle
                j += 1
            cl = lst[j % len(lst)]
            pointers[tier] = (j + 1) % len(lst)
            members = (alive & (cand_cluster == cl)).nonzero().flatten()
            nn_k = min(self.n_neighbors, members.numel() // 2)
            typ = typicality(x[members], nn_k, squared=self.squared_distances)
            best = argmax_first(typ)
            i = int(members[best])
            picks.append(i)
            utils.append(typ[best])
            alive[i] = False
            remaining[cl] -= 1
        idx = torch.tensor(picks, dtype=torch.long, device=x.device)
        return QueryResult(indices=idx, utilities=torch.stack(utils).to(x.dtype))

    def __repr__(self) -> str:
        return (
            f"TypiClust(n_neighbors={self.n_neighbors}, max_clusters={self.max_clusters}, "
            f"min_cluster_size={self.min_cluster_size}, squared_distances={self.squared_distances})"
        )
