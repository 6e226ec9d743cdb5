"""Score-based strategies: a per-candidate utility computed from MAP logits and logit variances.

Because the utility only depends on ``z (N, C)`` and ``σ² (N,)``, :class:`~.sequential.Sequential`
can keep these cached and refresh them in ``O(N·D)`` after each rank-1 update.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from bayesal.data import Pool
from bayesal.exceptions import InvalidInputError
from bayesal.laplace import LastLayerLaplace, Predictive, tempered

from ._common import logit_sample_chunks, predictive_from_logits, prepare, top_b
from .base import LabeledSet, QueryResult, QueryStrategy
from .pool_scoring import pool_top_b

__all__ = ["ScoreStrategy", "PredictiveScoreStrategy", "SampledScoreStrategy"]


class ScoreStrategy(QueryStrategy):
    """Top-b of a utility ``u (N,)`` that is a function of the candidates' logit distribution.

    ``candidates`` may be a :class:`~bayesal.data.pool.Pool` (a memory-mapped ``.npy``, shards, Zarr):
    it is then scored chunk by chunk with a running top-b, in memory ``O(chunk + b)``.

    ``stochastic``: whether the score draws random numbers (Monte Carlo); deterministic scores must be
    row-wise, i.e. a candidate's utility must not depend on the other rows.
    """

    stochastic: bool = False

    def top_probability_floor(self, scores: torch.Tensor) -> torch.Tensor | None:
        """A lower bound ``(N,)`` on the largest mean-field probability implied by the scores (``None``:
        none known); used with :meth:`mean_field_lipschitz` to bound score changes of confident rows."""
        return None

    def mean_field_lipschitz(self) -> float | None:
        """``L`` with ``|u(w) − u(w')| ≤ L · span(w − w')`` when the utility is a function of the mean-field
        probabilities ``softmax(w)`` of the scaled logits ``w = z / sqrt(1 + λσ²)`` (``span`` = max − min
        over classes); ``None`` when no such bound is known. Sequential selection uses it to re-score
        only the candidates whose score can still be the best."""
        return None

    @abstractmethod
    def score_logits(
        self,
        posterior: LastLayerLaplace,
        logits: torch.Tensor,
        variance: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Utility ``(N,)`` from MAP ``logits (N, C)`` and ``variance (N,)`` (or ``(N, C, C)``)."""

    def scores(self, posterior: LastLayerLaplace, candidates: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Utility ``(N,)`` of ``candidates (N, D)`` under ``posterior``."""
        return self.score_logits(posterior, posterior.logits(candidates), posterior.logit_variance(candidates), generator)

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
    ) -> QueryResult:
        if isinstance(candidates, Pool):  # out of core: one chunk at a time, running top-b
            return pool_top_b(self, posterior, candidates, batch_size, generator=generator)
        x, _, _, b, gen = prepare(posterior, candidates, labeled, batch_size, generator)
        u = self.scores(posterior, x, gen)
        idx = top_b(u, b)
        return QueryResult(indices=idx, utilities=u[idx])


class PredictiveScoreStrategy(ScoreStrategy):
    """A score of the predictive ``p (N, C)``: mean-field by default, Monte Carlo on request."""

    def __init__(self, predictive: str | Predictive = Predictive.MEAN_FIELD, n_samples: int = 1000) -> None:
        self.predictive = Predictive.parse(predictive, "predictive")
        if n_samples < 1:
            raise InvalidInputError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples = int(n_samples)
        self.stochastic = self.predictive is Predictive.MC

    #: ``L`` with ``|u(p) − u(q)| ≤ L ‖p − q‖₁`` for the score of probabilities (``None``: unknown).
    probs_lipschitz: float | None = None

    @abstractmethod
    def score_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """Utility ``(N,)`` from the predictive ``probs (N, C)``."""

    def mean_field_lipschitz(self) -> float | None:  # noqa: D102 (see base)
        # ‖softmax(w) − softmax(w')‖₁ ≤ span(w − w'): the softmax Jacobian J = diag(p) − ppᵀ has
        # ‖J v‖₁ = Σ_k p_k |v_k − pᵀv| ≤ span(v) at every point of the segment from w to w'
        if self.predictive is not Predictive.MEAN_FIELD or self.probs_lipschitz is None:
            return None
        return self.probs_lipschitz

    def score_logits(self, posterior, logits, variance, generator):  # noqa: D102 (see base)
        probs = predictive_from_logits(posterior, logits, variance, self.predictive, self.n_samples, generator)
        return self.score_probs(probs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(predictive={self.predictive.value!r})"


class SampledScoreStrategy(ScoreStrategy):
    """A score of ``n_samples`` Laplace logit samples per candidate, drawn in row blocks (the same draws
    as :meth:`LastLayerLaplace.sample_logits`)."""

    stochastic = True

    def __init__(self, n_samples: int) -> None:
        if n_samples < 1:
            raise InvalidInputError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples = int(n_samples)

    @abstractmethod
    def score_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """Utility ``(n,)`` from the logit samples ``(K, n, C)`` of ``n`` candidates."""

    def score_logits(self, posterior, logits, variance, generator):  # noqa: D102 (see base)
        out = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
        temperature = posterior.fitted_temperature  # samples seen through the predictive's likelihood
        for rows, samples in logit_sample_chunks(logits, variance, self.n_samples, generator):
            out[rows] = self.score_samples(tempered(samples, temperature))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_samples={self.n_samples})"
