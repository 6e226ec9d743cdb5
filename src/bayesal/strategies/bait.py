"""BAIT: greedy Fisher-information design on the last layer, in kernel form.

Notation (``C`` classes, ``D`` features, vec order ``(c, d)``):

* candidate Fisher ``I(x) = B_x ⊗ φ_x φ_xᵀ`` with ``B_x = diag p_x − p_x p_xᵀ`` at the Laplace mean,
  written ``V_x V_xᵀ`` with ``V_x = A_x ⊗ φ_x`` ``(CD, C)``, ``A_x A_xᵀ = B_x``;
* the design matrix starts at the posterior precision ``M_0 = I_C ⊗ Σ⁻¹`` and grows by ``V_s V_sᵀ`` per
  pick; the target is the pool Fisher ``F = Σ_u V_u V_uᵀ``;
* greedy step: maximise the drop of ``tr(M⁻¹ F)``, ``Δ(x) = tr[(I + V_xᵀM⁻¹V_x)⁻¹ V_xᵀM⁻¹FM⁻¹V_x]``
  (the standard low-rank trace form, ``C × C`` per candidate).

Never forming a ``CD × CD`` matrix: with ``M_t⁻¹ = I ⊗ Σ − Z Zᵀ`` (``Z`` the Woodbury columns of the
picks), every quantity is a ``C × C`` block built from the kernel ``K_xu = φ_xᵀ Σ φ_u`` and the
projections ``P_x = V_xᵀ Z``; the new columns of ``P`` after a pick ``s`` are
``G_t(x, s) L⁻ᵀ`` with ``G_t(x, s) = K_xs A_xᵀA_s − P_x P_sᵀ``, ``L Lᵀ = I + G_t(s, s)``.
Cost: ``O(N N_F D)`` once plus ``O(N N_F C² + N C² r)`` per pick (``r = t·C``).
"""

from __future__ import annotations

import torch

from ..linalg import safe_cholesky
from ..posterior import LastLayerLaplace
from ._common import argmax_first, prepare
from .base import LabeledSet, QueryResult, QueryStrategy

__all__ = ["BAIT", "fisher_factor"]


def fisher_factor(probs: torch.Tensor) -> torch.Tensor:
    """``A (N, C, C)`` with ``A Aᵀ = diag p − p pᵀ`` (``A = diag √p − p √pᵀ``)."""
    sq = probs.clamp_min(0).sqrt()
    return torch.diag_embed(sq) - probs.unsqueeze(2) * sq.unsqueeze(1)


class BAIT(QueryStrategy):
    """Greedy forward BAIT with the last-layer Fisher at the Laplace mean.

    ``pool="all"`` (default) takes the target Fisher over candidates ∪ labeled, ``"candidates"`` over
    the candidates only. ``M_0`` is the posterior precision, so a posterior updated by
    :class:`~.sequential.Sequential` is taken into account. Utilities are ``Δ(x)`` at the pick.
    """

    name = "bait"

    def __init__(self, pool: str = "all") -> None:
        if pool not in ("all", "candidates"):
            raise ValueError(f"unknown pool {pool!r}; choose 'all' or 'candidates'")
        self.pool = pool

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
        candidate_labels: torch.Tensor | None = None,
    ) -> QueryResult:
        x, lx, _, b, _ = prepare(posterior, candidates, labeled, batch_size, generator)
        if posterior.hessian != "shared":
            raise ValueError("BAIT needs a posterior with hessian='shared' (covariance I_C ⊗ Σ)")
        fx = torch.cat([x, lx]) if self.pool == "all" else x
        n, c = x.shape[0], posterior.num_classes_
        sig = posterior.covariance_
        a_f = fisher_factor(torch.softmax(posterior.logits(fx), dim=1))  # (NF, C, C)
        a_x = a_f[:n]
        b_f = a_f @ a_f.transpose(1, 2)  # B_u
        k_xf = (x @ sig) @ fx.T  # (N, NF)
        kappa = k_xf[:, :n].diagonal().clone()  # candidates are the first n pool rows
        ata_x = a_x.transpose(1, 2) @ a_x  # A_xᵀA_x  (N, C, C)
        w1 = ((k_xf**2) @ b_f.reshape(-1, c * c)).view(n, c, c)
        term1 = a_x.transpose(1, 2) @ w1 @ a_x  # constant part of the numerator
        eye = torch.eye(c, dtype=x.dtype, device=x.device)
        p_x = x.new_zeros(n, c, 0)  # V_xᵀ Z
        p_f = x.new_zeros(fx.shape[0], c, 0)  # V_uᵀ Z
        q = x.new_zeros(n, c, 0)  # Σ_u K_xu A_u P_u
        s_mat = x.new_zeros(0, 0)  # Σ_u P_uᵀ P_u
        alive = torch.ones(n, dtype=torch.bool, device=x.device)
        picks, utils = [], []
        for _ in range(b):
            g_xx = kappa.view(n, 1, 1) * ata_x - p_x @ p_x.transpose(1, 2)
            cross = a_x.transpose(1, 2) @ q @ p_x.transpose(1, 2)
            numer = term1 - cross - cross.transpose(1, 2) + p_x @ s_mat @ p_x.transpose(1, 2)
            inner = g_xx + eye
            delta = torch.linalg.solve(inner, numer).diagonal(dim1=1, dim2=2).sum(1)
            delta = torch.where(alive, delta, torch.full_like(delta, -torch.inf))
            s = argmax_first(delta)
            picks.append(s)
            utils.append(delta[s])
            alive[s] = False
            # Woodbury columns of the pick, seen through every candidate and every pool point
            chol = safe_cholesky(inner[s])
            a_s, ps = a_x[s], p_x[s]
            g_xs = k_xf[:, s].view(n, 1, 1) * (a_x.transpose(1, 2) @ a_s) - p_x @ ps.T
            g_fs = k_xf[s].view(-1, 1, 1) * (a_f.transpose(1, 2) @ a_s) - p_f @ ps.T
            new_x = torch.linalg.solve_triangular(chol, g_xs.transpose(1, 2), upper=False).transpose(1, 2)
            new_f = torch.linalg.solve_triangular(chol, g_fs.transpose(1, 2), upper=False).transpose(1, 2)
            new_q = (k_xf @ (a_f @ new_f).reshape(fx.shape[0], -1)).view(n, c, c)
            cross_s = torch.einsum("ukj,ukl->jl", p_f, new_f)  # (r, C)
            new_s = torch.einsum("ukj,ukl->jl", new_f, new_f)
            s_mat = torch.cat([torch.cat([s_mat, cross_s], 1), torch.cat([cross_s.T, new_s], 1)], 0)
            p_x = torch.cat([p_x, new_x], 2)
            p_f = torch.cat([p_f, new_f], 2)
            q = torch.cat([q, new_q], 2)
        idx = torch.tensor(picks, dtype=torch.long, device=x.device)
        return QueryResult(indices=idx, utilities=torch.stack(utils).to(x.dtype))

    def __repr__(self) -> str:
        return f"BAIT(pool={self.pool!r})"
