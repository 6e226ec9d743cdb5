"""Small, numerically careful linear-algebra helpers for SPD matrices."""

from __future__ import annotations

import numpy as np
import torch

from bayesal.exceptions import NumericalError
from bayesal.utils.blas import blas_threads

__all__ = [
    "symmetrize",
    "safe_cholesky",
    "spd_inverse",
    "is_spd",
    "feature_spectrum",
    "row_quadratic_forms",
    "isotropic_minus_low_rank",
    "row_quadratic_forms_low_rank",
]

#: Rows per block of :func:`row_quadratic_forms`: the ``(block, D)`` product stays in cache.
QUADRATIC_FORM_BLOCK = 1024


def symmetrize(a: torch.Tensor) -> torch.Tensor:
    """Return ``(A + Aᵀ) / 2``; removes the asymmetry that round-off adds."""
    return 0.5 * (a + a.transpose(-1, -2))


def safe_cholesky(a: torch.Tensor, jitter: float = 1e-10, max_tries: int = 8) -> torch.Tensor:
    """Lower Cholesky factor of an SPD matrix ``(D, D)``.

    Tries the plain factorization first; on failure adds diagonal jitter that grows by 10x per try,
    relative to the mean diagonal, so that nearly singular covariances still factor.
    """
    a = symmetrize(a)
    factor, info = torch.linalg.cholesky_ex(a)
    if not bool(torch.any(info != 0)):
        return factor
    scale = a.diagonal(dim1=-2, dim2=-1).abs().mean().clamp_min(torch.finfo(a.dtype).tiny)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for k in range(max_tries):
        factor, info = torch.linalg.cholesky_ex(a + (jitter * 10**k) * scale * eye)
        if not bool(torch.any(info != 0)):
            return factor
    raise NumericalError(
        f"matrix is not positive definite even with jitter {jitter * 10 ** (max_tries - 1):.1e}"
        " x mean diagonal; check the features for NaN/inf or duplicated columns"
    )


def spd_inverse(a: torch.Tensor, jitter: float = 1e-10) -> torch.Tensor:
    """Inverse of an SPD matrix through its Cholesky factor (never ``torch.inverse``)."""
    return symmetrize(torch.cholesky_inverse(safe_cholesky(a, jitter=jitter)))


def is_spd(a: torch.Tensor, atol: float = 1e-10) -> bool:
    """True when ``a`` is symmetric (to ``atol`` relative) and its Cholesky factorization succeeds."""
    scale = a.abs().max().clamp_min(1.0)
    if not torch.allclose(a, a.transpose(-1, -2), atol=atol * float(scale), rtol=0.0):
        return False
    return not bool(torch.any(torch.linalg.cholesky_ex(a)[1] != 0))


