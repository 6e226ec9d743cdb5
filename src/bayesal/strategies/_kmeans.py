"""A small seeded k-means (k-means++ seeding + Lloyd iterations) on tensors."""

from __future__ import annotations

import torch

from bayesal.exceptions import InvalidInputError

__all__ = ["sq_dists", "kmeans_pp_init", "kmeans"]


def sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(N, M)`` between rows of ``a (N, D)`` and ``b (M, D)``."""
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0)


def _draw(weights: torch.Tensor, alive: torch.Tensor, generator: torch.Generator) -> int:
    """Index drawn with probability ∝ ``weights`` among ``alive``; the first alive one if all are 0."""
    w = torch.where(alive, weights, torch.zeros_like(weights))
    total = float(w.sum())
    if not total > 0 or not torch.isfinite(w).all():
        return int(alive.nonzero()[0])
    return int(torch.multinomial((w / total).cpu(), 1, generator=generator)[0])


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices ``(k,)`` of distinct k-means++ seeds: first uniform, then ∝ squared distance."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise InvalidInputError(f"k-means needs 1 <= k <= number of points ({n}), got k={k}")
    alive = torch.ones(n, dtype=torch.bool, device=x.device)
    first = int(torch.randint(n, (1,), generator=generator)[0])
    picks = [first]
    alive[first] = False
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        i = _draw(d2, alive, generator)
        picks.append(i)
        alive[i] = False
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.tensor(picks, dtype=torch.long, device=x.device)


def kmeans(
    x: torch.Tensor, k: int, generator: torch.Generator, n_iter: int = 30, tol: float = 1e-7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on ``x (N, D)`` with k-means++ seeding; returns ``centers (k, D)``, ``assign (N,)``.

    Empty clusters keep their previous center. Deterministic for a seeded ``generator``.
    """
    centers = x[kmeans_pp_init(x, k, generator)].clone()
    assign = sq_dists(x, centers).argmin(1)
    for _ in range(n_iter):
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        new = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp_min(1).unsqueeze(1), centers)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        assign = sq_dists(x, centers).argmin(1)
        if shift <= tol * float((centers**2).sum().clamp_min(1e-300)):
            break
    return centers, assign
