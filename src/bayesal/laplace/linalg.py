"""Small, numerically careful linear-algebra helpers for SPD matrices."""

from __future__ import annotations

import torch

from bayesal.exceptions import NumericalError

__all__ = ["symmetrize", "safe_cholesky", "spd_inverse", "is_spd", "feature_spectrum", "row_quadratic_forms"]

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
