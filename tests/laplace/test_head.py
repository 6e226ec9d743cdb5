"""The exact MAP head: optimality of the fitted head against independent computations."""

import pytest
import torch

from bayesal import HeadConfig, LastLayerLaplace
from bayesal.exceptions import InvalidInputError
from bayesal.laplace.head import fit_map_head, map_objective, train_head


def _objective(x, t, w, b, lam, lam_b):
    """The negative log joint written out with autograd-friendly ops (independent of map_objective)."""
    logp = torch.log_softmax(x @ w.T + b, 1)
    return -(t * logp).sum() + 0.5 * lam * (w**2).sum() + 0.5 * lam_b * (b**2).sum()


def _autograd_norm(x, t, w, b, lam, lam_b):
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    gw, gb = torch.autograd.grad(_objective(x, t, w, b, lam, lam_b), (w, b))
    return float(torch.cat([gw.flatten(), gb]).norm())


def _dense_newton(x, t, lam, lam_b, iters=50):
    """Reference minimiser: damped Newton on the dense Hessian of vec(W, b)."""
    c, d = t.shape[1], x.shape[1]
    theta = torch.zeros(c * (d + 1), dtype=torch.float64)

    def f(th):
        w, b = th[: c * d].view(c, d), th[c * d :]
        return _objective(x, t, w, b, lam, lam_b)

    for _ in range(iters):
        g = torch.autograd.functional.jacobian(f, theta)
        h = torch.autograd.functional.hessian(f, theta)
        theta = theta - torch.linalg.solve(h, g)
    return theta[: c * d].view(c, d), theta[c * d :]


@pytest.mark.parametrize("lam", [0.01, 1.0, 30.0])
def test_exact_head_is_the_map_of_the_posterior_objective(toy, lam):
    x, y, *_ = toy
    t = torch.nn.functional.one_hot(y, 3).double()
    fit = fit_map_head(x, t, lam, tol=1e-8, bias_precision=1e-3)
    assert fit.converged
    # gradient norm at the fitted head, computed independently with autograd
    g0 = _autograd_norm(x, t, torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0, 0.0)
    assert _autograd_norm(x, t, fit.weight, fit.bias, lam, 1e-3) <= 1.01e-8 * g0
    w_ref, b_ref = _dense_newton(x, t, lam, 1e-3)
    torch.testing.assert_close(fit.weight, w_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fit.bias, b_ref, atol=1e-5, rtol=1e-5)


def test_objective_and_gradient_match_autograd(toy):
    x, y, w, b = toy
    t = torch.softmax(torch.randn(60, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 1)
    value, gw, gb = map_objective(x, t, w, b, 0.7, 0.2)
    wr, br = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ref = _objective(x, t, wr, br, 0.7, 0.2)
    ref.backward()
    torch.testing.assert_close(value, ref.detach())
    torch.testing.assert_close(gw, wr.grad)
    torch.testing.assert_close(gb, br.grad)


@pytest.mark.parametrize("evaluator", ["_objective_on_cpu", "_objective_in_torch"])
def test_solver_objectives_match_autograd_with_a_per_column_prior(toy, evaluator):
    from bayesal.laplace import head

    x, y, w, b = toy
    g = torch.Generator().manual_seed(2)
    t = torch.softmax(torch.randn(60, 3, generator=g, dtype=torch.float64), 1)
    prior = torch.rand(5, generator=g, dtype=torch.float64) + 0.1  # per-column, as in whitened coordinates
    scale = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    last = {}
    value, grad = getattr(head, evaluator)(x, t, prior, scale, 0.3, last)(torch.cat([w.flatten(), b]).numpy())
    wr, br = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    logp = torch.log_softmax(x @ wr.T + br, 1)
    ref = -(t * logp).sum() + 0.5 * (prior * wr**2).sum() + 0.3 * 0.5 * (br**2).sum()
    ref.backward()
    assert value == pytest.approx(float(ref.detach()), rel=1e-12)
    torch.testing.assert_close(torch.from_numpy(grad), torch.cat([wr.grad.flatten(), br.grad]))
    assert last["norm"] == pytest.approx(float(torch.cat([(wr.grad / scale).flatten(), br.grad]).norm()), rel=1e-12)


def test_more_features_than_points_and_a_missing_class():
    """N < D: the solver searches the span of the features; the optimum has no component outside it.
    A class with no labels keeps a finite bias (its weak prior)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 20, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    t = torch.nn.functional.one_hot(y, 3).double()
    fit = fit_map_head(x, t, 0.5, tol=1e-8)
    assert fit.converged and bool(torch.isfinite(fit.bias).all())
    g0 = _autograd_norm(x, t, torch.zeros(3, 20, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0, 0.0)
    assert _autograd_norm(x, t, fit.weight, fit.bias, 0.5, 1e-4) <= 1.01e-8 * g0


def test_warm_start_reaches_the_same_head_in_fewer_iterations(toy):
    x, y, *_ = toy
    t = torch.nn.functional.one_hot(y, 3).double()
    old = fit_map_head(x[:50], t[:50], 1.0, tol=1e-9)
    cold = fit_map_head(x, t, 1.0, tol=1e-9)
    warm = fit_map_head(x, t, 1.0, tol=1e-9, init=(old.weight, old.bias))
    torch.testing.assert_close(warm.weight, cold.weight, atol=1e-6, rtol=1e-6)
    assert warm.n_iter < cold.n_iter


def test_train_head_exact_by_default_paper_recipe_on_request(toy):
    x, y, *_ = toy
    w, b = train_head(x, y, 3, prior_precision=2.0)
    ref = fit_map_head(x, torch.nn.functional.one_hot(y, 3).double(), 2.0)
    torch.testing.assert_close(w, ref.weight)
    assert HeadConfig().solver == "exact" and HeadConfig.paper().solver == "radam"
    with pytest.raises(InvalidInputError):
        HeadConfig(solver="adam")


def test_posterior_fit_puts_the_mean_at_the_map_of_its_own_prior(toy):
    """Whatever λ₀ the posterior chooses, its mean is the MAP for that λ₀: the gradient vanishes."""
    x, y, *_ = toy
    t = torch.nn.functional.one_hot(y, 3).double()
    g0 = _autograd_norm(x, t, torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0, 0.0)
    for prior in (0.3, "cv", "cv-predictive", "evidence"):
        post = LastLayerLaplace(prior_precision=prior, curvature="gaussian").fit(x, y)
        lam = post.prior_precision_
        assert lam > 0
        assert _autograd_norm(x, t, post.mean_, post.bias_, lam, HeadConfig().bias_precision) <= 2e-5 * g0
        prec = lam * torch.eye(5, dtype=torch.float64) + x.T @ x  # gaussian curvature
        torch.testing.assert_close(post.covariance_, torch.linalg.inv(prec), atol=1e-10, rtol=1e-8)
        again = LastLayerLaplace.from_state_dict(post.state_dict())
        assert again.prior_precision_ == lam and again.prior_precision == prior
