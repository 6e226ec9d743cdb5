"""The full multi-class GGN: one ``(C·D, C·D)`` covariance over row-major ``vec W`` (small ``C·D`` only)."""

from __future__ import annotations

import math

import torch

from bayesal.exceptions import InvalidInputError

from .options import MAX_DENSE_PARAMETERS, Curvature, Hessian, UpdateMethod
from .pending import PendingMean
from .posterior import LastLayerLaplace
from .structures import register_structure
from .update import (
    SoftmaxCurvature,
    SpanCurvature,
    SpanNewtonResult,
    full_ggn_factor,
    gram_downdate,
    rank1_downdate,
    weight_newton,
)

__all__ = ["FullLaplace"]


@register_structure(Hessian.FULL)
class FullLaplace(LastLayerLaplace):
    """Last-layer Laplace with the full multi-class GGN ``λ₀ I + Σ_i (diag p_i − p_i p_iᵀ) ⊗ φ_i φ_iᵀ``.

    Built by ``LastLayerLaplace(hessian="full")``. Logits of one point are correlated across classes
    (``(C, C)`` covariances); the curvature is the softmax Hessian itself, so ``curvature`` is not used
    by the covariance (cross-validation with ``"cv-predictive"`` scores the categorical predictive).
    Memory ``O((C·D)²)``: for small ``C·D``.
    """

    def _num_params(self) -> int:
        return self.num_classes_ * self.num_features_

    def _check_capacity(self, num_classes: int, num_features: int) -> None:
        p = num_classes * num_features
        if p > MAX_DENSE_PARAMETERS:
            gib = 8 * p * p / 2**30
            raise InvalidInputError(
                f"hessian='full' needs a (C·D)² covariance: C = {num_classes} classes × D = {num_features} features "
                f"= {p} parameters, a {gib:,.1f} GiB float64 matrix (fitting holds about three), above the limit of "
                f"{MAX_DENSE_PARAMETERS} parameters (bayesal.laplace.options.MAX_DENSE_PARAMETERS); use hessian='shared' "
                "(memory O(D² + C·D)) or reduce D (e.g. PCA of the features)"
            )

    def _hessian_factor(self, x: torch.Tensor, probs: torch.Tensor, curvature: Curvature) -> torch.Tensor:
        return full_ggn_factor(x, probs)

    def _evidence_multiplicity(self, c: int) -> int:
        return 1

    def _cv_curvature(self) -> Curvature:
        return Curvature.CATEGORICAL

    def _logit_cov_chunk(self, x: torch.Tensor) -> torch.Tensor:
        c, d = self.num_classes_, self.num_features_
        cov4 = self.covariance_.view(c, d, c, d)
        return torch.einsum("ncke,ne->nck", torch.einsum("nd,cdke->ncke", x, cov4), x)

    def _var_shape(self) -> tuple[int, ...]:
        return (0, self.num_classes_, self.num_classes_)

    def _per_row_cost(self) -> int:
        return self.num_classes_**2 * self.num_features_

    def _span_curvature(self) -> SpanCurvature:
        return SoftmaxCurvature()

    def _span_products(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, d = self.num_classes_, self.num_features_
        left = torch.einsum("jd,cdq->jcq", x, self.covariance_.reshape(c, d, c * d)).reshape(-1, c * d)  # JΣ
        kernel = torch.einsum("pce,le->plc", left.reshape(-1, c, d), x).reshape(left.shape[0], -1)
        return left, kernel

    def _updated_state(
        self, x: torch.Tensor, res: SpanNewtonResult, left: torch.Tensor, method: UpdateMethod
    ) -> tuple[torch.Tensor | PendingMean, torch.Tensor, torch.Tensor | None]:
        mean = self.mean_ + (res.coef @ left).reshape(self.num_classes_, self.num_features_)
        if method is UpdateMethod.WOODBURY:
            return mean, gram_downdate(self.covariance_, res.whiten @ left), None
        return mean, rank1_downdate(self.covariance_, self._hessian_factor(x, res.probs, self.curvature)), None

    def _weight_space_update(
        self, x: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, gamma: float, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        res = weight_newton(self.covariance_, x, logits, targets, self._span_curvature(), gamma, steps)
        return self.mean_ + res.delta, res.covariance

    def _mean_step(self, phi: torch.Tensor, resid: torch.Tensor, gamma: float) -> torch.Tensor:
        # vec μ' = vec μ + γ Σ vec(Σ_j resid_j φ_jᵀ)
        grad = (resid.T @ phi).reshape(-1)
        return self.mean_ + gamma * (self.covariance_ @ grad).reshape(self.mean_.shape)

    def sample_weights(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Weight samples ``(K, C, D)`` from ``N(vec μ, τΣ)`` (``τ`` the spread)."""
        n_samples = self._sample_count(n_samples)
        c, d = self.num_classes_, self.num_features_
        eps = torch.randn(n_samples, c * d, generator=generator, dtype=self.dtype).to(self.device)
        return self.mean_ + math.sqrt(self.spread_) * (eps @ self.scale_tril.T).view(n_samples, c, d)

    def weight_covariance(self) -> torch.Tensor:
        """The covariance itself: it is already over row-major ``vec W``."""
        self._check_fitted()
        return self.covariance_
