"""The shared covariance ``I_C ⊗ Σ``: one ``Σ (D, D)`` for all classes (the paper's structure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from bayesal.exceptions import InvalidInputError, NumericalError
from bayesal.utils import as_features

from .linalg import isotropic_minus_low_rank, row_quadratic_forms, row_quadratic_forms_low_rank
from .options import MAX_DENSE_PARAMETERS, Curvature, Hessian, UpdateMethod
from .pending import MAX_PENDING_MEAN_RANK, PendingMean
from .posterior import LastLayerLaplace
from .structures import register_structure
from .update import (
    LogitStep,
    PointCurvature,
    SpanCurvature,
    SpanNewtonResult,
    curvature_weights,
    gram_downdate,
    rank1_downdate,
    shared_factor,
    span_newton,
    weight_newton,
)

__all__ = ["SharedLaplace"]

#: logit_moments looks for the low-rank form of Σ (one O(D³) eigendecomposition per posterior state)
#: when one call scores at least this many rows per feature: then the O(N·D²) variances dominate.
LOW_RANK_MIN_ROWS_PER_FEATURE = 16
#: An update keeps the covariance downdate ``Σ' = Σ − HᵀH`` of the shared covariance as its factor
#: ``H (k, D)`` until ``Σ'`` is read, while ``k`` stays at most this fraction of ``D``: the next
#: update's product ``ΦΣ'`` then costs at most twice the dense one.
PENDING_DOWNDATE_MAX_FRACTION = 0.25


@dataclass
class _MomentOperands:
    """:meth:`LastLayerLaplace.logit_moments`' operands for one posterior state (``mean_of``,
    ``covariance_of``) and one dtype: the state in that dtype and, once tried, the factor ``U`` of
    ``Σ = λ₀⁻¹ I − U Uᵀ`` (``None``: Σ has no such low-rank form)."""

    dtype: torch.dtype
    mean_of: torch.Tensor
    covariance_of: torch.Tensor
    mean: torch.Tensor
    bias: torch.Tensor
    covariance: torch.Tensor
    low_rank: torch.Tensor | None = None
    low_rank_tried: bool = False


@register_structure(Hessian.SHARED)
class SharedLaplace(LastLayerLaplace):
    """Last-layer Laplace with the shared covariance: rows ``w_c ~ N(μ_c, Σ)``, one ``Σ (D, D)``,
    ``Σ⁻¹ = λ₀ I + Σ_i m_i φ_i φ_iᵀ`` with the per-point curvature ``m_i`` of ``curvature``.

    Built by ``LastLayerLaplace(hessian="shared")`` (the default). Its logits are independent across
    classes with one variance ``σ²(x) = φᵀΣφ``, which gives the fast paths that cached-logit selection
    builds on: :meth:`logit_moments`, :meth:`covariance_product`, :meth:`logit_step`, :meth:`absorb`.
    An update keeps its covariance downdate pending (see :meth:`update`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lowp: _MomentOperands | None = None  # logit_moments' operands, keyed by the state tensors

    # ------------------------------------------------------------- structure
    def _num_params(self) -> int:
        return self.num_features_

    def _hessian_factor(self, x: torch.Tensor, probs: torch.Tensor, curvature: Curvature) -> torch.Tensor:
        return shared_factor(x, curvature_weights(probs, curvature))

    def _evidence_multiplicity(self, c: int) -> int:
        return c

    def _logit_cov_chunk(self, x: torch.Tensor) -> torch.Tensor:
        return row_quadratic_forms(x, self.covariance_)

    def _var_shape(self) -> tuple[int, ...]:
        return (0,)

    def _per_row_cost(self) -> int:
        # a chunk's (n, D) products and its (n, C) logits and probabilities: with many classes the
        # latter dominate (C = 10,000 would otherwise give chunks of 5,000 rows × 10,000 classes)
        return self.num_features_ + self.num_classes_

    def _span_curvature(self) -> SpanCurvature:
        return PointCurvature(self.curvature)

    def _span_products(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base, pending = self._cov_state
        left = x @ base  # ΦΣ (M, D)
        if pending is not None:  # Σ = base − HᵀH
            left = torch.addmm(left, x @ pending.T, pending, alpha=-1.0)
        return left, left @ x.T

    def _updated_state(
        self, x: torch.Tensor, res: SpanNewtonResult, left: torch.Tensor, method: UpdateMethod
    ) -> tuple[torch.Tensor | PendingMean, torch.Tensor, torch.Tensor | None]:
        mean = self._updated_mean(res.coef, left)
        if method is not UpdateMethod.WOODBURY:
            return mean, rank1_downdate(self.covariance_, self._hessian_factor(x, res.probs, self.curvature)), None
        # Σ' = Σ − HᵀH with H = L⁻¹FΦΣ (L Lᵀ = I + FKF at span_newton's last linearisation); H joins the
        # pending factor: Σ' itself is formed when first read (mean-only use never pays the O(D²·M) pass,
        # a chain of updates pays it once)
        base, pending = self._cov_state
        half = res.whiten @ left
        new_pending = half if pending is None else torch.cat([pending, half])
        if new_pending.shape[0] > PENDING_DOWNDATE_MAX_FRACTION * self.num_features_:
            return mean, gram_downdate(base, new_pending), None
        return mean, base, new_pending

    def _weight_space_update(
        self, x: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, gamma: float, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        res = weight_newton(self.covariance_, x, logits, targets, self._span_curvature(), gamma, steps)
        return self.mean_ + res.delta, res.covariance

    def _updated_mean(self, coef: torch.Tensor, left: torch.Tensor) -> torch.Tensor | PendingMean:
        """``μ + coefᵀ left`` for ``coef (M, C)``, ``left = ΦΣ (M, D)``: a one-point update outside the
        early phase keeps it pending (:mod:`bayesal.laplace.pending`), up to
        :data:`~bayesal.laplace.pending.MAX_PENDING_MEAN_RANK` pending rows."""
        state = self._mean_state
        if coef.shape[0] == 1 and self._retained is None:  # no exact early-phase refit reads it
            if isinstance(state, torch.Tensor):
                return PendingMean(state, coef, left)
            if state.rank < MAX_PENDING_MEAN_RANK:
                return PendingMean(state.base, torch.cat([state.left, coef]), torch.cat([state.right, left]))
        mean = self.mean_
        # one point: the outer product (torch's addmm with an inner dimension of 1 is ~10x slower on
        # the CPU, 3 ms at C = 1,000, D = 768, where this pass over μ should cost what a copy costs)
        return torch.addr(mean, coef[0], left[0]) if coef.shape[0] == 1 else torch.addmm(mean, coef.T, left)

    def _mean_step(self, phi: torch.Tensor, resid: torch.Tensor, gamma: float) -> torch.Tensor:
        # residᵀ (Φ Σ): O(M D² + M C D), the spec's O(D² + CD) per point, instead of O(C D²)
        return self.mean_ + gamma * resid.T @ (phi @ self.covariance_)

    def sample_weights(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Weight samples ``(K, C, D)`` from ``N(μ, τΣ)`` (``τ`` the spread): each class row with the shared ``Σ``."""
        n_samples = self._sample_count(n_samples)
        eps = torch.randn(n_samples, self.num_classes_, self.num_features_, generator=generator,
                          dtype=self.dtype).to(self.device)
        return self.mean_ + math.sqrt(self.spread_) * (eps @ self.scale_tril.T)

    def weight_covariance(self) -> torch.Tensor:
        """``I_C ⊗ Σ (C·D, C·D)``: the covariance of row-major ``vec W`` (dense; refused above
        :data:`~bayesal.laplace.options.MAX_DENSE_PARAMETERS`, where ``Σ`` itself is what to use)."""
        self._check_fitted()
        p = self.num_classes_ * self.num_features_
        if p > MAX_DENSE_PARAMETERS:
            raise InvalidInputError(
                f"weight_covariance would form the dense (C·D)² = ({p}, {p}) matrix I_C ⊗ Σ ({8 * p * p / 2**30:,.1f} "
                f"GiB in float64), above the limit of {MAX_DENSE_PARAMETERS} parameters "
                "(bayesal.laplace.options.MAX_DENSE_PARAMETERS); use covariance (Σ, D × D), shared by every class"
            )
        eye = torch.eye(self.num_classes_, dtype=self.dtype, device=self.device)
        return torch.kron(eye, self.covariance_.contiguous())

    # ------------------------------------------------------------ fast paths
    def logit_moments(self, features: Any, *, compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MAP logits ``(N, C)`` and the predictive's logit variances ``τ σ² (N,)`` of one block of rows.

        With ``compute_dtype=torch.float32`` a float32 block is multiplied directly with float32 copies
        of the mean and ``Σ`` (made once per posterior state and cached; the state itself stays in
        :attr:`dtype`): twice the GEMM rate of float64 and no float64 copy of the block, at float32
        round-off (relative ~1e-6 in ``σ²``). The block is checked for NaN/inf through its results (a
        NaN/inf feature makes its row's ``σ²`` NaN/inf, as ``Σ`` is positive definite): ``O(N·C)``
        instead of a pass over the ``(N, D)`` block; a non-finite result is then traced to its rows.

        Parameters
        ----------
        features : array-like
            ``(N, D)`` rows, e.g. one chunk of an out-of-core pool.
        compute_dtype : torch.dtype, optional
            dtype of the products and of the results; ``None`` uses :attr:`dtype`.

        Returns
        -------
        tuple of torch.Tensor
            ``(logits (N, C), variance (N,))`` in ``compute_dtype``.
        """
        self._check_fitted()
        dt = self.dtype if compute_dtype is None else compute_dtype
        x = as_features(features, dim=self.num_features_, dtype=dt, device=self.device, check_finite=False)
        ops = getattr(self, "_lowp", None)
        if ops is None or ops.dtype != dt or ops.mean_of is not self.mean_ or ops.covariance_of is not self.covariance_:
            # mean_/covariance_ are replaced (never mutated) by an update, so identity tells staleness
            ops = _MomentOperands(dt, self.mean_, self.covariance_, self.mean_.to(dt), self.bias_.to(dt),
                                  self.covariance_.to(dt))
            self._lowp = ops
        d = self.num_features_
        if not ops.low_rank_tried and x.shape[0] >= LOW_RANK_MIN_ROWS_PER_FEATURE * d:
            # worth one eigendecomposition of Σ per posterior state: Σ = λ₀⁻¹ I − U Uᵀ with few directions
            # seen, then the variances cost O(D·r) per row instead of O(D²)
            u = isotropic_minus_low_rank(self.covariance_, 1.0 / self.prior_precision_, max_rank=d // 2)
            ops.low_rank, ops.low_rank_tried = (None if u is None else u.to(dt)), True
        z = torch.addmm(ops.bias, x, ops.mean.T)
        if ops.low_rank is None:
            var = row_quadratic_forms(x, ops.covariance)
        else:
            var = row_quadratic_forms_low_rank(x, 1.0 / self.prior_precision_, ops.low_rank)
        if not (bool(torch.isfinite(var).all()) and bool(torch.isfinite(z).all())):
            as_features(x)  # names the rows with NaN/inf (or beyond the dtype's safe scale)
            raise NumericalError(
                f"features overflow in {str(dt).replace('torch.', '')} products with the posterior (logit "
                "variances reach inf); rescale the features, or score in the posterior's dtype"
            )
        return z, (var if self.spread_ == 1.0 else var.mul_(self.spread_))

    def covariance_product(self, features: torch.Tensor) -> torch.Tensor:
        """``Φ Σ (N, D)`` (rows ``Σφ_i``) for checked ``features (N, D)`` or ``Σφ (D,)`` for one ``(D,)``.

        Kernels between point sets follow as ``(A Σ) Bᵀ``.

        Parameters
        ----------
        features : torch.Tensor
            Output of :meth:`check_features` (or a row of it).

        Returns
        -------
        torch.Tensor
            Same shape as ``features``.
        """
        self._check_fitted()
        if features.ndim == 1:
            return self.covariance_ @ features
        return features @ self.covariance_

    def logit_step(
        self, phi: torch.Tensor, target: torch.Tensor, *, logits: torch.Tensor | None = None, gamma: float | None = None
    ) -> LogitStep:
        """The rank-1 update with ``(φ, y)`` as a :class:`~bayesal.laplace.update.LogitStep`, to
        refresh cached logits/variances of any point set in ``O(N·D)`` (``step.apply``) without
        re-inference. This posterior is not modified (absorb the point with :meth:`update`).

        Parameters
        ----------
        phi : torch.Tensor
            Checked features of the point ``(D,)``.
        target : torch.Tensor
            Its (possibly soft) label ``(C,)``.
        logits : torch.Tensor, optional
            Cached MAP logits at ``φ`` ``(C,)``; computed when not given.
        gamma : float, optional
            Step size; ``None`` uses :attr:`gamma`.

        Returns
        -------
        LogitStep
        """
        self._check_fitted()
        z = self._logits(phi.unsqueeze(0))[0] if logits is None else logits
        probs = torch.softmax(z, dim=0)
        gamma = self._step_size(gamma)
        sigma_phi = self.covariance_ @ phi
        if self.steps == 1:
            m = float(curvature_weights(probs.unsqueeze(0), self.curvature)[0])
            return LogitStep(phi, sigma_phi, target, probs, m, gamma, self.spread_)
        # iterated update: the same Newton iteration as update(steps=k), in the point's logit space;
        # ``probs`` is set so that γ (y − probs) / (1 + m φᵀΣφ) is the iterated logit coefficient
        q = float(torch.dot(phi, sigma_phi))
        res = span_newton(z.new_full((1, 1), q), z.unsqueeze(0), target.unsqueeze(0), self._span_curvature(), gamma,
                          self.steps)
        coef, m = res.coef[0], float(res.factor[0]) ** 2
        eff = target - coef * (1.0 + m * q) / gamma if gamma > 0 else probs
        return LogitStep(phi, sigma_phi, target, eff, m, gamma, self.spread_)

    def absorb(self, step: LogitStep) -> LastLayerLaplace:
        """Absorb the point of ``step`` — made by :meth:`logit_step` on this posterior as it is now — in
        place: the posterior :meth:`update` with that point and label gives, without solving its Newton
        iteration again (``O(D² + C·D)``; equal up to round-off).

        With ``s = Σφ``: ``μ' = μ + (γ / d)(y − p̃) ⊗ s`` and ``Σ' = Σ − (m / d) s sᵀ``, ``d = 1 + m φᵀs``
        (``p̃`` the step's probabilities, which carry its Newton iteration).

        Parameters
        ----------
        step : LogitStep
            The step of the point to absorb.

        Returns
        -------
        LastLayerLaplace
            ``self``.
        """
        self._check_fitted()
        d = step.denom
        mean = torch.addr(self.mean_, step.target - step.probs, step.sigma_phi, alpha=step.gamma / d)
        cov = torch.addr(self.covariance_, step.sigma_phi, step.sigma_phi, alpha=-step.curvature / d)
        self._set_updated(mean, cov, self.n_updates_ + 1)
        self._retained = None  # a simulated point is not among the early phase's labeled rows
        return self
