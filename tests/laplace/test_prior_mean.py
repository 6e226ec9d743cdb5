"""A prior with a mean: ``N(M₀, λ₀⁻¹ I)`` on the head, against dense computations of the same objective."""

from __future__ import annotations

import pytest
import torch

from bayesal import HeadConfig, LastLayerLaplace
from bayesal.exceptions import InvalidInputError
from bayesal.laplace.evidence import cross_validate_prior, effective_parameters, maximize_evidence
from bayesal.laplace.fitting import PRIOR_MEAN_BIAS_PRECISION
from bayesal.laplace.head import fit_map_head, map_objective, train_head
from bayesal.laplace.update import curvature_weights

C, D = 3, 6


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(11)
    w_true = 1.5 * torch.randn(C, D, generator=gen, dtype=torch.float64)
    x = torch.randn(80, D, generator=gen, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(x @ w_true.T, 1), 1, generator=gen).flatten()
    m0 = w_true + 0.3 * torch.randn(C, D, generator=gen, dtype=torch.float64)  # a good, imperfect guess
    return x, y, m0, w_true


def _onehot(y):
    return torch.nn.functional.one_hot(y, C).double()


def _objective(x, t, w, b, lam, lam_b, m0):
    """The negative log joint with the prior mean, written out independently of map_objective."""
    logp = torch.log_softmax(x @ w.T + b, 1)
    return -(t * logp).sum() + 0.5 * lam * ((w - m0) ** 2).sum() + 0.5 * lam_b * (b**2).sum()


def _dense_newton(x, t, lam, lam_b, m0, iters=60):
    """Reference minimiser: Newton on the dense Hessian of vec(W, b), from W = M₀."""
    theta = torch.cat([m0.flatten(), torch.zeros(C, dtype=torch.float64)])

    def f(th):
        return _objective(x, t, th[: C * D].view(C, D), th[C * D :], lam, lam_b, m0)

    for _ in range(iters):
        step = torch.linalg.solve(torch.autograd.functional.hessian(f, theta), torch.autograd.functional.jacobian(f, theta))
        size = 1.0
        while f(theta - size * step) > f(theta) and size > 1e-8:  # backtracking: Newton may overshoot far away
            size /= 2
        theta = theta - size * step
    return theta[: C * D].view(C, D), theta[C * D :]


