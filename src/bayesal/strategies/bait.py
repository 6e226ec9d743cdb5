"""BAIT (Ash et al. 2021, "Gone Fishing"): greedy forward Fisher-information design on the last layer.

Notation (``C`` classes, ``D`` features, ``P = C·D``, vec order ``(c, d)`` = row-major ``vec W``):

* per-point Fisher at the MAP head ``I(x) = B_x ⊗ φ_x φ_xᵀ`` with ``B_x = diag p_x − p_x p_xᵀ``,
  written ``V_x V_xᵀ`` with ``V_x = A_x ⊗ φ_x`` ``(P, C)``, ``A_x A_xᵀ = B_x``;
* the design matrix starts at the labeled-set information ``M_0 = λ I + Σ_{l∈L} I(l)`` (textbook
  BAIT, current model's probabilities) and grows by ``I(s)`` per pick; the target is the pool
  Fisher ``F = Σ_u I(u)``; the greedy step minimises ``tr((M_0 + Σ_{s∈batch} I(s))⁻¹ F)``, i.e.
  maximises ``Δ(x) = tr[(I + V_xᵀM⁻¹V_x)⁻¹ V_xᵀM⁻¹FM⁻¹V_x]`` (``C × C`` per candidate).
  The reference code averages both Fishers (labeled over ``|L| + b``); with sums as here that is
  the same design up to the scale of ``λ``.
* ``information="laplace"`` instead starts from the posterior precision (``I_C ⊗ Σ⁻¹`` or the full
  GGN precision): a Bayesian variant, not the published BAIT.

Computation: ``W = M_0⁻¹``, ``F`` and ``H = W F W`` are ``P × P``; with ``M_t⁻¹ = W − Z Zᵀ``
(``Z (P, t·C)`` the Woodbury columns of the picks) every candidate needs only ``C × C`` blocks:
``V_xᵀWV_x``, ``V_xᵀHV_x`` once, and ``P_xP_xᵀ``, ``Q_xP_xᵀ``, ``P_xSP_xᵀ`` (``P_x = V_xᵀZ``,
``Q_x = V_xᵀWFZ``, ``S = ZᵀFZ``) accumulated as columns arrive. The Kronecker structure of
``V_x`` turns every ``V_xᵀ Y`` into one ``(N, D) @ (D, C·k)`` product.
Memory ``O(P² + N·C² + chunk)``; time ``O((N + N_F + L)·C²D² + P³)`` once plus ``O(N·C²D + P²C)``
per pick.
"""

from __future__ import annotations

import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import BLOCK_ELEMENTS, LastLayerLaplace, fisher_factor, safe_cholesky, spd_inverse, symmetrize

from ._common import argmax_first, prepare
from .base import LabeledSet, QueryResult, QueryStrategy
from .registration import register_strategy

__all__ = ["BAIT"]


