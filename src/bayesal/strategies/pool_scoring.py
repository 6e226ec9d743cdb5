"""Top-b of a row-wise score over an out-of-core :class:`~bayesal.data.pool.Pool`, chunk by chunk.

Only one chunk of features (plus the ``b`` best rows so far) is in memory at a time. The running
top-k keeps the same order as :func:`~._common.top_b` on the whole pool — higher score first, ties
to the lower row, NaN lowest — so merging the top-k of any partition of the rows gives exactly the
global top-b: :func:`merge_top_k` is what the distributed scorer uses to combine shards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bayesal.data import Pool
from bayesal.laplace import LastLayerLaplace, SharedLaplace

from ._common import check_batch_size
from .base import QueryResult

__all__ = ["TopK", "merge_top_k", "score_chunk", "shard_top_k", "pool_top_b"]


def _order(indices: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions sorted by descending score (NaN lowest), ties by ascending index."""
    key = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((indices, -key))


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(indices, scores)`` of several candidate lists (global row indices)."""
    idx = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
    sc = np.concatenate([np.asarray(p[1], dtype=np.float64) for p in parts]) if parts else np.zeros(0)
    keep = _order(idx, sc)[:k]
    return idx[keep], sc[keep]


class TopK:
    """Running top-k over scores that arrive in blocks; memory ``O(k + block)``."""

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self.indices = np.zeros(0, dtype=np.int64)
        self.scores = np.zeros(0, dtype=np.float64)

    def push(self, indices: np.ndarray, scores: np.ndarray) -> None:
        if len(scores) > 4 * self.k:  # cut the block to its own top-k first (argpartition, O(n))
            key = np.where(np.isnan(scores), -np.inf, scores)
            # everything tied with the k-th best must stay: ties are broken by index in the merge
            kth = np.partition(key, len(key) - self.k)[len(key) - self.k]
            sel = np.flatnonzero(key >= kth)
            indices, scores = indices[sel], scores[sel]
        self.indices, self.scores = merge_top_k([(self.indices, self.scores), (indices, scores)], self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.indices, self.scores


def score_chunk(strategy, posterior: LastLayerLaplace, block: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
    """Utility ``(n,)`` of one chunk of pool rows ``(n, D)`` under ``strategy`` (a ScoreStrategy).

    A float32 chunk under a deterministic score and a shared covariance is multiplied in float32
    (:meth:`~bayesal.laplace.LastLayerLaplace.logit_moments`): twice the GEMM rate, no float64 copy of
    the chunk, scores at float32 round-off. Everything else goes through the posterior's dtype.
    """
    x = torch.from_numpy(np.ascontiguousarray(block))
    if x.dtype == torch.float32 and not strategy.stochastic and isinstance(posterior, SharedLaplace):
        z, var = posterior.logit_moments(x, compute_dtype=torch.float32)
        return strategy.score_logits(posterior, z, var, generator)
    return strategy.scores(posterior, x, generator)


def shard_top_k(
    strategy,
    posterior: LastLayerLaplace,
    pool: Pool,
    k: int,
    *,
    offset: int = 0,
    chunk_rows: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(row indices + offset, scores)`` of one pool (or shard), read in chunks."""
    best = TopK(k)
    for start, block in pool.chunks(chunk_rows):
        u = score_chunk(strategy, posterior, block, generator).double().cpu().numpy()
        best.push(np.arange(offset + start, offset + start + len(u), dtype=np.int64), u)
    return best.result()


def pool_top_b(
    strategy,
    posterior: LastLayerLaplace,
    pool: Pool,
    batch_size: int,
    *,
    chunk_rows: int | None = None,
    generator: torch.Generator | None = None,
) -> QueryResult:
    """Top-b of ``strategy``'s row-wise score over ``pool`` in one pass of chunks (single process)."""
    b = check_batch_size(batch_size, len(pool))
    idx, sc = shard_top_k(strategy, posterior, pool, b, chunk_rows=chunk_rows, generator=generator)
    dtype = posterior.dtype
    return QueryResult(torch.from_numpy(idx.copy()), torch.from_numpy(sc.copy()).to(dtype))
