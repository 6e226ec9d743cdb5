"""The closed-form Bayesian update of a Gaussian last-layer posterior (docs/method.md §4), as pure functions.

The generalized Gauss–Newton Hessian of new data is written as a factor ``U (K, P)`` with
``H = Uᵀ U``: for the shared covariance ``U = sqrt(m) Φ`` (``K = M`` points, ``P = D``); for the full
multi-class GGN each point contributes ``C`` rows (``P = C·D``). Both forms below then serve both
structures:

* ``woodbury_downdate``: ``Σ' = Σ − ΣUᵀ (I + UΣUᵀ)⁻¹ UΣ`` in one block, ``O(K P² + K³)``;
* ``rank1_downdate``: the same, one row at a time (Sherman–Morrison), ``O(P²)`` per row.

Writing ``(m⁻¹ + φᵀΣφ)⁻¹`` as ``(1 + uᵀΣu)⁻¹`` with ``u = sqrt(m) φ`` keeps points with ``m = 0``
harmless and the inner matrix ≥ I, so its Cholesky factorization is always well conditioned.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import torch

from bayesal.exceptions import InvalidInputError, NumericalError

from .linalg import TiledRows, safe_cholesky
from .options import Curvature

__all__ = [
    "DEFAULT_GAMMA",
    "check_gamma",
    "curvature_weights",
    "fisher_factor",
    "classes_seen",
    "shared_factor",
    "full_ggn_factor",
    "woodbury_downdate",
    "rank1_downdate",
    "rank1_logit_update",
    "rank1_kernel_downdate",
    "batch_update_reference",
    "LogitStep",
    "DEFAULT_STEPS",
    "FIDELITY_OPTIONS",
    "PAPER_OPTIONS",
    "DEFAULT_CURVATURE",
    "check_steps",
    "kernel_downdate",
    "gram_downdate",
    "span_newton",
    "weight_newton",
    "WeightNewtonResult",
    "SpanNewtonResult",
    "SpanCurvature",
    "PointCurvature",
    "SoftmaxCurvature",
]

CURVATURES = Curvature.choices()

#: Largest step size ``γ`` an update accepts (the paper's is 10).
MAX_GAMMA = 1e6

#: Default step size ``γ`` of the mean update: 1, the Newton step of the posterior's own objective.
DEFAULT_GAMMA = 1.0

#: Default number of (damped) Newton steps of an update.
DEFAULT_STEPS = 5

#: Default curvature of the shared covariance: ``p_max (1 − p_max)``, the softmax's own scale.
DEFAULT_CURVATURE = Curvature.CATEGORICAL

#: The defaults as keyword arguments of :class:`~bayesal.laplace.LastLayerLaplace`: the update options
#: that track the exact retrain of the posterior's objective (measured by
#: ``benchmarks/update_vs_retrain.py``): categorical curvature, γ = 1 and 5 damped Newton steps.
FIDELITY_OPTIONS: dict[str, Any] = {"curvature": "categorical", "gamma": 1.0, "steps": 5}

#: The paper's update: one closed-form step with ``γ = 10`` and the label-independent 'gaussian'
#: curvature, from the first label on (no exact early phase), for reproducing its experiments with
#: ``HeadConfig.paper()`` and ``prior_precision=1``.
PAPER_OPTIONS: dict[str, Any] = {"curvature": "gaussian", "gamma": 10.0, "steps": 1, "exact_until": 0}


#: Halvings of a Newton step an update tries before it takes no step.
BACKTRACK_HALVINGS = 20

#: Largest logit change (in nats) of a Newton step after which an update stops iterating early.
CONVERGED_LOGIT_CHANGE = 1e-10



def check_steps(steps: int) -> int:
    """``steps`` as an int; ``InvalidInputError`` unless it is an integer ``>= 1``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def check_gamma(gamma: float) -> float:
    """``gamma`` as a float; ``ValueError`` unless it is a finite number ``>= 0``.

    Parameters
    ----------
    gamma : float
        Step size of the mean update.

    Returns
    -------
    float
        The validated step size.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise InvalidInputError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if gamma > MAX_GAMMA:
        raise InvalidInputError(f"gamma must be at most {MAX_GAMMA:g} (a step that scales the new likelihood "
                                f"beyond it overflows the update), got {gamma!r}")
    return float(gamma)


@overload
def curvature_weights(probs: torch.Tensor, curvature: str | Curvature) -> torch.Tensor: ...


@overload
def curvature_weights(probs: np.ndarray, curvature: str | Curvature) -> np.ndarray: ...


def curvature_weights(probs: torch.Tensor | np.ndarray, curvature: str | Curvature) -> torch.Tensor | np.ndarray:
    """Per-point curvature ``m (N,)``: 1 for 'gaussian', ``p_max (1 − p_max)`` for 'categorical'
    (a torch tensor for a tensor, a NumPy array for an array)."""
    gaussian = Curvature.parse(curvature) is Curvature.GAUSSIAN
    if isinstance(probs, np.ndarray):
        pmax = probs.max(1)
        return np.ones_like(pmax) if gaussian else pmax * (1.0 - pmax)
    if gaussian:
        return torch.ones(probs.shape[0], dtype=probs.dtype, device=probs.device)
    pmax = probs.max(dim=1).values
    return pmax * (1.0 - pmax)


def classes_seen(targets: torch.Tensor) -> int:
    """Number of classes that some row of one-hot or soft ``targets (n, C)`` puts mass on."""
    return int((targets.sum(0) > 0).sum())


def fisher_factor(probs: torch.Tensor) -> torch.Tensor:
    """``A (N, C, C)`` with ``A Aᵀ = diag p − p pᵀ`` for ``probs (N, C)``: ``A = diag √p − p √pᵀ``.

    The softmax Hessian (Fisher) of each point factored without an eigendecomposition.
    """
    sq = probs.clamp_min(0).sqrt()
    return torch.diag_embed(sq) - probs.unsqueeze(2) * sq.unsqueeze(1)


def shared_factor(phi: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Hessian factor ``U = sqrt(m) Φ`` ``(M, D)`` for the shared covariance ``I_C ⊗ Σ``."""
    return phi * m.clamp_min(0).sqrt().unsqueeze(1)