def feature_spectrum(x: torch.Tensor, rtol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues ``e (r,)`` and orthonormal eigenvectors ``V (D, r)`` of ``ΦᵀΦ`` for ``x = Φ (N, D)``.

    For ``N ≥ D`` all ``D`` eigenpairs of ``ΦᵀΦ``; for ``N < D`` the ``r ≤ N`` pairs with
    ``e > rtol · max(e)`` from the ``N × N`` Gram matrix ``ΦΦᵀ`` (``V = Φᵀ U e^{-1/2}``), so the cost is
    ``O(min(N, D)³ + N D min(N, D))``. The directions left out are those ``Φ`` does not see.
    """
    n, d = x.shape
    if n >= d:
        e, v = torch.linalg.eigh(x.T @ x)
        return e.clamp_min(0), v
    e, u = torch.linalg.eigh(x @ x.T)
    keep = e > rtol * e.max().clamp_min(torch.finfo(x.dtype).tiny)
    e, u = e[keep], u[:, keep]
    return e, (x.T @ u) / e.sqrt()


def row_quadratic_forms(x: torch.Tensor, a: torch.Tensor, block: int = QUADRATIC_FORM_BLOCK) -> torch.Tensor:
    """``xᵢᵀ A xᵢ`` for every row of ``x (N, D)`` and ``A (D, D)``: ``(N,)`` in ``x``'s dtype.

    Computed ``block`` rows at a time into one reused ``(block, D)`` buffer: a single ``(N, D)``
    temporary of a large chunk would fall out of the caches (and be freshly page-faulted on every
    call), which costs about as much as the product itself; blocked, the cost is that of the GEMM.
    """
    n = x.shape[0]
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    if n == 0:
        return out
    buf = torch.empty(min(block, n), a.shape[1], dtype=x.dtype, device=x.device)
    for s in range(0, n, block):
        xb = x[s : s + block]
        t = buf[: xb.shape[0]]
        torch.mm(xb, a, out=t)
        torch.sum(t.mul_(xb), 1, out=out[s : s + xb.shape[0]])
    return out


def isotropic_minus_low_rank(a: torch.Tensor, scale: float, max_rank: int, rtol: float = 1e-12) -> torch.Tensor | None:
    """``U (D, r)`` with ``A = scale · I − U Uᵀ`` and ``r ≤ max_rank``, or ``None`` if ``A (D, D)`` has no
    such form.

    A last-layer posterior covariance ``(λ₀ I + Σᵢ mᵢ φᵢφᵢᵀ)⁻¹`` is ``λ₀⁻¹ I`` minus a positive
    semi-definite matrix of rank at most the number of points it has seen, so with few labels its
    quadratic forms cost ``O(D·r)`` instead of ``O(D²)`` (:func:`row_quadratic_forms_low_rank`). From
    the eigendecomposition of ``scale · I − A``: eigenvalues below ``rtol · scale`` are dropped (each
    changes ``xᵀAx`` by at most ``rtol · scale · ‖x‖²``); a clearly negative one means ``A`` is not of
    this form.
    """
    d = a.shape[0]
    e = symmetrize(scale * torch.eye(d, dtype=a.dtype, device=a.device) - a)
    # in float64 NumPy on one BLAS thread: the factor (and every variance from it) is then bit-identical
    # in every process, whatever its thread count (Ray workers and the driver score alike)
    with blas_threads(1):
        w_np, v_np = np.linalg.eigh(e.detach().to("cpu", torch.float64).numpy())
    w, v = torch.from_numpy(w_np), torch.from_numpy(v_np)
    if float(w[0]) < -1e3 * rtol * scale:  # A − scale·I has a positive direction: not this form
        return None
    keep = w > rtol * scale
    if int(keep.sum()) > max_rank:
        return None
    return (v[:, keep] * w[keep].sqrt()).to(dtype=a.dtype, device=a.device)


def row_quadratic_forms_low_rank(
    x: torch.Tensor, scale: float, u: torch.Tensor, block: int = QUADRATIC_FORM_BLOCK
) -> torch.Tensor:
    """``xᵢᵀ (scale · I − U Uᵀ) xᵢ = scale ‖xᵢ‖² − ‖Uᵀxᵢ‖²`` for every row of ``x (N, D)``, ``U (D, r)``:
    ``(N,)`` in ``x``'s dtype, ``O(N·D·r)``, in blocks through reused buffers as
    :func:`row_quadratic_forms`. Its round-off, ``~ε · scale · ‖xᵢ‖²``, is that of the dense form of
    a matrix whose largest eigenvalue is ``scale``."""
    n, d = x.shape
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    if n == 0:
        return out
    m = min(block, n)
    proj = torch.empty(m, u.shape[1], dtype=x.dtype, device=x.device)
    sq = torch.empty(m, d, dtype=x.dtype, device=x.device)
    low = torch.empty(m, dtype=x.dtype, device=x.device)
    for s in range(0, n, block):
        xb = x[s : s + block]
        k = xb.shape[0]
        torch.sum(torch.mul(xb, xb, out=sq[:k]), 1, out=out[s : s + k])
        torch.mm(xb, u, out=proj[:k])
        torch.sum(proj[:k].mul_(proj[:k]), 1, out=low[:k])
        out[s : s + k].mul_(scale).sub_(low[:k])
    return out
