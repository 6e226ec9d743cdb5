"""Whole-pool queries over a large pool: float32 pool moments kept current by rank-1 steps.

A query that scores every item of a pool of a million rows needs the MAP logits ``z (N, C)`` and the
logit variances ``σ² (N,)`` of all of them; from the posterior that is ``O(N·D·(C + r))`` (``r`` the
rank of the covariance's downdate), seconds at N = 10⁶. After one answer the posterior moves by a
rank-1 step (:meth:`~bayesal.laplace.LastLayerLaplace.logit_step`), and so do the moments:
``z' = z + k ⊗ a`` and ``σ²' = σ² − b k²`` with ``k = Φ Σφ (N,)``, one product of the pool with one
vector. :class:`PoolMoments` keeps the moments of the states a session passes through:

* built from the posterior (float32 products, chunk by chunk) for a state reached any other way — the
  session's opening, a refit swapped in, an undo, a correction, a retrain;
* a state reached by a tell from a state it holds is that state's moments plus the tell's step
  (``k`` taken once per shown item, then each answer costs ``O(N·C)``); a skip keeps them.

The moments of a state are thus a function of the path of events since the last rebuild, the same
whoever asks: the speculation of the next item (:meth:`~bayesal.labeling.queries.SessionQueries.view_after_tell`
then :meth:`~bayesal.labeling.queries.SessionQueries.query_in`) and the query after the tell compute
the same tensors, so their picks are the same. They equal the posterior's own moments up to float32
round-off (a rebuild, e.g. after a resume, may break a near tie differently).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import torch

from bayesal.laplace import LastLayerLaplace, SharedLaplace
from bayesal.strategies import QueryStrategy, ScoreStrategy

__all__ = ["PoolMoments", "Moments", "WHOLE_POOL_MIN_ROWS", "uses_pool_moments"]

#: Pools at least this large are queried whole from :class:`PoolMoments` (smaller ones from the posterior).
WHOLE_POOL_MIN_ROWS = 50_000
#: Rows per chunk of the float32 products (a few MB: the chunk stays in cache for its products).
CHUNK_ROWS = 8192
#: Moments kept: the current state, the one before it, and the speculated answers to the item shown.
MAX_ENTRIES = 12


@dataclass(frozen=True)
class Moments:
    """MAP logits ``(N, C)`` and predictive logit variances ``(N,)`` (float32) of the pool in one state,
    whose posterior is ``posterior``."""

    posterior: LastLayerLaplace
    logits: torch.Tensor
    variance: torch.Tensor


def uses_pool_moments(strategy: QueryStrategy, posterior: LastLayerLaplace, n_rows: int,
                      candidate_size: int | None) -> bool:
    """Whether a query is answered from :class:`PoolMoments`: every row of a large pool scored (no
    candidate subset) by a deterministic row-wise score of a shared-covariance posterior."""
    return (candidate_size is None and n_rows >= WHOLE_POOL_MIN_ROWS and isinstance(strategy, ScoreStrategy)
            and not strategy.stochastic and isinstance(posterior, SharedLaplace))


class PoolMoments:
    """The pool moments of recent states of one session (thread-safe: the speculation thread and the
    answers share it; one state's moments are computed once, by whoever asks first).

    Parameters
    ----------
    features : torch.Tensor
        The pool ``(N, D)``; a float32 copy is made on first use (the products are taken in float32).
    """

    def __init__(self, features: torch.Tensor) -> None:
        self._x = features
        self._x32: torch.Tensor | None = None
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Moments] = OrderedDict()
        self._products: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._running: dict[Hashable, threading.Event] = {}
        self.rebuilds = 0  # moments built from a posterior (for tests and benchmarks)
        self.steps = 0  # moments stepped from another state's
        self.half_steps = 0  # variances stepped, logits taken anew (the early phase's exact mean)

    # ------------------------------------------------------------------ computing once
    def _once(self, store: OrderedDict, key: Hashable, make: Callable[[], object], limit: int) -> object:
        """``store[key]``, made by ``make()`` if missing: a concurrent asker of the same key waits for it."""
        while True:
            with self._lock:
                if key in store:
                    store.move_to_end(key)
                    return store[key]
                event = self._running.get(key)
                if event is None:
                    event = self._running[key] = threading.Event()
                    break
            event.wait()
        try:
            value = make()
            with self._lock:
                store[key] = value
                while len(store) > limit:
                    store.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._running[key]
            event.set()

    def features32(self) -> torch.Tensor:
        """The float32 copy of the pool ``(N, D)``."""
        with self._lock:
            if self._x32 is None:
                self._x32 = self._x.to(torch.float32).contiguous()
            return self._x32

    # ------------------------------------------------------------------ the moments of a state
    def rebuilt(self, key: Hashable, posterior: LastLayerLaplace) -> Moments:
        """The moments of the state ``key`` (whose posterior is ``posterior``) from the posterior."""
        return self._once(self._entries, key, lambda: self._build(posterior), MAX_ENTRIES)  # type: ignore[return-value]

    def _logits(self, posterior: LastLayerLaplace) -> torch.Tensor:
        """MAP logits ``(N, C)`` of the pool under ``posterior`` (float32 products, by chunks)."""
        x = self.features32()
        mean, bias = posterior.mean_.to(torch.float32), posterior.bias_.to(torch.float32)
        out = torch.empty((x.shape[0], mean.shape[0]), dtype=torch.float32)
        for start in range(0, x.shape[0], CHUNK_ROWS):
            torch.addmm(bias, x[start:start + CHUNK_ROWS], mean.T, out=out[start:start + CHUNK_ROWS])
        return out

    def _build(self, posterior: LastLayerLaplace) -> Moments:
        x = self.features32()
        n, c = x.shape[0], posterior.num_classes_
        logits = torch.empty((n, c), dtype=torch.float32)
        variance = torch.empty(n, dtype=torch.float32)
        for start in range(0, n, CHUNK_ROWS):
            z, v = posterior.logit_moments(x[start:start + CHUNK_ROWS], compute_dtype=torch.float32)
            logits[start:start + len(v)] = z
            variance[start:start + len(v)] = v
        self.rebuilds += 1
        return Moments(posterior, logits, variance)

    def same(self, key: Hashable, parent: Moments, posterior: LastLayerLaplace) -> Moments:
        """The moments of a state whose posterior is the parent's (a skip)."""
        def make() -> Moments:
            return Moments(posterior, parent.logits, parent.variance)

        return self._once(self._entries, key, make, MAX_ENTRIES)  # type: ignore[return-value]

    def stepped(self, key: Hashable, parent_key: Hashable, parent: Moments, index: int, label: int,
                posterior: LastLayerLaplace) -> Moments:
        """The moments of the state ``key`` that telling ``(index, label)`` leads to from ``parent`` (whose
        state is ``parent_key``); ``posterior``: the state's posterior (kept with the moments)."""
        def make() -> Moments:
            post = parent.posterior
            phi = self._x[int(index)].to(post.dtype)
            target = torch.zeros(post.num_classes_, dtype=post.dtype)
            target[int(label)] = 1.0
            step = post.logit_step(phi, target)
            denom = step.denom
            shrink = -step.curvature / denom if step.spread == 1.0 else -step.spread * step.curvature / denom
            coef64 = (step.gamma / denom) * (step.target - step.probs)
            mean_ok, cov_ok = _is_step(post, posterior, step.sigma_phi, coef64, -step.curvature / denom)
            if not cov_ok:
                return self._build(posterior)  # a refit: nothing of the parent's moments carries over
            k = self.product(parent_key, post, int(index), step.sigma_phi)
            variance = torch.addcmul(parent.variance, k, k, value=shrink).clamp_(min=0.0)
            if mean_ok:
                logits = torch.addr(parent.logits, k, coef64.to(torch.float32))
                self.steps += 1
            else:  # the early phase re-solves the mean exactly (the covariance still takes the rank-1 step)
                logits = self._logits(posterior)
                self.half_steps += 1
            return Moments(posterior, logits, variance)

        return self._once(self._entries, key, make, MAX_ENTRIES)  # type: ignore[return-value]

    def product(self, parent_key: Hashable, posterior: LastLayerLaplace, index: int,
                sigma_phi: torch.Tensor | None = None) -> torch.Tensor:
        """``k = Φ Σφ (N,)`` (float32) of item ``index`` in the state ``parent_key`` (once per shown item:
        every answer to it steps with the same ``k``)."""
        def make() -> torch.Tensor:
            s = sigma_phi
            if s is None:
                s = posterior.covariance_product(self._x[int(index)].to(posterior.dtype))
            x = self.features32()
            s32 = s.to(torch.float32)
            out = torch.empty(x.shape[0], dtype=torch.float32)
            for start in range(0, x.shape[0], CHUNK_ROWS * 8):
                torch.mv(x[start:start + CHUNK_ROWS * 8], s32, out=out[start:start + CHUNK_ROWS * 8])
            return out

        return self._once(self._products, (parent_key, int(index)), make, 4)  # type: ignore[return-value]

    def lookup(self, key: Hashable) -> Moments | None:
        """The moments of the state ``key`` if held."""
        with self._lock:
            return self._entries.get(key)

    # ------------------------------------------------------------------ the query
    @staticmethod
    def top(strategy: ScoreStrategy, moments: Moments, available: np.ndarray, k: int,
            generator: torch.Generator | None) -> list[int]:
        """The ``k`` available rows of the highest score (ties to the lower row, NaN lowest), as the
        strategy's query of those rows ranks them."""
        idx = torch.from_numpy(np.ascontiguousarray(available, dtype=np.int64))
        whole = idx.numel() == moments.variance.numel()
        z = moments.logits if whole else moments.logits.index_select(0, idx)
        v = moments.variance if whole else moments.variance.index_select(0, idx)
        scores = strategy.score_logits(moments.posterior, z, v, generator).double().numpy()
        key = np.where(np.isnan(scores), -np.inf, scores)
        if k < len(key):
            kth = np.partition(key, len(key) - k)[len(key) - k]
            sel = np.flatnonzero(key >= kth)  # everything tied with the k-th best: ties go to the lower row
        else:
            sel = np.arange(len(key))
        order = sel[np.lexsort((sel, -key[sel]))][:k]
        return [int(available[j]) for j in order]


def _is_step(before: LastLayerLaplace, after: LastLayerLaplace, sigma_phi: torch.Tensor, coef: torch.Tensor,
             shrink: float, rtol: float = 1e-6) -> tuple[bool, bool]:
    """Whether ``after``'s mean (with the same bias) and covariance are ``before``'s moved by the rank-1
    step ``μ + coef ⊗ Σφ``, ``Σ + shrink (Σφ)(Σφ)ᵀ``, up to round-off: ``O(C·D + D²)``, checked against
    the posterior the tell really made."""
    if not isinstance(after, SharedLaplace) or after.mean_.shape != before.mean_.shape:
        return False, False
    mean = torch.addr(before.mean_, coef.to(before.dtype), sigma_phi)
    cov = torch.addr(before.covariance_, sigma_phi, sigma_phi, alpha=shrink)
    scale_m = float(mean.abs().max()) + 1e-12
    scale_c = float(cov.abs().max()) + 1e-12
    mean_ok = bool(torch.equal(after.bias_, before.bias_)) and float((after.mean_ - mean).abs().max()) <= rtol * scale_m
    return mean_ok, float((after.covariance_ - cov).abs().max()) <= rtol * scale_c