def full_ggn_factor(phi: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Factor ``U (M·C, C·D)`` of ``Σ_j (diag p_j − p_j p_jᵀ) ⊗ φ_j φ_jᵀ`` (row-major ``vec W``).

    Uses ``diag p − p pᵀ = A Aᵀ`` with ``A = diag(√p) − p √pᵀ``, so no eigendecomposition is needed.
    """
    m, c = probs.shape
    a = fisher_factor(probs)  # (M, C, C), a[j, c, k]
    # U_j[k, c*D + d] = A_j[c, k] φ_j[d]
    u = torch.einsum("jck,jd->jkcd", a, phi)
    return u.reshape(m * c, c * phi.shape[1])


def woodbury_downdate(cov: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(Σ⁻¹ + UᵀU)⁻¹`` from ``Σ (P, P)`` and ``U (K, P)`` in one block; returns a new ``(P, P)``.

    The correction ``(L⁻¹UΣ)ᵀ(L⁻¹UΣ)`` is a Gram matrix, so a symmetric ``Σ`` stays symmetric (up to the
    GEMM's round-off) without an extra ``O(P²)`` symmetrization pass.
    """
    us = u @ cov  # UΣ (K, P); row-major product, faster than Σ Uᵀ for small K
    return kernel_downdate(cov, us, us @ u.T)


def kernel_downdate(cov: torch.Tensor, left: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``Σ − Lᵀ (I + G)⁻¹ L`` for ``left L = UΣ (K, P)`` and ``inner G = UΣUᵀ (K, K)``: the Woodbury
    downdate when the products with ``Σ`` are already at hand. The correction ``(L⁻¹UΣ)ᵀ(L⁻¹UΣ)``
    (``L Lᵀ = I + G``) is a Gram matrix: a symmetric ``Σ`` stays symmetric up to round-off."""
    if left.shape[0] == 0:
        return cov.clone()
    inner = inner.clone()
    inner.diagonal().add_(1.0)
    chol = safe_cholesky(inner)
    return gram_downdate(cov, torch.linalg.solve_triangular(chol, left, upper=False))


def gram_downdate(cov: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """``Σ − HᵀH`` for ``half H (K, P)``: the Woodbury downdate once ``H = L⁻¹UΣ`` is known; a new tensor."""
    return torch.addmm(cov, half.T, half, alpha=-1.0)


def rank1_downdate(cov: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sherman–Morrison chain over the rows of ``U (K, P)``; equals ``woodbury_downdate`` exactly.

    Each step subtracts ``s sᵀ / (1 + uᵀs)`` with ``s = Σu``; an outer product is symmetric, so symmetry
    is preserved (up to round-off) without re-symmetrizing.
    """
    out = cov.clone()
    for k in range(u.shape[0]):
        s = out @ u[k]
        denom = 1.0 + float(torch.dot(u[k], s))
        out.addr_(s, s, alpha=-1.0 / denom)
    return out


def rank1_logit_update(
    features: torch.Tensor | TiledRows,
    logits: torch.Tensor,
    variance: torch.Tensor,
    sigma_phi: torch.Tensor,
    phi: torch.Tensor,
    target: torch.Tensor,
    probs: torch.Tensor,
    curvature: float,
    gamma: float,
    return_products: bool = False,
    inplace: bool = False,
    spread: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """Cached ``z (N, C)``, ``σ² (N,)`` after the rank-1 update with one point, in ``O(N·D)``
    (and the products ``Φs (N,)`` with ``return_products=True``).

    ``features Φ (N, D)``, ``sigma_phi s = Σφ (D,)`` (old Σ), ``target y (C,)``, ``probs p (C,)``
    (MAP softmax at ``φ``), ``curvature m``. With ``u = √m φ``:
    ``σ²' = σ² − (√m Φs)² / (1 + m φᵀs)``, ``Σ'φ = s / (1 + m φᵀs)``, ``z' = z + γ (Φ Σ'φ) ⊗ (y − p)``.
    The products ``Φs`` are taken in the dtype of ``features`` (e.g. a float32 copy of a large pool,
    as :class:`~bayesal.laplace.linalg.TiledRows`: half the memory traffic) and accumulated into the caches in their own dtype. ``inplace=True``
    updates ``logits`` and ``variance`` themselves (same values; no fresh ``(N, C)`` per pick).
    ``spread τ``: the cached variances are the predictive's ``τ σ²`` (the posterior's spread), so their
    downdate is scaled by ``τ`` too.
    """
    denom = 1.0 + curvature * float(torch.dot(phi, sigma_phi))
    phi_s = (features @ sigma_phi.to(features.dtype)).to(logits.dtype)  # (N,)
    shrink = -curvature / denom if spread == 1.0 else -spread * curvature / denom
    if inplace:
        new_var = variance.addcmul_(phi_s, phi_s, value=shrink)
        new_logits = logits.addr_(phi_s, target - probs, alpha=gamma / denom)
    else:
        new_var = torch.addcmul(variance, phi_s, phi_s, value=shrink)
        new_logits = torch.addr(logits, phi_s, target - probs, alpha=gamma / denom)
    if return_products:
        return new_logits, new_var, phi_s
    return new_logits, new_var


def rank1_kernel_downdate(
    kernel: torch.Tensor, left_s: torch.Tensor, right_s: torch.Tensor, curvature: float, denom: float
) -> torch.Tensor:
    """``A Σ' Bᵀ`` from ``kernel = A Σ Bᵀ (R, N)`` after a rank-1 update with one point (in place).

    ``left_s = A Σφ (R,)``, ``right_s = B Σφ (N,)``, ``denom = 1 + m φᵀΣφ``: Sherman–Morrison gives
    ``A Σ' Bᵀ = A Σ Bᵀ − (m / denom) (AΣφ)(BΣφ)ᵀ``.
    """
    kernel -= (curvature / denom) * torch.outer(left_s, right_s)
    return kernel


def batch_update_reference(
    ref_logits: torch.Tensor,
    ref_var: torch.Tensor,
    k_rb: torch.Tensor,
    k_bb: torch.Tensor,
    targets: torch.Tensor,
    probs: torch.Tensor,
    curv: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference ``z (R, C)``, ``σ² (R,)`` after a Woodbury update with a batch of ``b`` points.

    ``k_rb = Φ_R Σ Φ_Bᵀ (R, b)``, ``k_bb = Φ_B Σ Φ_Bᵀ (b, b)``, ``targets``/``probs (b, C)`` (MAP
    softmax), ``curv m (b,)``. With ``S = diag √m``: ``Φ_R Σ' Φ_Bᵀ = K_RB − K_RB S (I + S K_BB S)⁻¹ S K_BB``
    and ``σ²' = σ² − ‖L⁻¹ S K_BR‖²`` column-wise, ``L Lᵀ = I + S K_BB S``.
    """
    sq = curv.clamp_min(0).sqrt()
    inner = sq[:, None] * k_bb * sq[None, :]
    inner.diagonal().add_(1.0)
    chol = safe_cholesky(inner)
    w = torch.linalg.solve_triangular(chol, sq[:, None] * k_rb.T, upper=False)  # (b, R)
    var = ref_var - (w * w).sum(0)
    v = torch.linalg.solve_triangular(chol, sq[:, None] * k_bb, upper=False)  # (b, b)
    k_new = k_rb - w.T @ v  # Φ_R Σ' Φ_Bᵀ
    return ref_logits + gamma * k_new @ (targets - probs), var


@dataclass(frozen=True)
class LogitStep:
    """One simulated rank-1 update with ``(φ, y)`` on a shared-covariance posterior, for caches.

    Built by :meth:`LastLayerLaplace.logit_step`. Attributes: ``phi (D,)``, ``sigma_phi = Σφ (D,)``
    under the covariance before the step, ``target y (C,)``, ``probs`` the MAP softmax at ``φ``,
    ``curvature m``, the step size ``gamma`` and the posterior's ``spread τ`` (cached variances are the
    predictive's ``τ σ²``).
    """

    phi: torch.Tensor
    sigma_phi: torch.Tensor
    target: torch.Tensor
    probs: torch.Tensor
    curvature: float
    gamma: float
    spread: float = 1.0

    @property
    def denom(self) -> float:
        """``1 + m φᵀΣφ``."""
        return 1.0 + self.curvature * float(torch.dot(self.phi, self.sigma_phi))

    def apply(
        self, features: torch.Tensor | TiledRows, logits: torch.Tensor, variance: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached MAP ``logits (N, C)`` and ``variance (N,)`` of ``features (N, D)`` after the step.

        Parameters
        ----------
        features : torch.Tensor
            ``(N, D)`` rows the cache belongs to, in the posterior's dtype (or a lower precision such
            as float32, in which the products are then taken).
        logits, variance : torch.Tensor
            ``(N, C)`` and ``(N,)`` before the step.

        Returns
        -------
        tuple of torch.Tensor
            New ``(logits, variance)``, ``O(N·D)``.
        """
        out = rank1_logit_update(features, logits, variance, self.sigma_phi, self.phi, self.target, self.probs,
                                 self.curvature, self.gamma, spread=self.spread)
        return out[0], out[1]

    def apply_with_products(
        self, features: torch.Tensor | TiledRows, logits: torch.Tensor, variance: torch.Tensor, inplace: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`apply` (bit-identical results) that also returns the products ``Φ Σφ (N,)``, from which
        a caller can bound how far each cached logit moved (``|γ/denom · (Φ Σφ)_n| · span(y − p)``).
        ``inplace=True`` updates the caller's ``logits`` and ``variance`` in place."""
        out = rank1_logit_update(features, logits, variance, self.sigma_phi, self.phi, self.target, self.probs,
                                 self.curvature, self.gamma, return_products=True, inplace=inplace, spread=self.spread)
        return out[0], out[1], out[2]

    def downdate_kernel(self, kernel: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``kernel = A Σ Bᵀ (R, N)`` for ``left A (R, D)``, ``right B (N, D)`` → ``A Σ' Bᵀ`` (in place)."""
        return rank1_kernel_downdate(kernel, left @ self.sigma_phi, right @ self.sigma_phi, self.curvature, self.denom)


@dataclass(frozen=True)
class SpanNewtonResult:
    """Result of :func:`span_newton`.

    ``coef`` gives the new mean as ``μ + coef``-combination of the columns of ``ΣJᵀ`` (``(M, C)`` for the
    shared covariance, ``(M·C,)`` for the full GGN); ``factor`` is the curvature factor ``F`` of the
    last linearisation (``(M,)`` square roots ``√m`` or ``(M·C, M·C)`` block-diagonal), for the covariance
    ``Σ' = Σ − ΣJᵀF (I + FᵀKF)⁻¹ FᵀJΣ``; ``whiten`` the matrix ``W = L⁻¹Fᵀ`` (``L Lᵀ = I + FᵀKF``,
    factored by the last step anyway; ``(M, M)`` or ``(M·C, M·C)``) that writes it as
    ``Σ' = Σ − (WJΣ)ᵀ(WJΣ)``; ``probs (M, C)`` the
    softmax at that linearisation (from which the Hessian factor of the new points themselves follows);
    ``steps`` the Newton steps taken.
    """

    coef: torch.Tensor
    factor: torch.Tensor
    whiten: torch.Tensor
    probs: torch.Tensor
    steps: int


class SpanCurvature(ABC):
    """How a covariance structure linearises the new points' likelihood in :func:`span_newton`.

    Each Newton step writes the curvature of the ``M`` new points as ``Λ = F Fᵀ`` in their logit space and
    solves with ``I + FᵀKF`` (``K`` the kernel ``JΣJᵀ``): an SPD matrix whatever the rank of ``Λ``. A
    structure supplies the factor ``F`` and the shape of the coefficients ``a`` (``δ = ΣJᵀa``). NumPy
    float64 arrays throughout (the iteration's small matrices).
    """

    @abstractmethod
    def coef_shape(self, points: int, classes: int) -> tuple[int, ...]:
        """Shape of the coefficients ``a``: one per row of ``J``."""

    @abstractmethod
    def factor(self, probs: np.ndarray) -> np.ndarray:
        """Curvature factor ``F`` at the softmax ``probs (M, C)`` of the current linearisation."""

    @abstractmethod
    def inner(self, factor: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """``I + FᵀKF``."""

    @abstractmethod
    def solve(self, factor: np.ndarray, chol: np.ndarray, k_grad: np.ndarray) -> np.ndarray:
        """``F (I + FᵀKF)⁻¹ Fᵀ K g`` from the Cholesky factor of :meth:`inner` and ``K g``."""

    @abstractmethod
    def whiten(self, factor: np.ndarray, chol_inv: np.ndarray) -> np.ndarray:
        """``W = L⁻¹Fᵀ`` (``L Lᵀ = I + FᵀKF``), so that ``Σ' = Σ − (WJΣ)ᵀ(WJΣ)``."""


class PointCurvature(SpanCurvature):
    """One curvature ``m_j`` per point (``Λ = diag m``): the shared covariance ``I_C ⊗ Σ``, ``J = Φ``."""

    def __init__(self, curvature: str | Curvature) -> None:
        self.gaussian = Curvature.parse(curvature) is Curvature.GAUSSIAN

    def coef_shape(self, points: int, classes: int) -> tuple[int, ...]:
        return (points, classes)

    def factor(self, probs: np.ndarray) -> np.ndarray:
        # curvature_weights written out: its dispatch costs more than the arithmetic at this size
        if self.gaussian:
            return np.ones(probs.shape[0])
        pmax = probs.max(1)  # ≤ 1: exp of a log-softmax
        return np.sqrt(pmax * (1.0 - pmax))

    def inner(self, factor: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        inner = np.multiply.outer(factor, factor)
        inner *= kernel
        inner.flat[:: inner.shape[0] + 1] += 1.0
        return inner

    def solve(self, factor: np.ndarray, chol: np.ndarray, k_grad: np.ndarray) -> np.ndarray:
        return factor[:, None] * _chol_solve(chol, factor[:, None] * k_grad)

    def whiten(self, factor: np.ndarray, chol_inv: np.ndarray) -> np.ndarray:
        return chol_inv * factor[None, :]


class SoftmaxCurvature(SpanCurvature):
    """The softmax Hessian ``diag p − ppᵀ`` per point (block-diagonal ``Λ``): the full multi-class GGN,
    ``J`` with ``M·C`` point-major rows."""

    def coef_shape(self, points: int, classes: int) -> tuple[int, ...]:
        return (points * classes,)

    def factor(self, probs: np.ndarray) -> np.ndarray:
        return scipy.linalg.block_diag(*fisher_factor(torch.from_numpy(probs)).numpy())

    def inner(self, factor: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        inner = factor.T @ kernel @ factor
        inner.flat[:: inner.shape[0] + 1] += 1.0
        return inner

    def solve(self, factor: np.ndarray, chol: np.ndarray, k_grad: np.ndarray) -> np.ndarray:
        return factor @ _chol_solve(chol, factor.T @ k_grad)

    def whiten(self, factor: np.ndarray, chol_inv: np.ndarray) -> np.ndarray:
        return chol_inv @ factor.T


def _backtracked(objective: Callable[[Any, Any], tuple[float, Any]], point: Any, point_aux: Any, step: Any,
                 step_aux: Any, current: float) -> tuple[Any, Any, float, Any]:
    """Backtracking for the damped Newton iterations: the full ``step``, else its halves, until the
    objective at ``point + step`` does not increase (keeps the iteration monotone where the curvature
    underestimates the true one). ``*_aux`` is a linear image of the point carried along (its logits or
    its product with the precision). Returns ``(step, step_aux, objective, log_p)``; after
    :data:`BACKTRACK_HALVINGS` failed halvings a zero step, the same objective and ``log_p = None``."""
    alpha = 1.0
    for _ in range(BACKTRACK_HALVINGS):
        s_try, a_try = (step, step_aux) if alpha == 1.0 else (alpha * step, alpha * step_aux)
        value, log_p = objective(point + s_try, point_aux + a_try)
        if value <= current:
            return s_try, a_try, value, log_p
        alpha *= 0.5
    return 0.0 * step, 0.0 * step_aux, current, None


def span_newton(
    kernel: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    model: SpanCurvature,
    gamma: float,
    steps: int,
) -> SpanNewtonResult:
    """Damped Newton iteration of an update, in the span of the new points.

    The objective ``½ δᵀΣ⁻¹δ − γ Σ_j log p(y_j | φ_j, μ + δ)`` has its gradient in the range of
    ``ΣJᵀ`` (``J`` maps the weights to the new points' logits), and so has every Newton step
    ``−(Σ⁻¹ + JᵀΛJ)⁻¹ ∇ = −ΣJᵀ (I + ΛK)⁻¹ (a − γ(y − p))``. Writing ``δ = ΣJᵀa`` therefore keeps the
    whole iteration in the ``M``-point logit space: logits ``z + K a`` with the kernel ``K = JΣJᵀ``
    and ``δᵀΣ⁻¹δ = aᵀKa``; the ``D``-dimensional mean and the covariance are formed once afterwards.
    Each step linearises at the current logits with the structure's curvature ``model``: ``Λ = m I`` per
    point for the shared covariance (:class:`PointCurvature`, ``O(M³)`` per step), the softmax Hessian
    for the full GGN (:class:`SoftmaxCurvature`, ``O((M·C)³)``). One step is the closed-form update; with ``steps > 1`` each step backtracks on
    the objective and the iteration stops early once a step moves no logit by more than
    :data:`CONVERGED_LOGIT_CHANGE`. The returned factor is the curvature of the last linearisation,
    for the covariance.

    Parameters
    ----------
    kernel : torch.Tensor
        ``ΦΣΦᵀ (M, M)`` (shared) or ``JΣJᵀ (M·C, M·C)`` over point-major ``(j, c)`` (full).
    logits : torch.Tensor
        ``(M, C)`` logits of the new points at the current mean.
    targets : torch.Tensor
        ``(M, C)`` one-hot or soft labels.
    model : SpanCurvature
        The covariance structure's linearisation of the new points' likelihood.
    gamma, steps
        Step size and Newton steps.
    """
    # The iteration works on (M, M)/(M·C, M·C) matrices: NumPy's per-call cost is a fraction of torch's
    # at that size, so it runs in float64 NumPy on the CPU and hands torch tensors back in the inputs'
    # dtype and device. It carries K a and the log-softmax along (a trial point's logits and log-
    # probabilities become the next linearisation's), so each step multiplies by K twice.
    out_dtype, out_device = logits.dtype, logits.device
    k_mat, z0, y = (t.detach().to("cpu", torch.float64).numpy() for t in (kernel, logits, targets))
    k_mat = 0.5 * (k_mat + k_mat.T)  # JΣJᵀ is symmetric; drop the round-off of its two products
    m_pts, c = z0.shape
    gy = gamma * y
    coef = np.zeros(model.coef_shape(m_pts, c))
    k_coef = np.zeros_like(coef)  # K a
    log_p = _log_softmax(z0)


    def objective(a: np.ndarray, k_a: np.ndarray) -> tuple[float, np.ndarray]:
        lp = _log_softmax(z0 + k_a.reshape(m_pts, c))
        return 0.5 * float(np.vdot(a, k_a)) - float(np.vdot(gy, lp)), lp

    current = -float(np.vdot(gy, log_p))  # the objective at a = 0
    factor = chol = np.zeros(0)
    probs = np.zeros((m_pts, c))
    taken = 0
    for _ in range(steps):
        probs = np.exp(log_p)
        grad = coef - (gy - gamma * probs).reshape(coef.shape)
        # (I + FFᵀK)⁻¹ g = g − F (I + FᵀKF)⁻¹ FᵀK g: an SPD solve whatever the curvature's rank
        k_grad = k_mat @ grad
        factor = model.factor(probs)
        chol = _spd_factor(model.inner(factor, k_mat))
        solved = model.solve(factor, chol, k_grad)
        step = solved - grad
        k_step = k_mat @ step
        if steps > 1:
            step, k_step, current, trial = _backtracked(objective, coef, k_coef, step, k_step, current)
            log_p = log_p if trial is None else trial
        coef = coef + step
        k_coef = k_coef + k_step
        taken += 1
        # converged: a further step would move no logit and re-linearise at the same point
        if taken < steps and float(np.abs(k_step).max()) <= CONVERGED_LOGIT_CHANGE:
            break
    # L⁻¹ of an (M, M) factor: ~M³/3 flops, and the downdate's (M, P) solve becomes one small product
    chol_inv, info = scipy.linalg.lapack.dtrtri(chol, lower=1)
    if info != 0:
        raise NumericalError(f"triangular inverse failed (LAPACK info {info})")
    whiten = model.whiten(factor, chol_inv)
    coef_t, factor_t, whiten_t, probs_t = (torch.from_numpy(np.ascontiguousarray(v)).to(dtype=out_dtype, device=out_device)
                                           for v in (coef, factor, whiten, probs))
    return SpanNewtonResult(coef_t, factor_t, whiten_t, probs_t, taken)


@dataclass(frozen=True)
class WeightNewtonResult:
    """Result of :func:`weight_newton`: the mean's change ``delta (C, D)``, the covariance at the last
    linearisation (``(Σ⁻¹ + Φᵀ diag(m) Φ)⁻¹ (D, D)`` shared, ``(Σ⁻¹ + Σ_j Λ_j ⊗ φ_jφ_jᵀ)⁻¹ (C·D, C·D)``
    full), the softmax ``probs (M, C)`` there and the Newton steps taken."""

    delta: torch.Tensor
    covariance: torch.Tensor
    probs: torch.Tensor
    steps: int


class _SharedWeights:
    """The Newton system of the shared covariance ``I_C ⊗ Σ``: one ``(D, D)`` matrix for every class."""

    def __init__(self, sigma: np.ndarray, phi: np.ndarray, model: PointCurvature) -> None:
        self.phi, self.model = phi, model
        self.prec = _spd_inverse(sigma)
        self.chol = np.zeros(0)

    def prec_mul(self, delta: np.ndarray) -> np.ndarray:
        return delta @ self.prec

    def newton_step(self, probs: np.ndarray, grad: np.ndarray) -> np.ndarray:
        weighted = self.phi * self.model.factor(probs)[:, None]
        hess = weighted.T @ weighted
        hess += self.prec
        self.chol = _spd_factor(hess)
        return -_chol_solve(self.chol, grad.T).T  # H is symmetric: −∇ H⁻¹ row by row

    def covariance(self) -> np.ndarray:
        return _spd_inverse_from(self.chol)


class _FullWeights:
    """The Newton system of the full GGN over class-major ``vec W``: ``(C·D, C·D)``."""

    def __init__(self, sigma: np.ndarray, phi: np.ndarray, classes: int) -> None:
        self.phi, self.classes = phi, classes
        self.prec = _spd_inverse(sigma)
        self.chol = np.zeros(0)

    def prec_mul(self, delta: np.ndarray) -> np.ndarray:
        return (self.prec @ delta.reshape(-1)).reshape(delta.shape)

    def newton_step(self, probs: np.ndarray, grad: np.ndarray) -> np.ndarray:
        c, d = self.classes, self.phi.shape[1]
        hess = self.prec.copy()
        for a in range(c):  # Σ_j (diag p_j − p_j p_jᵀ)[a, b] φ_j φ_jᵀ, block (a, b)
            for b in range(a, c):
                weight = (probs[:, a] if a == b else 0.0) - probs[:, a] * probs[:, b]
                block = (self.phi * weight[:, None]).T @ self.phi
                hess[a * d:(a + 1) * d, b * d:(b + 1) * d] += block
                if a != b:
                    hess[b * d:(b + 1) * d, a * d:(a + 1) * d] += block.T
        self.chol = _spd_factor(hess)
        return -_chol_solve(self.chol, grad.reshape(-1, 1)).reshape(grad.shape)

    def covariance(self) -> np.ndarray:
        return _spd_inverse_from(self.chol)


def weight_newton(
    cov: torch.Tensor,
    x: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    model: SpanCurvature,
    gamma: float,
    steps: int,
) -> WeightNewtonResult:
    """:func:`span_newton` in the weight space: for a batch larger than the weights' dimension.

    The same damped Newton iterates (same objective, curvature, backtracking and stopping rule) written
    with the precision instead of the kernel: the step is ``−H⁻¹ ∇`` with ``H = Σ⁻¹ + JᵀΛJ`` and
    ``∇ = Σ⁻¹ δ − γ Jᵀ(Y − P)`` for the change ``δ`` of the mean. For the shared covariance
    (:class:`PointCurvature`) ``H`` is one ``(D, D)`` matrix, ``O(M·D² + D³)`` a step; for the full GGN
    (:class:`SoftmaxCurvature`) it is ``(C·D, C·D)``, ``O(M·C²·D² + (C·D)³)``; the span's steps cost
    ``O(M³)`` and ``O((M·C)³)``: the weight space is the cheaper form once ``M`` exceeds ``D``.

    Parameters
    ----------
    cov : torch.Tensor
        ``Σ`` before the update: ``(D, D)`` shared, ``(C·D, C·D)`` full.
    x : torch.Tensor
        New rows ``Φ (M, D)``.
    logits : torch.Tensor
        ``(M, C)`` logits of the new rows at the current mean.
    targets : torch.Tensor
        ``(M, C)`` one-hot or soft labels.
    model : SpanCurvature
        The covariance structure's linearisation (:class:`PointCurvature` or :class:`SoftmaxCurvature`).
    gamma, steps
        Step size and Newton steps.
    """
    out_dtype, out_device = logits.dtype, logits.device
    sigma, phi, z0, y = (t.detach().to("cpu", torch.float64).numpy() for t in (cov, x, logits, targets))
    sigma = 0.5 * (sigma + sigma.T)
    if isinstance(model, PointCurvature):
        system: _SharedWeights | _FullWeights = _SharedWeights(sigma, phi, model)
    elif isinstance(model, SoftmaxCurvature):
        system = _FullWeights(sigma, phi, z0.shape[1])
    else:
        raise InvalidInputError(f"no weight-space Newton system for {type(model).__name__}")
    gy = gamma * y
    delta = np.zeros((z0.shape[1], phi.shape[1]))
    delta_prec = np.zeros_like(delta)  # Σ⁻¹ δ
    log_p = _log_softmax(z0)

    def objective(d: np.ndarray, d_prec: np.ndarray) -> tuple[float, np.ndarray]:
        lp = _log_softmax(z0 + phi @ d.T)
        return 0.5 * float(np.vdot(d, d_prec)) - float(np.vdot(gy, lp)), lp

    current = -float(np.vdot(gy, log_p))  # the objective at δ = 0
    probs = np.zeros_like(z0)
    taken = 0
    for _ in range(steps):
        probs = np.exp(log_p)
        step = system.newton_step(probs, delta_prec - (gy - gamma * probs).T @ phi)
        step_prec = system.prec_mul(step)
        if steps > 1:
            step, step_prec, current, trial = _backtracked(objective, delta, delta_prec, step, step_prec, current)
            log_p = log_p if trial is None else trial
        delta = delta + step
        delta_prec = delta_prec + step_prec
        taken += 1
        if taken < steps and float(np.abs(phi @ step.T).max()) <= CONVERGED_LOGIT_CHANGE:
            break
    delta_t, cov_t, probs_t = (torch.from_numpy(np.ascontiguousarray(v)).to(dtype=out_dtype, device=out_device)
                               for v in (delta, system.covariance(), probs))
    return WeightNewtonResult(delta_t, cov_t, probs_t, taken)


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    """``A⁻¹`` of SPD ``A``, symmetric."""
    return _spd_inverse_from(_spd_factor(a))


def _spd_inverse_from(chol: np.ndarray) -> np.ndarray:
    """``A⁻¹`` from the lower Cholesky factor of ``A``, symmetric."""
    inv = scipy.linalg.cho_solve((chol, True), np.eye(chol.shape[0]))
    return 0.5 * (inv + inv.T)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``z (M, C)``."""
    shifted = z - z.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def _spd_factor(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of SPD ``A`` (with :func:`safe_cholesky`'s jitter when the plain
    factorization fails)."""
    # LAPACK directly: the wrappers' checks cost more than the factorization of an M × M matrix
    chol, info = scipy.linalg.lapack.dpotrf(a, lower=1, clean=1)
    if info != 0:
        chol = safe_cholesky(torch.from_numpy(a)).numpy()
    return chol


def _chol_solve(chol: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``A⁻¹ B`` from the lower Cholesky factor of ``A``."""
    if chol.shape == (1, 1):
        # one point: the two triangular solves are two divisions (LAPACK's dpotrs takes ~16 ms for the
        # (1, C) right-hand side of 10,000 classes, column by column)
        return b / chol[0, 0] / chol[0, 0]
    sol, info = scipy.linalg.lapack.dpotrs(chol, b, lower=1)
    if info != 0:
        raise NumericalError(f"Cholesky solve failed (LAPACK info {info})")
    return sol
