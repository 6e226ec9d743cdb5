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
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bayesal.laplace import LastLayerLaplace, SharedLaplace
from bayesal.strategies import QueryStrategy, ScoreStrategy

__all__ = ["PoolMoments", "Moments", "WHOLE_POOL_MIN_ROWS", "uses_pool_moments"]

#: Pools at least this large are queried whole from :class:`PoolMoments` (smaller ones from the posterior).
WHOLE_POOL_MIN_ROWS = 10_000
#: Rows per chunk of the float32 products (a few MB: the chunk stays in cache for its products).
CHUNK_ROWS = 8192
#: Moments kept: the current state, the one before it, and the speculated answers to the item shown.
MAX_ENTRIES = 12
#: Rows scored at a time by a query.
SCORE_ROWS = 16384
#: Labeled items a span holds (the early phase's exact mean covers 64 labels by default).
SPAN_FEATURES = 80
#: Rows whose logits check a span's against the posterior's own.
SPAN_PROBES = 16


@dataclass(frozen=True)
class Moments:
    """MAP logits ``(N, C)`` and predictive logit variances ``(N,)`` (float32) of the pool in one state,
    whose posterior is ``posterior``; ``span``: how its logits follow from a few pool products (below)."""

    posterior: LastLayerLaplace
    logits: torch.Tensor
    variance: torch.Tensor
    span: _Span | None = None


class _Columns:
    """A buffer ``(N, width)`` of pool products shared by the states of one chain, and which vector
    each filled column is the product with (a column is written once)."""

    def __init__(self, n: int, width: int) -> None:
        self.data = torch.empty((n, width), dtype=torch.float32)
        self.owners: list[Hashable] = []
        self.lock = threading.Lock()


