"""Predictive distributions of a Gaussian last layer (docs/method.md §3), as pure functions on tensors."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from bayesal.exceptions import InvalidInputError

from .linalg import safe_cholesky
from .options import BLOCK_ELEMENTS, Predictive

__all__ = [
    "DEFAULT_LAMBDA_MF",
    "PREDICTIVES",
    "centered",
    "logit_scale",
    "mean_field_probs",
    "mean_field_scaled",
    "mc_probs",
    "mc_logit_samples",
    "logit_sample_blocks",
    "predictive_from_logits",
    "tempered",
]

DEFAULT_LAMBDA_MF = math.pi / 8
PREDICTIVES = Predictive.choices()


def centered(cov: torch.Tensor) -> torch.Tensor:
    """``P S P`` with ``P = I − 11ᵀ/C`` for logit covariances ``cov (..., C, C)``.

    Softmax ignores a shift shared by all logits, so the variance along the all-ones direction
    (large under the full GGN) must not damp the mean-field logits.
    """
    return cov - cov.mean(-1, keepdim=True) - cov.mean(-2, keepdim=True) + cov.mean((-2, -1), keepdim=True)


def logit_scale(variance: torch.Tensor) -> torch.Tensor:
    """Sampling scale of the logits: ``σ (N,)`` from ``σ² (N,)``, or the Cholesky factor of ``(N, C, C)``."""
    if variance.ndim == 1:
        return variance.clamp_min(0).sqrt()
    return safe_cholesky(variance)


def mean_field_probs(
    logits: torch.Tensor, variance: torch.Tensor, lambda_mf: float = DEFAULT_LAMBDA_MF, temperature: float = 1.0
) -> torch.Tensor:
    """``softmax(z / sqrt(T² + λ σ²))``; ``logits (N, C)``, ``variance (N,)`` or per class ``(N, C)``.

    ``T`` is the likelihood's temperature: the mean field of ``softmax(z/T)`` under ``z ~ N(μ, σ²)``
    (``T = 1``: the plain mean-field predictive ``softmax(z / sqrt(1 + λ σ²))``).
    """
    if variance.ndim == 1:
        variance = variance.unsqueeze(1)
    return torch.softmax(logits / torch.sqrt(temperature * temperature + lambda_mf * variance.clamp_min(0)), dim=-1)


def mean_field_scaled(
    logits: torch.Tensor, variance: torch.Tensor, lambda_mf: float = DEFAULT_LAMBDA_MF, temperature: float = 1.0
) -> torch.Tensor:
    """The mean-field logits ``κ z`` ``(N, C)``, ``κ = (T² + λ σ²)^(−½)``, whose softmax is the mean-field
    predictive; ``variance (N,)`` or ``(N, C, C)`` (then the centred per-class variances)."""
    v = variance.unsqueeze(1) if variance.ndim == 1 else centered(variance).diagonal(dim1=-2, dim2=-1)
    return logits * torch.rsqrt(temperature * temperature + lambda_mf * v.clamp_min(0))


def mc_logit_samples(
    logits: torch.Tensor,
    scale: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Samples ``(K, N, C)`` of ``z ~ N(logits, S)``.

    ``scale`` is ``σ (N,)`` for the shared covariance (``S = σ² I``) or a Cholesky factor
    ``(N, C, C)`` of the per-instance logit covariance for the full GGN.
    """
    n, c = logits.shape
    # draw where the generator lives (a CPU generator for CUDA logits draws on the CPU, then copies)
    where = generator.device if generator is not None else logits.device
    eps = torch.randn(n_samples, n, c, generator=generator, dtype=logits.dtype, device=where).to(logits.device)
    if scale.ndim == 1:
        return logits + eps * scale.view(1, n, 1)
    return logits + torch.einsum("nck,snk->snc", scale, eps)


def mc_probs(
    logits: torch.Tensor,
    scale: torch.Tensor,
    n_samples: int = 1000,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Monte Carlo predictive ``(N, C)``: the mean of ``softmax(z/T)`` over ``n_samples`` logit samples ``z``."""
    return torch.softmax(tempered(mc_logit_samples(logits, scale, n_samples, generator), temperature), dim=-1).mean(0)


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / T`` (in place; unchanged when ``T = 1``): logit samples seen through the tempered likelihood."""
    return logits if temperature == 1.0 else logits.div_(temperature)


def logit_sample_blocks(
    logits: torch.Tensor, variance: torch.Tensor, n_samples: int, generator: torch.Generator | None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Laplace logit samples in row blocks: yields ``(rows, samples (K, n, C))``.

    ``logits (N, C)``, ``variance (N,)`` or ``(N, C, C)``; each block holds at most about
    :data:`~bayesal.laplace.options.BLOCK_ELEMENTS` sampled logits, the same blocks (hence the same
    draws for a seeded generator) as the Monte Carlo ``LastLayerLaplace.predict_proba``.
    """
    if n_samples < 1:
        raise InvalidInputError(f"n_samples must be >= 1, got {n_samples}")
    n, c = logits.shape
    step = max(1, BLOCK_ELEMENTS // (n_samples * c))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        yield rows, mc_logit_samples(logits[rows], logit_scale(variance[rows]), n_samples, generator)


def predictive_from_logits(
    logits: torch.Tensor,
    variance: torch.Tensor,
    lambda_mf: float = DEFAULT_LAMBDA_MF,
    method: str = "mean_field",
    n_samples: int = 1000,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Predictive ``(N, C)`` from MAP ``logits (N, C)`` and ``variance (N,)`` (or ``(N, C, C)``).

    Parameters
    ----------
    logits : torch.Tensor
        MAP logits ``(N, C)``.
    variance : torch.Tensor
        Logit variance ``(N,)`` (shared covariance) or logit covariance ``(N, C, C)`` (full GGN).
    lambda_mf : float
        Mean-field scale ``λ``.
    method : Predictive or {"mean_field", "mc"}
        Mean-field approximation or Monte Carlo with ``n_samples`` draws from ``generator``.
    temperature : float
        The likelihood's temperature ``T`` (``softmax(z/T)``); 1: none.

    Returns
    -------
    torch.Tensor
        Class probabilities ``(N, C)``.
    """
    method = Predictive.parse(method, "predictive")
    if method is Predictive.MEAN_FIELD:
        scaled = mean_field_scaled(logits, variance, lambda_mf, temperature)
        # the softmax over the classes along the (C, N) transpose (several times faster for small C than
        # over a short last dim), written out as max, exp, sum and divide: torch.softmax over a leading
        # dim rounds differently with the number of threads, and a score must not depend on it (Ray
        # workers and this process give bit-identical results). Same values as ``mean_field_probs`` up
        # to round-off.
        cols = scaled.T
        e = torch.sub(cols, cols.amax(0)).exp_()
        return e.div_(e.sum(0)).T
    out = torch.empty_like(logits)
    for rows, s in logit_sample_blocks(logits, variance, n_samples, generator):
        out[rows] = torch.softmax(tempered(s, temperature), dim=-1).mean(0)
    return out
