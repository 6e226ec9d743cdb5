"""Choosing λ₀: the Laplace evidence against brute force, and cross-validation."""

import math

import pytest
import torch

from bayesal import HeadConfig, LastLayerLaplace
from bayesal.laplace.evidence import (
    cross_validate_prior,
    evidence_fixed_point,
    heldout_logit_variance,
    log_evidence,
    maximize_evidence,
)
from bayesal.laplace.head import fit_map_head, map_objective


def _noisy_problem(n=80, d=4, c=3, seed=0):
    """Overlapping classes, so the evidence has an interior maximum."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % c
    x = centers[y] + 1.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, torch.nn.functional.one_hot(y, c).double()


def _dense_log_evidence(x, t, lam):
    """Brute force: refit the exact MAP head at λ₀, then the Laplace evidence with a dense log-det
    of the (I_C ⊗ ΦᵀΦ) Hessian and the Gaussian prior's normaliser written out."""
    c, d = t.shape[1], x.shape[1]
    fit = fit_map_head(x, t, lam, tol=1e-7, max_iter=300)
    nll = float(map_objective(x, t, fit.weight, fit.bias, 0.0)[0])
    h = torch.kron(torch.eye(c, dtype=torch.float64), lam * torch.eye(d, dtype=torch.float64) + x.T @ x)
    p = c * d
    log_prior = 0.5 * p * math.log(lam / (2 * math.pi)) - 0.5 * lam * float(fit.weight.square().sum())
    return -nll + log_prior + 0.5 * p * math.log(2 * math.pi) - 0.5 * float(torch.logdet(h))


def test_chosen_prior_precision_maximises_the_evidence_on_a_grid():
    x, t = _noisy_problem()
    ev = maximize_evidence(x, t, rtol=1e-4, head=HeadConfig(tol=1e-7, max_iter=300))
    assert ev.converged
    lam = ev.prior_precision
    grid = [lam * 10 ** (k / 10) for k in range(-10, 11)]  # ±1 decade, steps of 26 %
    values = [_dense_log_evidence(x, t, g) for g in grid]
    best = grid[max(range(len(grid)), key=values.__getitem__)]
    assert abs(math.log(best / lam)) <= math.log(10) / 10 + 1e-9  # the grid's best is the chosen λ₀
    assert _dense_log_evidence(x, t, lam) >= max(values) - 1e-6
    # the closed form returned equals the brute-force value (the constants cancel)
    assert math.isclose(ev.log_evidence, _dense_log_evidence(x, t, lam), rel_tol=0, abs_tol=1e-4)


def test_fixed_head_fixed_point_is_the_maximum_of_the_closed_form():
    x, t = _noisy_problem(seed=1)
    w = fit_map_head(x, t, 1.0).weight
    e = torch.linalg.eigvalsh(x.T @ x)
    sq = float(w.square().sum())
    lam = evidence_fixed_point(sq, e, 3)
    f = lambda v: log_evidence(v, 0.0, sq, e, 3)  # noqa: E731  (NLL is constant for a fixed head)
    assert f(lam) >= max(f(lam * 1.01), f(lam / 1.01))
    grid = torch.logspace(-4, 4, 801, dtype=torch.float64).tolist()
    assert f(lam) >= max(f(g) for g in grid) - 1e-9


@pytest.mark.parametrize("predictive", [True, False])
def test_cross_validation_picks_the_best_held_out_likelihood(predictive):
    x, t = _noisy_problem(n=60)
    cv = cross_validate_prior(x, t, folds=3, generator=torch.Generator().manual_seed(0), predictive=predictive,
                              fold_tol=1e-7)
    assert cv.prior_precision == cv.grid[max(range(len(cv.grid)), key=cv.scores.__getitem__)]
    # recompute the score of every λ₀ by hand: the fold's MAP head and its dense Laplace predictive
    fold_of = torch.randperm(60, generator=torch.Generator().manual_seed(0)) % 3
    for j, lam in enumerate(cv.grid):
        total = 0.0
        for f in range(3):
            tr, te = fold_of != f, fold_of == f
            fit = fit_map_head(x[tr], t[tr], lam, tol=1e-7)
            post = LastLayerLaplace(prior_precision=lam, curvature="categorical").fit(
                x[tr], t[tr], weight=fit.weight, bias=fit.bias)
            probs = post.predict_proba(x[te]) if predictive else torch.softmax(x[te] @ fit.weight.T + fit.bias, 1)
            total += float((t[te] * probs.log()).sum())
        assert math.isclose(cv.scores[j], total / 60, rel_tol=0, abs_tol=1e-4)
    ref = fit_map_head(x, t, cv.prior_precision, tol=1e-7)
    torch.testing.assert_close(cv.weight, ref.weight, atol=1e-4, rtol=1e-4)


def test_held_out_variance_in_kernel_and_feature_space_agree():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    m = torch.rand(20, generator=gen, dtype=torch.float64) * 0.25
    dense = torch.cholesky_inverse(torch.linalg.cholesky(0.3 * torch.eye(8, dtype=torch.float64) + x[:20].T @ (m[:, None] * x[:20])))
    expected = ((x[20:] @ dense) * x[20:]).sum(1)
    torch.testing.assert_close(heldout_logit_variance(x[:20], x[20:], m, 0.3), expected)  # 20 rows > 8 features
    wide = torch.cat([x, torch.randn(30, 40, generator=gen, dtype=torch.float64)], 1)  # 20 rows < 48 features
    dense = torch.cholesky_inverse(torch.linalg.cholesky(
        0.3 * torch.eye(48, dtype=torch.float64) + wide[:20].T @ (m[:, None] * wide[:20])))
    torch.testing.assert_close(heldout_logit_variance(wide[:20], wide[20:], m, 0.3),
                               ((wide[20:] @ dense) * wide[20:]).sum(1))


def test_posterior_chooses_the_prior_by_its_own_predictive():
    x, t = _noisy_problem(n=60)
    post = LastLayerLaplace(prior_precision="cv-predictive", random_state=3).fit(x, t.argmax(1))
    ref = cross_validate_prior(x, t, generator=torch.Generator().manual_seed(3), predictive=True,
                               curvature=post.curvature, lambda_mf=post.lambda_mf)
    assert post.fitted_prior_precision == ref.prior_precision
    torch.testing.assert_close(post.mean, ref.weight)