@dataclass(frozen=True)
class _Span:
    """The early phase re-solves the mean over the few labels so far: it moves within the span of the
    rows of the mean of an earlier state and the features told since. With ``rows (m, D)`` that basis and
    the first ``m`` columns of ``columns`` their products with the pool, the logits of a mean ``M`` in it
    are ``columns[:, :m] @ A.T + b`` with ``M = A rows``: ``O(N·m·C)`` instead of ``O(N·D·C)``."""

    rows: torch.Tensor
    owners: tuple[Hashable, ...]
    columns: _Columns


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
        self.half_steps = 0  # variances stepped, logits from the span (the early phase's exact mean)
        self.full_logits = 0  # ... of which logits taken from the pool anew (the span did not hold them)

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
        mean, bias = posterior.mean.to(torch.float32), posterior.bias.to(torch.float32)
        out = torch.empty((x.shape[0], mean.shape[0]), dtype=torch.float32)
        for start in range(0, x.shape[0], CHUNK_ROWS):
            torch.addmm(bias, x[start:start + CHUNK_ROWS], mean.T, out=out[start:start + CHUNK_ROWS])
        return out

    def _build(self, posterior: LastLayerLaplace) -> Moments:
        x = self.features32()
        n, c = x.shape[0], posterior.num_classes
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
                posterior: LastLayerLaplace, labeled: Sequence[int] = ()) -> Moments:
        """The moments of the state ``key`` that telling ``(index, label)`` leads to from ``parent`` (whose
        state is ``parent_key`` and labeled items ``labeled``); ``posterior``: the state's posterior."""
        def make() -> Moments:
            post = parent.posterior
            phi = self._x[int(index)].to(post.dtype)
            target = torch.zeros(post.num_classes, dtype=post.dtype)
            target[int(label)] = 1.0
            step = post.logit_step(phi, target)
            denom = step.denom
            shrink = -step.curvature / denom if step.spread == 1.0 else -step.spread * step.curvature / denom
            coef64 = (step.gamma / denom) * (step.target - step.probs)
            mean_ok, cov_ok = _is_step(post, posterior, step.sigma_phi, coef64, -step.curvature / denom)
            if not cov_ok:
                return self._build(posterior)  # a refit: nothing of the parent's moments carries over
            k, xphi = self.product(parent_key, post, int(index), step.sigma_phi)
            variance = torch.addcmul(parent.variance, k, k, value=shrink).clamp_(min=0.0)
            if mean_ok:
                logits = torch.addr(parent.logits, k, coef64.to(torch.float32))
                self.steps += 1
                return Moments(posterior, logits, variance, parent.span)
            # the early phase re-solves the mean exactly (the covariance still takes the rank-1 step)
            self.half_steps += 1
            span = self._span_after(parent, int(index), xphi, labeled)
            from_span = None if span is None else _span_logits(span, posterior, self._x, int(index))
            if from_span is None:
                self.full_logits += 1
                from_span = self._logits(posterior)
            return Moments(posterior, from_span, variance, span)

        return self._once(self._entries, key, make, MAX_ENTRIES)  # type: ignore[return-value]

    def product(self, parent_key: Hashable, posterior: LastLayerLaplace, index: int,
                sigma_phi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Φ Σφ, Φ φ)`` (float32, ``(N,)`` each) of item ``index`` in the state ``parent_key``, in one pass
        over the pool (once per shown item: every answer to it steps with them)."""
        def make() -> tuple[torch.Tensor, torch.Tensor]:
            phi = self._x[int(index)].to(posterior.dtype)
            s = posterior.covariance_product(phi) if sigma_phi is None else sigma_phi
            x = self.features32()
            s32, phi32 = s.to(torch.float32).contiguous(), phi.to(torch.float32).contiguous()
            k, xphi = torch.empty(x.shape[0], dtype=torch.float32), torch.empty(x.shape[0], dtype=torch.float32)
            for start in range(0, x.shape[0], CHUNK_ROWS):  # two products per chunk while it is in cache (two
                chunk = x[start:start + CHUNK_ROWS]  # matrix-vector products beat one two-column GEMM here)
                torch.mv(chunk, s32, out=k[start:start + CHUNK_ROWS])
                torch.mv(chunk, phi32, out=xphi[start:start + CHUNK_ROWS])
            return k, xphi

        return self._once(self._products, (parent_key, int(index)), make, 4)  # type: ignore[return-value]

    def _span_after(self, parent: Moments, index: int, xphi: torch.Tensor, labeled: Sequence[int]) -> _Span | None:
        """The parent's span grown by the told item's features (None when it cannot grow: full, or its
        buffer taken by another chain). A new chain starts from the parent's mean rows and the features
        of its ``labeled`` items (the exact mean moves along all of them): one pass over the pool."""
        span = parent.span
        if span is None:
            post = parent.posterior
            c, lab = post.num_classes, [int(j) for j in labeled]
            if len(lab) >= SPAN_FEATURES:
                return None
            cols = _Columns(int(xphi.shape[0]), c + SPAN_FEATURES)
            # the mean rows' products are the parent's logits less the bias
            torch.sub(parent.logits, post.bias.to(torch.float32), out=cols.data[:, :c])
            if lab:
                feats = self._x[lab]
                x, f32 = self.features32(), feats.to(torch.float32).T.contiguous()
                for start in range(0, x.shape[0], CHUNK_ROWS):
                    torch.mm(x[start:start + CHUNK_ROWS], f32, out=cols.data[start:start + CHUNK_ROWS, c:c + len(lab)])
            cols.owners = [*(("mean", j) for j in range(c)), *(("item", j) for j in lab)]
            rows = torch.cat([post.mean, self._x[lab].to(post.mean.dtype)]) if lab else post.mean.clone()
            span = _Span(rows, tuple(cols.owners), cols)
        m, cols = len(span.owners), span.columns
        with cols.lock:
            if tuple(cols.owners[:m]) != span.owners or m >= cols.data.shape[1]:
                return None
            if len(cols.owners) == m:
                cols.data[:, m].copy_(xphi)
                cols.owners.append(("item", index))
            elif cols.owners[m] != ("item", index):
                return None  # another chain grew this buffer (another item shown in the same state)
        return _Span(torch.cat([span.rows, self._x[index].to(span.rows.dtype).unsqueeze(0)]),
                     (*span.owners, ("item", index)), cols)

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
        # every row scored (a row's score is its own), then the available ones kept: one gather of the
        # scores instead of one of the (N, C) logits
        n = moments.variance.shape[0]
        scores = np.empty(n, dtype=np.float32)
        for start in range(0, n, SCORE_ROWS):  # by chunks: the score's passes over a chunk stay in cache
            stop = min(n, start + SCORE_ROWS)
            scores[start:stop] = strategy.score_logits(moments.posterior, moments.logits[start:stop],
                                                       moments.variance[start:stop], generator).numpy()
        if len(available) != len(scores):
            scores = scores[available]
        key = np.where(np.isnan(scores), -np.inf, scores.astype(np.float64))
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
    if not isinstance(after, SharedLaplace) or after.mean.shape != before.mean.shape:
        return False, False
    mean = torch.addr(before.mean, coef.to(before.dtype), sigma_phi)
    cov = torch.addr(before.covariance, sigma_phi, sigma_phi, alpha=shrink)
    scale_m = float(mean.abs().max()) + 1e-12
    scale_c = float(cov.abs().max()) + 1e-12
    mean_ok = bool(torch.equal(after.bias, before.bias)) and float((after.mean - mean).abs().max()) <= rtol * scale_m
    return mean_ok, float((after.covariance - cov).abs().max()) <= rtol * scale_c


def _span_logits(span: _Span, posterior: LastLayerLaplace, x: torch.Tensor, index: int) -> torch.Tensor | None:
    """The pool's logits under ``posterior`` from ``span`` (None when its mean is not in the span's rows,
    or the float32 combination would lose precision: checked on a few rows against the posterior)."""
    mean = posterior.mean
    rows = span.rows.to(mean.dtype)
    # SVD-based (the basis is often rank-deficient: the mean rows lie in the features' span), minimum norm
    coef = torch.linalg.lstsq(rows.T, mean.T, driver="gelsd").solution  # (m, C): mean ≈ coefᵀ rows
    scale = float(mean.abs().max()) + 1e-12
    if float((rows.T @ coef - mean.T).abs().max()) > 1e-6 * scale:
        return None
    m = rows.shape[0]
    cols = span.columns.data
    out = torch.addmm(posterior.bias.to(torch.float32), cols[:, :m], coef.to(torch.float32))
    probes = torch.unique(torch.cat([torch.tensor([index]), torch.linspace(0, x.shape[0] - 1, SPAN_PROBES).long()]))
    exact = posterior.logits(x[probes].to(mean.dtype))
    if float((out[probes].double() - exact).abs().max()) > 1e-4 * (1.0 + float(exact.abs().max())):
        return None
    return out
