"""Choosing the prior precision λ₀ from the labeled data: Laplace evidence, or cross-validation.

**Evidence.** The Laplace marginal likelihood of the last layer.
With the head at its MAP ``W*`` for λ₀ and the data Hessian ``H = Σ_i H_i`` (the posterior's curvature,
eigenvalues ``e_k``, each counted ``multiplicity`` times: ``C`` for the shared covariance ``I_C ⊗ Σ``,
1 for the full GGN), the Laplace approximation of ``log p(D | λ₀)`` is, up to a constant,

    log Z(λ₀) = −NLL(W*) − λ₀/2 ‖W* − M₀‖² − multiplicity/2 · Σ_k log(1 + e_k / λ₀)

(the prior's normaliser and the Gaussian integral leave only ``log det(I + H/λ₀)``; directions the
data do not see, ``e_k = 0``, drop out). Setting the total derivative to zero — ``W*`` moves with λ₀,
but by the envelope theorem only the explicit λ₀ counts — gives MacKay's fixed point

    λ₀ = γ_eff / ‖W* − M₀‖²,   γ_eff = multiplicity · Σ_k e_k / (λ₀ + e_k)   (effective number of parameters).

One eigendecomposition of ``ΦᵀΦ`` gives every ``e_k`` for the 'gaussian' curvature, for every λ₀;
curvatures that depend on the head ('categorical', full GGN) are re-decomposed at each new head.
The bias is a point estimate with its own fixed (weak) prior and is not part of the evidence. ``M₀`` is
the prior mean (zero unless given; a zero-shot head, say): every ``‖W‖²`` of the zero-mean prior is
then ``‖W − M₀‖²``, and every head fit is the MAP of the prior centred there.

**Cross-validation.** :func:`cross_validate_prior` scores a grid of λ₀ — scaled by the mean squared
feature norm, so that the prior logit scale ``‖φ‖²/λ₀`` is what the grid spans — by the held-out
log-likelihood of the exact MAP head over K folds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from bayesal.exceptions import InvalidInputError

from .head import HeadConfig, fit_map_head, map_objective
from .linalg import feature_spectrum, safe_cholesky
from .options import Curvature
from .predictive import DEFAULT_LAMBDA_MF
from .update import curvature_weights

__all__ = [
    "heldout_logit_variance",
    "PRIOR_PRECISION_BOUNDS",
    "EvidenceFit",
    "log_evidence",
    "effective_parameters",
    "evidence_fixed_point",
    "maximize_evidence",
    "CV_GRID",
    "CrossValidationFit",
    "HeldOutFold",
    "fold_masks",
    "cross_validate_prior",
]

#: λ₀ is kept inside these bounds (a head that fits nothing would otherwise send it to infinity).
PRIOR_PRECISION_BOUNDS = (1e-6, 1e6)

#: Eigenvalues ``(K,)`` of the data Hessian at the head ``(W, b)``.
Spectrum = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class EvidenceFit(NamedTuple):
    """Result of :func:`maximize_evidence`: the chosen ``prior_precision``, the MAP head for it
    (``weight (C, D)``, ``bias (C,)``), its ``log_evidence``, the number of fixed-point iterations,
    whether the relative change of λ₀ fell below the tolerance, and the λ₀ visited (``history``)."""

    prior_precision: float
    weight: torch.Tensor
    bias: torch.Tensor
    log_evidence: float
    n_iter: int
    converged: bool
    history: tuple[float, ...]


def log_evidence(
    prior_precision: float, data_nll: float, weight_sq_norm: float, eigvals: torch.Tensor, multiplicity: int = 1
) -> float:
    """``log Z(λ₀)`` (up to a constant) from the data NLL at the head, ``‖W − M₀‖²`` and the Hessian eigenvalues."""
    e = eigvals.clamp_min(0)
    logdet = float(torch.log1p(e / prior_precision).sum())
    return -data_nll - 0.5 * prior_precision * weight_sq_norm - 0.5 * multiplicity * logdet


def effective_parameters(prior_precision: float, eigvals: torch.Tensor, multiplicity: int = 1) -> float:
    """``γ_eff = multiplicity · Σ_k e_k / (λ₀ + e_k)``: how many directions the data determine."""
    e = eigvals.clamp_min(0)
    return multiplicity * float((e / (prior_precision + e)).sum())


def _clip(lam: float) -> float:
    lo, hi = PRIOR_PRECISION_BOUNDS
    return min(max(lam, lo), hi)


def evidence_fixed_point(
    weight_sq_norm: float, eigvals: torch.Tensor, multiplicity: int = 1, *, init: float = 1.0,
    rtol: float = 1e-6, max_iter: int = 1000,
) -> float:
    """λ₀ maximising :func:`log_evidence` for a FIXED head (``‖W − M₀‖²`` and the eigenvalues given).

    For a fixed head ``log Z`` is concave in ``log λ₀`` up to the log-det term, and the fixed-point map
    ``λ₀ ← γ_eff(λ₀)/‖W‖²`` is monotone, so iterating it from any start converges to the maximiser.
    """
    if weight_sq_norm <= 0:
        return PRIOR_PRECISION_BOUNDS[1]
    lam = _clip(init)
    for _ in range(max_iter):
        new = _clip(effective_parameters(lam, eigvals, multiplicity) / weight_sq_norm)
        if abs(math.log(new / lam)) < rtol:
            return new
        lam = new
    return lam


def maximize_evidence(
    features: torch.Tensor,
    targets: torch.Tensor,
    spectrum: Spectrum | None = None,
    multiplicity: int | None = None,
    *,
    init_precision: float = 1.0,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    head: HeadConfig = HeadConfig(),
    rtol: float = 1e-3,
    max_iter: int = 50,
    prior_mean: torch.Tensor | None = None,
) -> EvidenceFit:
    """Choose λ₀ by the Laplace evidence, refitting the exact MAP head at each iterate (warm-started).

    ``features (N, D)`` float64, ``targets (N, C)``. ``spectrum(W, b)`` returns the data-Hessian
    eigenvalues at a head (default: those of ``ΦᵀΦ``, the 'gaussian' curvature, computed once) and
    ``multiplicity`` how often each counts (default ``C``, the shared covariance). Iterates MacKay's
    update ``λ₀ ← γ_eff / ‖W*(λ₀) − M₀‖²`` until ``|Δ log λ₀| < rtol``; each iterate costs one warm-started
    head fit. The returned head is the exact MAP for the returned λ₀ (and ``prior_mean`` ``M₀ (C, D)``,
    None: zero).
    """
    if features.shape[0] == 0:
        raise InvalidInputError("cannot choose the prior precision without labeled data; label some points first")
    c = targets.shape[1]
    multiplicity = c if multiplicity is None else int(multiplicity)
    fspec = feature_spectrum(features)  # preconditions every head fit, whatever the curvature
    def data_spectrum(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return fspec[0]  # the 'gaussian' curvature's spectrum does not depend on the head

    spectrum = spectrum or data_spectrum
    lam = _clip(float(init_precision))
    history = [lam]
    converged = False
    n_iter = 0
    while True:
        fit = fit_map_head(
            features, targets, lam, init=init, tol=head.tol, max_iter=head.max_iter,
            bias_precision=head.bias_precision, spectrum=fspec, prior_mean=prior_mean,
        )
        init = (fit.weight, fit.bias)
        eig = spectrum(fit.weight, fit.bias)
        sq = float((fit.weight if prior_mean is None else fit.weight - prior_mean.to(fit.weight)).square().sum())
        if converged or n_iter >= max_iter:
            break
        new = _clip(effective_parameters(lam, eig, multiplicity) / sq) if sq > 0 else PRIOR_PRECISION_BOUNDS[1]
        n_iter += 1
        converged = abs(math.log(new / lam)) < rtol
        lam = new
        history.append(lam)
    with torch.no_grad():
        value = float(map_objective(features, targets.to(features), fit.weight, fit.bias, 0.0)[0])
    return EvidenceFit(
        lam, fit.weight, fit.bias, log_evidence(lam, value, sq, eig, multiplicity), n_iter, converged, tuple(history)
    )


#: Grid of ``ρ = λ₀ / mean ‖φ‖²`` for :func:`cross_validate_prior`: prior logit standard deviations
#: ``ρ^{-1/2}`` from 1 to 100.
CV_GRID = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)


def heldout_logit_variance(
    train: torch.Tensor, heldout: torch.Tensor, curvature: torch.Tensor, prior_precision: float,
    gram: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``φ*ᵀ Σ φ*`` ``(n*,)`` of held-out rows under the shared-covariance Laplace posterior of the
    training rows, ``Σ = (λ₀ I + Φᵀ diag(m) Φ)⁻¹``; ``curvature m (n,)``.

    In the rows' kernel space when there are fewer training rows than features (Woodbury:
    ``φ*ᵀΣφ* = (‖φ*‖² − ‖L⁻¹ S Φ φ*‖²) / λ₀`` with ``L Lᵀ = λ₀ I + S Φ Φᵀ S``, ``S = diag √m``; ``gram``
    may pass ``(ΦΦᵀ, Φ*Φᵀ)``), else through the ``D × D`` precision.
    """
    root = curvature.clamp_min(0).sqrt()
    if train.shape[0] < train.shape[1]:
        g_tt, g_st = gram if gram is not None else (train @ train.T, heldout @ train.T)
        inner = root[:, None] * g_tt * root[None, :]
        inner.diagonal().add_(prior_precision)
        half = torch.linalg.solve_triangular(safe_cholesky(inner), root[:, None] * g_st.T, upper=False)
        return (heldout.square().sum(1) - half.square().sum(0)).clamp_min(0) / prior_precision
    u = root[:, None] * train
    prec = u.T @ u
    prec.diagonal().add_(prior_precision)
    half = torch.linalg.solve_triangular(safe_cholesky(prec), heldout.T, upper=False)
    return half.square().sum(0)


