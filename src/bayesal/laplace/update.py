"""The closed-form Bayesian update of a Gaussian last-layer posterior (SPEC §4), as pure functions.

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

import torch

from .linalg import safe_cholesky

__all__ = [
    "curvature_weights",
    "shared_factor",
    "full_ggn_factor",
    "woodbury_downdate",
    "rank1_downdate",
    "newton_mean_step_shared",
    "newton_mean_step_full",
]

CURVATURES = ("gaussian", "categorical")


def curvature_weights(probs: torch.Tensor, curvature: str) -> torch.Tensor:
    """Per-point curvature ``m (N,)``: 1 for 'gaussian', ``p_max (1 − p_max)`` for 'categorical'."""
    if curvature == "gaussian":
        return torch.ones(probs.shape[0], dtype=probs.dtype, device=probs.device)
    if curvature == "categorical":
        pmax = probs.max(dim=1).values
        return pmax * (1.0 - pmax)
    raise ValueError(f"unknown curvature {curvature!r}; choose one of {CURVATURES}")


def shared_factor(phi: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Hessian factor ``U = sqrt(m) Φ`` ``(M, D)`` for the shared covariance ``I_C ⊗ Σ``."""
    return phi * m.clamp_min(0).sqrt().unsqueeze(1)


def full_ggn_factor(phi: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Factor ``U (M·C, C·D)`` of ``Σ_j (diag p_j − p_j p_jᵀ) ⊗ φ_j φ_jᵀ`` (row-major ``vec W``).

    Uses ``diag p − p pᵀ = A Aᵀ`` with ``A = diag(√p) − p √pᵀ``, so no eigendecomposition is needed.
    """
    m, c = probs.shape
    sq = probs.clamp_min(0).sqrt()
    a = torch.diag_embed(sq) - probs.unsqueeze(2) * sq.unsqueeze(1)  # (M, C, C), a[j, c, k]
    # U_j[k, c*D + d] = A_j[c, k] φ_j[d]
    u = torch.einsum("jck,jd->jkcd", a, phi)
    return u.reshape(m * c, c * phi.shape[1])


def woodbury_downdate(cov: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(Σ⁻¹ + UᵀU)⁻¹`` from ``Σ (P, P)`` and ``U (K, P)`` in one block; returns a new ``(P, P)``.

    The correction ``(L⁻¹UΣ)ᵀ(L⁻¹UΣ)`` is a Gram matrix, so a symmetric ``Σ`` stays symmetric without
    an extra ``O(P²)`` symmetrization pass.
    """
    if u.shape[0] == 0:
        return cov.clone()
    us = u @ cov  # UΣ (K, P); row-major product, faster than Σ Uᵀ for small K
    inner = us @ u.T
    inner.diagonal().add_(1.0)
    chol = safe_cholesky(inner)
    left = torch.linalg.solve_triangular(chol, us, upper=False)  # L⁻¹ UΣ, (K, P)
    return torch.addmm(cov, left.T, left, alpha=-1.0)


def rank1_downdate(cov: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sherman–Morrison chain over the rows of ``U (K, P)``; equals ``woodbury_downdate`` exactly.

    Each step subtracts ``s sᵀ / (1 + uᵀs)`` with ``s = Σu``; an outer product is exactly symmetric,
    so symmetry is preserved without re-symmetrizing.
    """
    out = cov.clone()
    for k in range(u.shape[0]):
        s = out @ u[k]
        denom = 1.0 + float(torch.dot(u[k], s))
        out.addr_(s, s, alpha=-1.0 / denom)
    return out


def newton_mean_step_shared(
    mean: torch.Tensor,
    cov_new: torch.Tensor,
    phi: torch.Tensor,
    targets: torch.Tensor,
    probs: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """``μ'_c = μ_c + γ Σ' Σ_j (y_jc − p_jc) φ_j`` for ``μ (C, D)``, ``Σ' (D, D)``, ``Φ (M, D)``."""
    resid = targets - probs  # (M, C); minus the NLL gradient is residᵀ Φ
    if phi.shape[0] < mean.shape[0]:
        # residᵀ (Φ Σ'): O(M D² + M C D), the spec's O(D² + CD) per point, instead of O(C D²)
        return mean + gamma * resid.T @ (phi @ cov_new)
    return mean + gamma * (resid.T @ phi) @ cov_new


def newton_mean_step_full(
    mean: torch.Tensor,
    cov_new: torch.Tensor,
    phi: torch.Tensor,
    targets: torch.Tensor,
    probs: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """Full-GGN version: ``vec μ' = vec μ + γ Σ' vec(Σ_j (y_j − p_j) φ_jᵀ)`` with ``Σ' (CD, CD)``."""
    grad = ((targets - probs).T @ phi).reshape(-1)
    return mean + gamma * (cov_new @ grad).reshape(mean.shape)
