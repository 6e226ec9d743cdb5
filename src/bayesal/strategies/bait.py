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
The ``C × C`` blocks ``P_x P_xᵀ``, ``Q_x P_xᵀ`` and ``P_x S P_xᵀ`` are accumulated as columns arrive.
Cost: ``O(N N_F D)`` once plus ``O(N N_F C² + (N + N_F) C² r)`` per pick (``r = t·C``).
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
        p_x_buf = x.new_zeros(n, c, b * c)  # P_x = V_xᵀ Z, filled C columns per pick
        p_f_buf = x.new_zeros(fx.shape[0], c, b * c)  # P_u = V_uᵀ Z
        pp = x.new_zeros(n, c, c)  # P_x P_xᵀ
        qp = x.new_zeros(n, c, c)  # Q_x P_xᵀ with Q_x = Σ_u K_xu A_u P_u
        psp = x.new_zeros(n, c, c)  # P_x S P_xᵀ with S = Σ_u P_uᵀ P_u
        alive = torch.ones(n, dtype=torch.bool, device=x.device)
        picks, utils = [], []
        for t in range(b):
            p_x, p_f = p_x_buf[:, :, : t * c], p_f_buf[:, :, : t * c]
            inner = kappa.view(n, 1, 1) * ata_x - pp + eye  # I + G_t(x, x)
            cross = a_x.transpose(1, 2) @ qp
            numer = term1 - cross - cross.transpose(1, 2) + psp
            # tr(inner⁻¹ numer) through batched Cholesky inverses (inner is SPD, ≥ I)
            delta = (torch.cholesky_inverse(torch.linalg.cholesky_ex(inner)[0]) * numer).sum((1, 2))
            delta = torch.where(alive, delta, torch.full_like(delta, -torch.inf))
            s = argmax_first(delta)
            picks.append(s)
            utils.append(delta[s])
            alive[s] = False
            # the pick's C new Woodbury columns, seen through every candidate and every pool point
            chol = safe_cholesky(inner[s])
            a_s, ps = a_x[s], p_x[s]
            g_xs = k_xf[:, s].view(n, 1, 1) * (a_x.transpose(1, 2) @ a_s) - p_x @ ps.T
            g_fs = k_xf[s].view(-1, 1, 1) * (a_f.transpose(1, 2) @ a_s) - p_f @ ps.T
            chol_inv_t = torch.linalg.solve_triangular(chol, eye, upper=False).T  # L⁻ᵀ
            new_x = g_xs @ chol_inv_t
            new_f = g_fs @ chol_inv_t
            new_q = (k_xf @ (a_f @ new_f).reshape(fx.shape[0], -1)).view(n, c, c)
            s_cross = torch.einsum("ukj,ukl->jl", p_f, new_f)  # new off-diagonal block of S, (r, C)
            s_new = torch.einsum("ukj,ukl->jl", new_f, new_f)  # new diagonal block of S, (C, C)
            ps_cross = (p_x @ s_cross) @ new_x.transpose(1, 2)
            psp += ps_cross + ps_cross.transpose(1, 2) + new_x @ s_new @ new_x.transpose(1, 2)
            pp += new_x @ new_x.transpose(1, 2)
            qp += new_q @ new_x.transpose(1, 2)
            p_x_buf[:, :, t * c : (t + 1) * c] = new_x
            p_f_buf[:, :, t * c : (t + 1) * c] = new_f
        idx = torch.tensor(picks, dtype=torch.long, device=x.device)
        return QueryResult(indices=idx, utilities=torch.stack(utils).to(x.dtype))

    def __repr__(self) -> str:
        return f"BAIT(pool={self.pool!r})"
