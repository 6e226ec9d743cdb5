"""Predictive distributions of a Gaussian last layer (SPEC §3), as pure functions on tensors."""

from __future__ import annotations

import math

import torch

__all__ = ["DEFAULT_LAMBDA_MF", "mean_field_probs", "mc_probs", "mc_logit_samples"]

DEFAULT_LAMBDA_MF = math.pi / 8


def mean_field_probs(logits: torch.Tensor, variance: torch.Tensor, lambda_mf: float = DEFAULT_LAMBDA_MF) -> torch.Tensor:
    """``softmax(z / sqrt(1 + λ σ²))``; ``logits (N, C)``, ``variance (N,)`` or per class ``(N, C)``."""
    if variance.ndim == 1:
        variance = variance.unsqueeze(1)
    return torch.softmax(logits / torch.sqrt(1.0 + lambda_mf * variance.clamp_min(0)), dim=-1)


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
) -> torch.Tensor:
    """Monte Carlo predictive ``(N, C)``: the mean softmax over ``n_samples`` logit samples."""
    return torch.softmax(mc_logit_samples(logits, scale, n_samples, generator), dim=-1).mean(0)