def fold_masks(
    n: int, folds: int, generator: torch.Generator | None, device: torch.device | str | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(train, held_out)`` boolean masks ``(n,)`` of ``folds`` cross-validation folds from a random
    permutation drawn with ``generator`` (a fixed seed when None, so a choice made on them is reproducible);
    every choice made on folds of the same labels (λ₀, the spread) uses the same ones."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    fold_of = torch.randperm(n, generator=gen).to(device) % folds
    return [(fold_of != f, fold_of == f) for f in range(folds)]


class HeldOutFold(NamedTuple):
    """One cross-validation fold at one λ₀: which rows trained its head (``train``, a mask ``(N,)``), the
    head's MAP logits of the held-out rows ``(n*, C)`` and the curvature ``m`` of its training rows
    ``(n,)`` — what the held-out predictive needs (see :func:`~bayesal.laplace.spread.select_spread`)."""

    train: torch.Tensor
    logits: torch.Tensor
    curvature: torch.Tensor


class CrossValidationFit(NamedTuple):
    """Result of :func:`cross_validate_prior`: the chosen ``prior_precision``, the MAP head for it on
    all the data, the λ₀ grid and the mean held-out log-likelihood per point of each; with
    ``keep_folds=True`` also the folds at the chosen λ₀."""

    prior_precision: float
    weight: torch.Tensor
    bias: torch.Tensor
    grid: tuple[float, ...]
    scores: tuple[float, ...]
    folds: tuple[HeldOutFold, ...] = ()


def cross_validate_prior(
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    folds: int = 5,
    grid: tuple[float, ...] = CV_GRID,
    head: HeadConfig = HeadConfig(),
    generator: torch.Generator | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    fold_tol: float = 1e-3,
    predictive: bool = False,
    curvature: str | Curvature = Curvature.CATEGORICAL,
    lambda_mf: float = DEFAULT_LAMBDA_MF,
    keep_folds: bool = False,
    prior_mean: torch.Tensor | None = None,
) -> CrossValidationFit:
    """λ₀ maximising the K-fold held-out log-likelihood of the exact MAP head (or of its Laplace predictive).

    ``features (N, D)`` float64, ``targets (N, C)``; ``grid`` holds ``λ₀ / mean‖φ‖²`` values, tried
    from the strongest prior down with warm starts. Each fold's exact MAP head scores the held-out
    rows with its softmax; with ``predictive=True`` its shared-covariance Laplace posterior
    (``curvature``) scores them with the mean-field predictive ``softmax(z / sqrt(1 + λ_mf σ²))``
    instead, so a λ₀ whose MAP is sharp but whose posterior is far too wide (near-uniform
    predictions) loses — better calibrated predictive probabilities, usually a stronger prior and a
    less accurate MAP with few labels. Folds come from a random permutation drawn with ``generator`` (a
    fixed seed when None, so the choice is reproducible). Ties go to the stronger prior. Cost:
    ``folds × len(grid)`` warm-started head fits to the looser ``fold_tol`` (held-out scores need no
    more), as many held-out variances (``O(min(N, D)³)`` each) and one exact fit on all the data.
    ``keep_folds=True`` returns each fold's held-out logits and training curvatures (``curvature``) at
    the chosen λ₀, from which the spread of the predictive is chosen on the same folds.
    ``prior_mean`` ``M₀ (C, D)`` centres the prior of every head fit (None: zero); λ₀ then also says how
    far the labels may pull the head from ``M₀``, and the folds choose it.
    """
    n = features.shape[0]
    if n == 0:
        raise InvalidInputError("cannot choose the prior precision without labeled data; label some points first")
    scale = float(features.square().sum(1).mean()) or 1.0
    lams = sorted((scale * g for g in grid), reverse=True)
    k = min(folds, n)
    fitkw: dict[str, Any] = {"tol": head.tol, "max_iter": head.max_iter, "bias_precision": head.bias_precision,
                             "prior_mean": prior_mean}
    if k < 2:  # one point: nothing to validate on; the middle of the grid
        lam = lams[len(lams) // 2]
        fit = fit_map_head(features, targets, lam, init=init, **fitkw)
        return CrossValidationFit(lam, fit.weight, fit.bias, tuple(lams), tuple(math.nan for _ in lams))
    scores = torch.zeros(len(lams), dtype=torch.float64)
    kept: list[list[HeldOutFold]] = [[] for _ in lams]
    gram = features @ features.T if predictive and n <= features.shape[1] else None
    for tr, te in fold_masks(n, k, generator, features.device):
        spec = feature_spectrum(features[tr])
        pair = None if gram is None else (gram[tr][:, tr], gram[te][:, tr])
        start = None
        for j, lam in enumerate(lams):
            fit = fit_map_head(features[tr], targets[tr], lam, init=start, spectrum=spec,
                               **{**fitkw, "tol": max(fitkw["tol"], fold_tol)})
            start = (fit.weight, fit.bias)
            logits = features[te] @ fit.weight.T + fit.bias
            if predictive or keep_folds:
                m = curvature_weights(torch.softmax(features[tr] @ fit.weight.T + fit.bias, 1), curvature)
                if keep_folds:
                    kept[j].append(HeldOutFold(tr, logits, m))
                if predictive:
                    var = heldout_logit_variance(features[tr], features[te], m, lam, gram=pair)
                    logits = logits / torch.sqrt(1.0 + lambda_mf * var).unsqueeze(1)
            logp = torch.log_softmax(logits, 1)
            scores[j] += float((targets[te].to(logp) * logp).sum())
    scores /= n
    best = int(torch.argmax(scores))  # first maximum: the strongest prior among ties
    fit = fit_map_head(features, targets, lams[best], init=init, **fitkw)
    return CrossValidationFit(lams[best], fit.weight, fit.bias, tuple(lams), tuple(scores.tolist()), tuple(kept[best]))