def test_objective_and_gradient_with_a_prior_mean_match_autograd(data):
    x, y, m0, _ = data
    t = _onehot(y)
    w = torch.randn(C, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    b = torch.randn(C, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    value, gw, gb = map_objective(x, t, w, b, 0.7, 0.2, prior_mean=m0)
    wr, br = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ref = _objective(x, t, wr, br, 0.7, 0.2, m0)
    ref.backward()
    torch.testing.assert_close(value, ref.detach())
    torch.testing.assert_close(gw, wr.grad)
    torch.testing.assert_close(gb, br.grad)


@pytest.mark.parametrize("n", [80, 4])  # more rows than features, and fewer (the span-restricted search)
@pytest.mark.parametrize("lam", [0.05, 3.0])
def test_the_exact_head_is_the_map_around_the_prior_mean(data, n, lam):
    x, y, m0, _ = data
    x, t = x[:n], _onehot(y[:n])
    fit = fit_map_head(x, t, lam, tol=1e-8, bias_precision=1e-2, prior_mean=m0)
    assert fit.converged
    # the gradient of the whole objective, the prior term included, vanishes at the fit
    _, gw, gb = map_objective(x, t, fit.weight, fit.bias, lam, 1e-2, prior_mean=m0)
    # the reference of the tolerance: the gradient at a zero head (its prior term −λ₀ M₀ included)
    _, g0w, g0b = map_objective(x, t, torch.zeros(C, D, dtype=torch.float64), torch.zeros(C, dtype=torch.float64), lam,
                                prior_mean=m0)
    assert float(torch.cat([gw.flatten(), gb]).norm()) <= 1.01e-8 * float(torch.cat([g0w.flatten(), g0b]).norm())
    w_ref, b_ref = _dense_newton(x, t, lam, 1e-2, m0)
    torch.testing.assert_close(fit.weight, w_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fit.bias, b_ref, atol=1e-6, rtol=1e-6)
    # the optimum in the shifted parameter W − M₀ lies in the span of the rows (N < D: off it, W = M₀)
    if n < D:
        q, _ = torch.linalg.qr(x.T)
        shift = fit.weight - m0
        torch.testing.assert_close(shift - shift @ q @ q.T, torch.zeros_like(shift), atol=1e-8, rtol=0)


def test_a_zero_prior_mean_is_the_zero_mean_prior(data):
    x, y, _, _ = data
    t = _onehot(y)
    a = fit_map_head(x, t, 0.5, tol=1e-9)
    b = fit_map_head(x, t, 0.5, tol=1e-9, prior_mean=torch.zeros(C, D, dtype=torch.float64))
    torch.testing.assert_close(a.weight, b.weight, atol=1e-8, rtol=0)
    torch.testing.assert_close(a.bias, b.bias, atol=1e-8, rtol=0)


def test_a_prior_mean_shifts_the_fit_of_shifted_data(data):
    # the prior mean is a change of variables: with logits (W − M₀)φ + b + M₀φ, fitting around M₀ on x
    # equals fitting around 0 in Δ with the offset; with a bias-only direction (a constant feature), the
    # offset M₀φ = m·1 is absorbed by the bias: W* − M₀ is the zero-mean fit and b* shifts by −m
    x, y, _, _ = data
    x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    m = torch.tensor([0.4, -0.3, 0.1], dtype=torch.float64)
    m0 = torch.zeros(C, D + 1, dtype=torch.float64)
    m0[:, -1] = m
    t = _onehot(y)
    around = fit_map_head(x1, t, 0.5, tol=1e-9, bias_precision=0.0, prior_mean=m0)
    plain = fit_map_head(x1, t, 0.5, tol=1e-9, bias_precision=0.0)
    # the bias is free (no prior), so only the logits' sum b + W[:, -1] is identified: compare the logits
    # of the shifted head with those of the zero-mean fit shifted by the prior's own logits
    z_around = x1 @ around.weight.T + around.bias
    z_plain = x1 @ plain.weight.T + plain.bias
    # the prior pulls W[:, -1] to m instead of 0, the free bias compensates: same logits up to a constant per row
    diff = z_around - z_plain
    torch.testing.assert_close(diff - diff.mean(1, keepdim=True), torch.zeros_like(diff), atol=1e-5, rtol=0)
    torch.testing.assert_close(around.weight[:, :D], plain.weight[:, :D], atol=1e-5, rtol=0)


def test_train_head_and_the_papers_recipe_start_from_the_prior_mean(data):
    x, y, m0, _ = data
    exact = train_head(x, y, C, prior_precision=2.0, prior_mean=m0)
    ref = fit_map_head(x, _onehot(y), 2.0, prior_mean=m0)
    torch.testing.assert_close(exact[0], ref.weight)
    sgd0 = train_head(x, y, C, config=HeadConfig.paper(epochs=0), prior_mean=m0)
    torch.testing.assert_close(sgd0[0], m0)
    with pytest.raises(InvalidInputError, match="prior_mean has shape"):
        fit_map_head(x, _onehot(y), 1.0, prior_mean=m0[:, :2])


def test_the_evidence_measures_the_head_from_the_prior_mean(data):
    x, y, m0, _ = data
    t = _onehot(y)

    def spectrum(w, b):  # the categorical GGN's, as the posterior's evidence uses
        m = curvature_weights(torch.softmax(x @ w.T + b, 1), "categorical")
        return torch.linalg.eigvalsh((x * m[:, None]).T @ x)

    ev = maximize_evidence(x, t, spectrum, prior_mean=m0, rtol=1e-8, max_iter=200)
    assert ev.converged
    sq = float((ev.weight - m0).square().sum())
    eig = spectrum(ev.weight, ev.bias)
    # MacKay's fixed point with ‖W − M₀‖²
    assert ev.prior_precision == pytest.approx(effective_parameters(ev.prior_precision, eig, C) / sq, rel=1e-5)
    ref = fit_map_head(x, t, ev.prior_precision, prior_mean=m0, tol=1e-9)
    torch.testing.assert_close(ev.weight, ref.weight, atol=1e-4, rtol=1e-4)
    # a good guess earns a stronger prior than zero does
    assert ev.prior_precision > maximize_evidence(x, t, spectrum, rtol=1e-8, max_iter=200).prior_precision


def test_cross_validation_trusts_a_prior_mean_that_is_the_truth(data):
    x, y, _, w_true = data
    t = _onehot(y[:20])
    good = cross_validate_prior(x[:20], t, prior_mean=w_true)
    bad = cross_validate_prior(x[:20], t, prior_mean=-w_true)
    assert good.prior_precision == max(good.grid)  # the strongest prior of the grid: stay at the truth
    assert bad.prior_precision < good.prior_precision
    ref = fit_map_head(x[:20], t, good.prior_precision, prior_mean=w_true)
    torch.testing.assert_close(good.weight, ref.weight, atol=1e-4, rtol=1e-4)


def test_without_labels_the_posterior_is_the_prior_and_predicts_the_zero_shot_guess(data):
    x, _, m0, _ = data
    post = LastLayerLaplace(prior_mean=m0).fit(x[:0], torch.zeros(0, dtype=torch.long), num_classes=C)
    torch.testing.assert_close(post.mean, m0)
    torch.testing.assert_close(post.bias, torch.zeros(C, dtype=torch.float64))
    torch.testing.assert_close(post.covariance, torch.eye(D, dtype=torch.float64) / post.fitted_prior_precision)
    torch.testing.assert_close(post.predict(x), (x @ m0.T).argmax(1), rtol=0, atol=0)
    # without a prior mean there is still nothing to fit on
    with pytest.raises(InvalidInputError, match="without labeled data"):
        LastLayerLaplace().fit(x[:0], torch.zeros(0, dtype=torch.long), num_classes=C)
    with pytest.raises(InvalidInputError, match="prior_mean has shape"):
        LastLayerLaplace(prior_mean=m0[:2]).fit(x[:0], torch.zeros(0, dtype=torch.long), num_classes=C)
    with pytest.raises(InvalidInputError, match="NaN"):
        LastLayerLaplace(prior_mean=torch.full((C, D), float("nan")))


@pytest.mark.parametrize("prior", [0.5, "cv", "evidence"])
def test_a_fit_is_the_exact_map_around_the_prior_mean(data, prior):
    x, y, m0, _ = data
    post = LastLayerLaplace(prior_precision=prior, prior_mean=m0, random_state=0).fit(x[:30], y[:30], num_classes=C)
    ref = fit_map_head(x[:30], _onehot(y[:30]), post.fitted_prior_precision, prior_mean=m0, tol=1e-9,
                       bias_precision=PRIOR_MEAN_BIAS_PRECISION)
    torch.testing.assert_close(post.mean, ref.weight, atol=1e-3, rtol=1e-3)
    zero = LastLayerLaplace(prior_precision=post.fitted_prior_precision).fit(x[:30], y[:30], num_classes=C)
    assert float((post.mean - m0).norm()) < float((zero.mean - m0).norm())


def test_updates_from_the_prior_reach_the_exact_fit_around_it(data):
    x, y, m0, _ = data
    hc = HeadConfig(bias_precision=1e8)  # the update moves W only: compare with a head whose bias is pinned at 0
    lam = 0.8
    prior = LastLayerLaplace(prior_precision=lam, hessian="full", prior_mean=m0, head_config=hc, steps=50,
                             exact_until=0).fit(x[:0], torch.zeros(0, dtype=torch.long), num_classes=C)
    upd = prior.update(x[:12], y[:12])
    ref = fit_map_head(x[:12], _onehot(y[:12]), lam, prior_mean=m0, bias_precision=1e8, tol=1e-9)
    # the prior is exactly Gaussian and the full GGN is the exact Hessian: Newton converges to the MAP (up to
    # the update's own stopping rule)
    torch.testing.assert_close(upd.mean, ref.weight, atol=1e-4, rtol=1e-4)
    zero = fit_map_head(x[:12], _onehot(y[:12]), lam, bias_precision=1e8, tol=1e-9)
    assert float((upd.mean - ref.weight).norm()) < 1e-3 * float((upd.mean - zero.weight).norm())


def test_an_early_update_after_a_fit_with_a_prior_mean_is_the_exact_refit(data):
    x, y, m0, _ = data
    post = LastLayerLaplace(prior_precision=0.5, prior_mean=m0, random_state=0).fit(x[:10], y[:10], num_classes=C)
    upd = post.update(x[10:25], y[10:25])
    ref = fit_map_head(x[:25], _onehot(y[:25]), 0.5, prior_mean=m0, tol=1e-9, bias_precision=PRIOR_MEAN_BIAS_PRECISION)
    torch.testing.assert_close(upd.mean, ref.weight, atol=2e-3, rtol=2e-3)
    # past the early phase the Newton update still starts from the prior centred on M₀: closer to the refit
    # around M₀ than to the refit around zero
    newton = post.with_update_options(exact_until=0).update(x[10:25], y[10:25])
    zero = fit_map_head(x[:25], _onehot(y[:25]), 0.5, tol=1e-9)
    assert float((newton.mean - ref.weight).norm()) < float((newton.mean - zero.weight).norm())
    # a label correction in the early phase refits around M₀ too
    fixed = upd.relabel(x[12], int(y[12]), (int(y[12]) + 1) % C)
    yy = y[:25].clone()
    yy[12] = (int(y[12]) + 1) % C
    ref2 = fit_map_head(x[:25], _onehot(yy), 0.5, prior_mean=m0, tol=1e-9, bias_precision=PRIOR_MEAN_BIAS_PRECISION)
    torch.testing.assert_close(fixed.mean, ref2.weight, atol=2e-3, rtol=2e-3)


def test_the_prior_mean_is_saved_copied_and_shown(data):
    x, y, m0, _ = data
    post = LastLayerLaplace(prior_precision=0.5, prior_mean=m0).fit(x[:10], y[:10], num_classes=C)
    state = post.state_dict()
    back = LastLayerLaplace.from_state_dict(state)
    torch.testing.assert_close(back.prior_mean, m0)
    # the restored posterior refits its early phase around the same mean
    torch.testing.assert_close(back.update(x[10:20], y[10:20]).mean, post.update(x[10:20], y[10:20]).mean)
    old = {k: v for k, v in state.items() if k != "prior_mean"}  # written before the prior had a mean
    assert LastLayerLaplace.from_state_dict(old).prior_mean is None
    copied = post.copy()
    copied.prior_mean.add_(1.0)
    torch.testing.assert_close(post.prior_mean, m0)
    assert f"prior_mean=<({C}, {D})>" in repr(post)
    assert "prior_mean" not in repr(LastLayerLaplace())


def test_with_a_prior_mean_a_class_without_labels_keeps_its_guess(data):
    x, _, m0, _ = data
    guess = (x @ m0.T).argmax(1)
    seen = guess < 2  # the first labels name classes 0 and 1 only
    idx = seen.nonzero().flatten()[:6]
    post = LastLayerLaplace(prior_precision=1.0, prior_mean=m0).fit(x[idx], guess[idx], num_classes=C)
    # the bias prior of a prior mean keeps class 2's bias near zero: its guessed rows stay its own
    assert abs(float(post.bias[2])) < 1.0
    assert float((post.predict(x[~seen]) == 2).double().mean()) > 0.8
    flat = LastLayerLaplace(prior_precision=1.0, prior_mean=m0, head_config=HeadConfig(bias_precision=1e-4))
    assert flat._head_config().bias_precision == PRIOR_MEAN_BIAS_PRECISION  # raised to the floor
    strong = LastLayerLaplace(prior_precision=1.0, prior_mean=m0, head_config=HeadConfig(bias_precision=5.0))
    assert strong._head_config().bias_precision == 5.0
    assert LastLayerLaplace(head_config=HeadConfig(bias_precision=1e-4))._head_config().bias_precision == 1e-4
