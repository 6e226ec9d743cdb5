"""Leave-one-out predictives of labeled points: the posterior without one label, as a downdate.

A labeled point ``(φ_i, y_i)`` entered the posterior through its likelihood term: its GGN curvature
``H_i = J_iᵀ Λ_i J_i`` in the precision and its gradient ``J_iᵀ (p_i − y_i)`` in the objective whose
minimiser is the mean. Removing it never refits anything:

* **covariance** (exact, Woodbury): ``Σ₋ᵢ = (Σ⁻¹ − J_iᵀ Λ_i J_i)⁻¹``. Only the point's own logit
  covariance is needed: with ``S_i = J_i Σ J_iᵀ``, ``J_i Σ₋ᵢ J_iᵀ = S_i (I − Λ_i S_i)⁻¹``. For the shared
  covariance ``S_i = q_i I`` (``q_i = φ_iᵀΣφ_i``) and ``Λ_i = m_i I`` (the structure's per-point
  curvature), so this is the scalar ``q_i / (1 − m_i q_i)``; for the full GGN ``Λ_i = diag p_i − p_i p_iᵀ``
  and it is a ``C × C`` solve per point.
* **mean** (one Newton step, the approximation): the old data's gradient vanishes at ``μ``, so the
  objective without the point has gradient ``−J_iᵀ (p_i − y_i)`` there, and its Newton step with the
  Hessian ``Σ₋ᵢ⁻¹`` moves the point's logits by ``Δz_i = J_i Σ₋ᵢ J_iᵀ (p_i − y_i)`` (the first Newton
  iterate, from ``z_i``, towards the mode of the cavity ``N(μ, Σ) / p(y_i | W)``; iterating further
  was measured no closer to an exact refit without the point, see below).

The leave-one-out predictive is then the posterior's own (calibrated) predictive at ``φ_i``: the
mean-field softmax of ``z_i + Δz_i`` with the logit variance ``τ J_i Σ₋ᵢ J_iᵀ`` (``τ`` the posterior's
spread, ``λ`` its mean-field scale) — what :meth:`~bayesal.laplace.LastLayerLaplace.predict_proba` would
give at ``φ_i`` under the downdated posterior. All points at once cost one pass of ``O(N·D²)`` (shared;
``O(N·C²·D²)`` full) for the logit (co)variances and ``O(N·C)`` (``O(N·C³)``) after that.

What is approximated, besides the Newton step of the mean:

* the curvature ``Λ_i`` removed is the one at the current mean; the precision holds the one at the
  point's own linearisation (the same at a fresh fit; after updates they differ by the mean's drift).
  Should ``1 − m_i q_i`` (or ``I − Λ_i S_i``) not be positive the removed curvature exceeds what the
  precision holds, and the downdate is floored at :data:`MIN_DENOMINATOR`;
* the bias is a point estimate of the posterior and is kept;
* the other points' curvature and gradients are those of the Gaussian the posterior keeps of them (an
  exact refit without the point re-linearises all of them).

The error against an exact refit without the point (same λ₀ and spread) is measured by
``tests/laplace/test_leave_one_out.py`` and ``benchmarks/label_errors.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bayesal.exceptions import InvalidInputError
from bayesal.utils import as_targets

from .predictive import predictive_from_logits
from .update import curvature_weights

if TYPE_CHECKING:
    from .posterior import LastLayerLaplace

__all__ = ["LeaveOneOut", "leave_one_out", "MIN_DENOMINATOR"]

#: Floor of ``1 − m q`` (and of the eigenvalues of ``I − Λ S``): a point whose removed curvature would
#: exceed what the precision holds keeps a finite, large leave-one-out variance.
MIN_DENOMINATOR = 1e-6


@dataclass(frozen=True)
class LeaveOneOut:
    """Leave-one-out predictives of ``N`` labeled points.

    Attributes
    ----------
    probs : torch.Tensor
        ``(N, C)`` the predictive at each point under the posterior without its label.
    given : torch.Tensor
        ``(N,)`` the probability ``probs`` gives the point's own label (soft labels: ``Σ_c y_c p_c``).
    logits : torch.Tensor
        ``(N, C)`` the point's MAP logits under the downdated mean.
    variance : torch.Tensor
        ``(N,)`` (shared) or ``(N, C, C)`` (full) the downdated logit (co)variance, without the spread.
    """

    probs: torch.Tensor
    given: torch.Tensor
    logits: torch.Tensor
    variance: torch.Tensor

    @property
    def doubt(self) -> torch.Tensor:
        """``1 − given (N,)``: how much the rest of the labels doubt each given label."""
        return 1.0 - self.given


def leave_one_out(posterior: LastLayerLaplace, features: Any, labels: Any) -> LeaveOneOut:
    """The leave-one-out predictive of each labeled point ``features (N, D)``, ``labels (N,)``.

    The points must be among those the posterior absorbed (by :meth:`fit` or :meth:`update`): each one's
    likelihood term is removed by a downdate of the current posterior (see the module docstring for the
    formulas and what they approximate), vectorised over all points, never a refit.

    Parameters
    ----------
    posterior : LastLayerLaplace
        A fitted posterior (shared or full covariance).
    features : array-like
        ``(N, D)`` the labeled points.
    labels : array-like
        ``(N,)`` their class indices, or soft labels ``(N, C)``.

    Returns
    -------
    LeaveOneOut
    """
    x = posterior.check_features(features, name="labeled features")
    c = posterior.num_classes
    y = as_targets(labels, c, n=x.shape[0], dtype=posterior.dtype, device=posterior.device)
    z = posterior.logits(x, checked=True)
    cov = posterior._cat([posterior._logit_cov_chunk(ch) for ch in posterior._chunks(x, posterior._per_row_cost())],
                         posterior._var_shape())
    p = torch.softmax(z, dim=-1)
    if cov.ndim == 1:
        m = curvature_weights(p, posterior.curvature)
        var = cov / (1.0 - m * cov).clamp_min(MIN_DENOMINATOR)
        z_loo = z + var.unsqueeze(1) * (p - y)
    elif cov.ndim == 3:
        var = _full_downdate(cov, p)
        z_loo = z + (var @ (p - y).unsqueeze(2)).squeeze(2)
    else:  # pragma: no cover - every registered structure gives (N,) or (N, C, C)
        raise InvalidInputError(f"leave_one_out needs logit variances (N,) or (N, C, C), got {tuple(cov.shape)}")
    spread = posterior.fitted_spread
    probs = predictive_from_logits(z_loo, var * spread if spread != 1.0 else var, posterior.lambda_mf)
    return LeaveOneOut(probs=probs, given=(probs * y).sum(1), logits=z_loo, variance=var)


def _softmax_hessian(p: torch.Tensor) -> torch.Tensor:
    """``diag p − p pᵀ (N, C, C)``."""
    return torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)


def _full_downdate(s: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``S (I − Λ S)⁻¹ (N, C, C)`` with ``Λ = diag p − ppᵀ``: the point's logit covariance under the
    posterior without its GGN term (Woodbury, written as ``(I − SΛ)⁻¹ S``), symmetrised."""
    eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
    out = torch.linalg.solve(eye - s @ _softmax_hessian(p), s)
    return 0.5 * (out + out.transpose(1, 2))