def _row_chunks(n: int, per_row: int, chunk_elements: int) -> list[slice]:
    step = max(1, chunk_elements // max(1, per_row))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _fisher_sum(x: torch.Tensor, a: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """``Σ_i B_i ⊗ φ_i φ_iᵀ`` ``(P, P)`` for ``x (N, D)``, ``a (N, C, C)`` (``B = A Aᵀ``), row-chunked."""
    n, d = x.shape
    c = a.shape[1]
    acc = x.new_zeros(c * c * d, d)
    for rows in _row_chunks(n, c * c * d, chunk_elements):
        bm = a[rows] @ a[rows].transpose(1, 2)  # (n, C, C)
        y = (bm.reshape(-1, c * c, 1) * x[rows].unsqueeze(1)).reshape(-1, c * c * d)
        acc += y.T @ x[rows]  # [(c, c', d), e] = Σ_i B_i[c, c'] φ_i[d] φ_i[e]
    return acc.view(c, c, d, d).permute(0, 2, 1, 3).reshape(c * d, c * d)


def _kron_quad(x: torch.Tensor, a: torch.Tensor, m: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """``V_xᵀ M V_x`` ``(N, C, C)`` for symmetric ``m (P, P)``, without forming any ``V_x``."""
    n, d = x.shape
    c = a.shape[1]
    m_perm = m.reshape(c, d, c, d).permute(1, 0, 2, 3).reshape(d, c * c * d)  # [d, (c, c', e)]
    k = x.new_empty(n, c, c)
    for rows in _row_chunks(n, c * c * d, chunk_elements):
        t = (x[rows] @ m_perm).view(-1, c * c, d)
        k[rows] = (t @ x[rows].unsqueeze(2)).view(-1, c, c)  # φᵀ M_{cc'} φ
    return a.transpose(1, 2) @ k @ a


def _kron_apply(x: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``V_xᵀ Y`` ``(N, C, k)`` for ``y (P, k)``: one ``(N, D) @ (D, C·k)`` product."""
    n, d = x.shape
    c, k = a.shape[1], y.shape[1]
    y_perm = y.reshape(c, d, k).permute(1, 0, 2).reshape(d, c * k)
    return a.transpose(1, 2) @ (x @ y_perm).view(n, c, k)


def _kron_vec(a: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``V = A ⊗ φ`` ``(P, C)`` for one point, ``a (C, C)``, ``phi (D,)``."""
    return (a.unsqueeze(1) * phi.view(1, -1, 1)).reshape(-1, a.shape[1])


@register_strategy("bait")
class BAIT(QueryStrategy):
    """Greedy forward BAIT with the last-layer Fisher at the MAP head (no backward pruning).

    ``pool="all"`` (default, as in the reference) takes the target Fisher ``F`` over candidates ∪
    labeled, ``"candidates"`` over the candidates only. ``information="labeled"`` (default):
    ``M_0 = λI + Σ_L I(l)`` (standard BAIT; ``lam`` defaults to the posterior's prior precision);
    ``"laplace"``: ``M_0`` = the posterior precision (``lam`` unused). Rows are processed in blocks of
    about ``chunk_elements`` temporaries. Utilities are ``Δ(x)`` at the pick.

    Several ``(C·D, C·D)`` float64 matrices are held and one is inverted, so memory grows as (C·D)² and
    time as (C·D)³; ``max_params`` (default 8192: ≈ 0.5 GiB per matrix) turns a query that would take
    minutes and many GiB into an immediate ``ValueError`` naming the limit. Raise it knowingly.
    """

    name = "bait"

    def __init__(
        self,
        pool: str = "all",
        information: str = "labeled",
        lam: float | None = None,
        chunk_elements: int = BLOCK_ELEMENTS,
        max_params: int = 8192,
    ) -> None:
        if pool not in ("all", "candidates"):
            raise InvalidInputError(f"unknown pool {pool!r}; choose 'all' or 'candidates'")
        if information not in ("labeled", "laplace"):
            raise InvalidInputError(f"unknown information {information!r}; choose 'labeled' or 'laplace'")
        if lam is not None and not float(lam) > 0:
            raise InvalidInputError(f"lam must be > 0, got {lam}")
        if int(chunk_elements) < 1:
            raise InvalidInputError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.pool = pool
        self.information = information
        self.lam = None if lam is None else float(lam)
        self.chunk_elements = int(chunk_elements)
        self.max_params = int(max_params)

    def _initial_inverse(self, posterior: LastLayerLaplace, lx: torch.Tensor) -> torch.Tensor:
        """``W = M_0⁻¹`` ``(P, P)`` in float64."""
        c, d = posterior.num_classes, posterior.num_features
        f64 = torch.float64
        if self.information == "laplace":
            return posterior.weight_covariance().to(f64).contiguous().clone()
        lam = posterior.fitted_prior_precision if self.lam is None else self.lam
        m0 = lam * torch.eye(c * d, dtype=f64, device=lx.device)
        if lx.shape[0]:
            a_l = fisher_factor(torch.softmax(posterior.logits(lx).to(f64), dim=1))
            m0 += _fisher_sum(lx.to(f64), a_l, self.chunk_elements)
        return spd_inverse(m0)

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
    ) -> QueryResult:
        p = posterior.num_classes * posterior.num_features
        if p > self.max_params:
            raise InvalidInputError(
                f"BAIT needs (C·D)² = {p}² float64 matrices ({8 * p * p / 2**30:.1f} GiB each) for C = "
                f"{posterior.num_classes} classes and D = {posterior.num_features} features, above max_params = "
                f"{self.max_params}; reduce D (e.g. PCA of the features), use another strategy, or pass a larger "
                "max_params knowingly"
            )
        x_in, lx, _, b, _ = prepare(posterior, candidates, labeled, batch_size, generator)
        # traces are differences of large sums: float64 throughout
        x = x_in.to(torch.float64)
        n, c, ce = x.shape[0], posterior.num_classes, self.chunk_elements
        a_x = fisher_factor(torch.softmax(posterior.logits(x).to(torch.float64), dim=1))  # (N, C, C)
        fisher = _fisher_sum(x, a_x, ce)
        if self.pool == "all" and lx.shape[0]:
            a_l = fisher_factor(torch.softmax(posterior.logits(lx).to(torch.float64), dim=1))
            fisher += _fisher_sum(lx.to(torch.float64), a_l, ce)
        w = self._initial_inverse(posterior, lx)
        wf = w @ fisher
        h = symmetrize(wf @ w)  # W F W
        g0 = _kron_quad(x, a_x, w, ce)  # V_xᵀ W V_x
        n0 = _kron_quad(x, a_x, h, ce)  # V_xᵀ W F W V_x
        eye = torch.eye(c, dtype=x.dtype, device=x.device)
        z_buf = x.new_zeros(w.shape[0], b * c)  # Woodbury columns Z of the picks
        pp = x.new_zeros(n, c, c)  # P_x P_xᵀ
        qp = x.new_zeros(n, c, c)  # Q_x P_xᵀ
        psp = x.new_zeros(n, c, c)  # P_x S P_xᵀ
        alive = torch.ones(n, dtype=torch.bool, device=x.device)
        picks, utils = [], []
        for t in range(b):
            inner = g0 - pp + eye  # I + V_xᵀ M_t⁻¹ V_x, SPD and ≥ I
            numer = n0 - qp - qp.transpose(1, 2) + psp  # V_xᵀ M_t⁻¹ F M_t⁻¹ V_x
            delta = torch.linalg.solve(inner, numer).diagonal(dim1=1, dim2=2).sum(1)  # tr(inner⁻¹ numer)
            delta = torch.where(alive, delta, torch.full_like(delta, -torch.inf))
            s = argmax_first(delta)
            picks.append(s)
            utils.append(delta[s])
            alive[s] = False
            if t == b - 1:
                break
            # the pick's C new Woodbury columns z = M_t⁻¹ V_s L⁻ᵀ, L Lᵀ = inner_s
            z_old = z_buf[:, : t * c]
            v_s = _kron_vec(a_x[s], x[s])
            u = w @ v_s - z_old @ (z_old.T @ v_s)
            chol = safe_cholesky(inner[s])
            z_new = torch.linalg.solve_triangular(chol, u.T, upper=False).T
            fz = fisher @ z_new
            s_cross = z_old.T @ fz  # new off-diagonal block of S, (t·C, C)
            s_new = z_new.T @ fz  # new diagonal block of S, (C, C)
            new_p = _kron_apply(x, a_x, z_new)  # new columns of P_x
            new_q = _kron_apply(x, a_x, wf @ z_new)  # new columns of Q_x = V_xᵀ W F Z
            old_ps = _kron_apply(x, a_x, z_old @ s_cross)  # P_x,old · s_cross
            new_pt = new_p.transpose(1, 2)
            cross = old_ps @ new_pt
            psp += cross + cross.transpose(1, 2) + new_p @ s_new @ new_pt
            pp += new_p @ new_pt
            qp += new_q @ new_pt
            z_buf[:, t * c : (t + 1) * c] = z_new
        idx = torch.tensor(picks, dtype=torch.long, device=x.device)
        return QueryResult(indices=idx, utilities=torch.stack(utils).to(x_in.dtype))

    def __repr__(self) -> str:
        return f"BAIT(pool={self.pool!r}, information={self.information!r}, lam={self.lam})"
