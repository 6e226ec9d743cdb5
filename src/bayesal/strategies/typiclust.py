"""TypiClust: the most typical instance of each still-uncovered k-means cluster."""

from __future__ import annotations

import torch

from ..posterior import LastLayerLaplace
from ._common import argmax_first, prepare
from ._kmeans import kmeans, sq_dists
from .base import LabeledSet, QueryResult, QueryStrategy

__all__ = ["TypiClust", "typicality"]


def typicality(x: torch.Tensor, k: int) -> torch.Tensor:
    """``1 / mean distance to the k nearest neighbours`` ``(N,)`` within ``x (N, D)``; 0 if ``N = 1``."""
    n = x.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return torch.zeros(n, dtype=x.dtype, device=x.device)
    d = sq_dists(x, x).sqrt_()
    d.fill_diagonal_(torch.inf)
    knn = d.topk(k, dim=1, largest=False).values.mean(1)
    return 1.0 / (knn + 1e-12)


class TypiClust(QueryStrategy):
    """k-means of labeled ∪ candidates into ``min(|L| + b, max_clusters)`` clusters; for each pick,
    the cluster with the fewest labeled/picked members (then the largest) gives its most typical
    candidate (highest inverse mean kNN distance within the cluster, ``k = n_neighbors``).
    Clusters with fewer than ``min_cluster_size`` points are only used once no larger cluster has
    candidates left (as in the reference TypiClust). Utilities are the typicality of the picks."""

    name = "typiclust"

    def __init__(
        self, n_neighbors: int = 20, max_clusters: int = 500, n_iter: int = 30, min_cluster_size: int = 5
    ) -> None:
        if n_neighbors < 1 or max_clusters < 1:
            raise ValueError("n_neighbors and max_clusters must be >= 1")
        self.min_cluster_size = int(min_cluster_size)
        self.n_neighbors = int(n_neighbors)
        self.max_clusters = int(max_clusters)
        self.n_iter = int(n_iter)

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
        candidate_labels: torch.Tensor | None = None,
    ) -> QueryResult:
        x, lx, _, b, gen = prepare(posterior, candidates, labeled, batch_size, generator)
        n, n_lab = x.shape[0], lx.shape[0]
        feats = torch.cat([lx, x])
        k = max(1, min(n_lab + b, self.max_clusters, feats.shape[0]))
        _, assign = kmeans(feats, k, gen, n_iter=self.n_iter)
        covered = torch.bincount(assign[:n_lab], minlength=k)
        sizes = torch.bincount(assign, minlength=k)
        cand_cluster = assign[n_lab:]
        typ = torch.zeros(n, dtype=x.dtype, device=x.device)
        for c in torch.unique(cand_cluster).tolist():
            members = (assign == c).nonzero().flatten()
            t = typicality(feats[members], self.n_neighbors)
            is_cand = members >= n_lab
            typ[members[is_cand] - n_lab] = t[is_cand]
        alive = torch.ones(n, dtype=torch.bool, device=x.device)
        picks, utils = [], []
        for _ in range(b):
            open_ = torch.bincount(cand_cluster[alive], minlength=k) > 0
            big = open_ & (sizes >= self.min_cluster_size)
            if bool(big.any()):
                open_ = big
            # fewest covered first, then largest; lowest cluster id on ties
            key = torch.where(open_, -covered.to(torch.float64) * (feats.shape[0] + 1) + sizes, -torch.inf)
            c = argmax_first(key)
            score = torch.where(alive & (cand_cluster == c), typ, torch.full_like(typ, -torch.inf))
            i = argmax_first(score)
            picks.append(i)
            utils.append(typ[i])
            alive[i] = False
            covered[c] += 1
        idx = torch.tensor(picks, dtype=torch.long, device=x.device)
        return QueryResult(indices=idx, utilities=torch.stack(utils).to(x.dtype))
