"""Iterated updates (``steps=k``): online Laplace converging to the exact MAP of prior × new likelihood."""

import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.laplace import SharedLaplace
from bayesal.laplace.update import PAPER_OPTIONS, full_ggn_factor


def _problem(seed=0, n=40, m=12, d=4, c=3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g, dtype=torch.float64) * 1.5
    y = torch.arange(n + m) % c
    x = centers[y] + torch.randn(n + m, d, generator=g, dtype=torch.float64)
    return x[:n], y[:n], x[n:], y[n:]


def _dense_map(post, xn, yn):
    """Mode of N(vec W; vec μ, Σ_W) × Π_j p(y_j | φ_j, W) by dense Newton with autograd (bias fixed)."""
    c, d = post.num_classes, post.num_features
    cov = post.covariance.contiguous()
    cov_w = torch.kron(torch.eye(c, dtype=torch.float64), cov) if isinstance(post, SharedLaplace) else cov
    prec = torch.linalg.inv(cov_w)
    mu = post.mean.reshape(-1)

    def f(theta):
        diff = theta - mu
        logp = torch.log_softmax(xn @ theta.view(c, d).T + post.bias, 1)
        return 0.5 * diff @ prec @ diff - logp[torch.arange(len(yn)), yn].sum()

    theta = mu.clone()
    for _ in range(30):
        theta = theta - torch.linalg.solve(torch.autograd.functional.hessian(f, theta),
                                           torch.autograd.functional.jacobian(f, theta))
    return theta.view(c, d)


@pytest.mark.parametrize("curvature,hessian", [("categorical", "shared"), ("gaussian", "shared"), ("gaussian", "full")])
def test_iterated_update_converges_to_the_exact_map(curvature, hessian):
    x, y, xn, yn = _problem()
    post = LastLayerLaplace(exact_until=0, prior_precision=0.5, curvature=curvature, hessian=hessian, gamma=1.0).fit(x, y)
    ref = _dense_map(post, xn, yn)
    errors = [float((post.update(xn, yn, steps=k).mean - ref).abs().max()) for k in (1, 3, 10, 60)]
    assert errors[-1] < 1e-8
    assert errors[0] > errors[1]
    assert errors[2] <= max(errors[1], 1e-12)  # non-increasing, up to round-off once converged


def test_one_step_is_the_paper_update_and_steps_are_saved():
    x, y, xn, yn = _problem(seed=1)
    post = LastLayerLaplace(prior_precision=1.0, **PAPER_OPTIONS).fit(x, y)
    one = post.update(xn, yn)
    assert (post.steps, post.gamma, post.curvature.value) == (1, 10.0, "gaussian")
    p = torch.softmax(xn @ post.mean.T + post.bias, 1)
    onehot = torch.nn.functional.one_hot(yn, 3).double()
    cov = torch.linalg.inv(torch.linalg.inv(post.covariance) + xn.T @ xn)
    torch.testing.assert_close(one.mean, post.mean + 10.0 * (onehot - p).T @ xn @ cov)
    three = LastLayerLaplace(exact_until=0, prior_precision=1.0, gamma=1.0, steps=3).fit(x, y)
    assert LastLayerLaplace.from_state_dict(three.state_dict()).steps == 3
    torch.testing.assert_close(three.update(xn, yn).mean, three.update(xn, yn, steps=3).mean)
    torch.testing.assert_close(three.with_update_options(steps=1).update(xn, yn).mean, three.update(xn, yn, steps=1).mean)


@pytest.mark.parametrize("curvature", ["categorical", "gaussian"])
def test_cached_logit_step_matches_the_iterated_update(curvature):
    """Sequential selection refreshes cached logits with logit_step: it must equal update(steps=k)."""
    x, y, xn, yn = _problem(seed=2)
    post = LastLayerLaplace(exact_until=0, prior_precision=1.0, curvature=curvature, gamma=1.0, steps=4).fit(x, y)
    target = torch.nn.functional.one_hot(yn[0], 3).double()
    step = post.logit_step(xn[0], target)
    z, var = step.apply(x, post.logits(x), post.logit_variance(x))
    new = post.update(xn[:1], yn[:1], method="rank1")
    torch.testing.assert_close(z, new.logits(x))
    torch.testing.assert_close(var, new.logit_variance(x))


def test_states_saved_before_iterated_updates_load_with_one_step():
    x, y, _, _ = _problem(seed=3)
    state = LastLayerLaplace(exact_until=0, prior_precision=1.0).fit(x, y).state_dict()
    assert state["config"]["steps"] == LastLayerLaplace().steps
    del state["config"]["steps"]
    assert LastLayerLaplace.from_state_dict(state).steps == 1


def test_one_step_equals_the_dense_formula_for_full_and_shared_hessians():
    """One step (the paper's closed form, computed in the span of the new points) equals the D-dimensional formula μ + γ Σ' Φᵀ(Y − P)."""
    x, y, xn, yn = _problem(seed=4)
    for hessian in ("shared", "full"):
        post = LastLayerLaplace(exact_until=0, prior_precision=0.7, curvature="gaussian", hessian=hessian, gamma=3.0).fit(x, y)
        new = post.update(xn, yn, steps=1)
        probs = torch.softmax(xn @ post.mean.T + post.bias, -1)
        resid = torch.nn.functional.one_hot(yn, probs.shape[1]).double() - probs
        grad = resid.T @ xn
        if hessian == "shared":
            prec = torch.cholesky_inverse(torch.linalg.cholesky(post.covariance)) + xn.T @ xn
            expected = post.mean + 3.0 * torch.linalg.solve(prec, grad.T).T
        else:
            u = full_ggn_factor(xn, probs)
            prec = torch.cholesky_inverse(torch.linalg.cholesky(post.covariance)) + u.T @ u
            expected = post.mean + 3.0 * torch.linalg.solve(prec, grad.reshape(-1)).reshape(post.mean.shape)
        torch.testing.assert_close(new.mean, expected, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(new.covariance, torch.cholesky_inverse(torch.linalg.cholesky(prec)),
                                   rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("hessian", ["shared", "full"])
def test_iterated_update_downdates_alike_by_woodbury_and_rank1(hessian):
    x, y, xn, yn = _problem(seed=5)
    post = LastLayerLaplace(exact_until=0, prior_precision=0.5, hessian=hessian).fit(x, y)
    a, b = post.update(xn, yn), post.update(xn, yn, method="rank1")
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.covariance, b.covariance, rtol=0, atol=1e-10)


def test_span_solve_uses_cholesky_and_falls_back_to_jitter():
    import numpy as np

    from bayesal.laplace.update import _chol_solve, _spd_factor

    def _spd_solve(a, rhs):
        return _chol_solve(_spd_factor(a), rhs)

    g = np.random.default_rng(0)
    a = g.standard_normal((6, 6))
    spd = a @ a.T + 6 * np.eye(6)
    b = g.standard_normal((6, 3))
    np.testing.assert_allclose(_spd_solve(spd, b), np.linalg.solve(spd, b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_spd_solve(spd, b[:, 0]), np.linalg.solve(spd, b[:, 0]), rtol=1e-12, atol=1e-12)
    singular = np.outer(a[0], a[0])  # rank 1: the plain factorization fails, the jittered one does not
    assert np.isfinite(_spd_solve(singular, b)).all()


def test_span_newton_returns_the_inputs_dtype():
    import torch

    from bayesal.laplace.update import PointCurvature, span_newton

    k = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float32)
    z = torch.zeros(2, 3, dtype=torch.float32)
    y = torch.eye(3, dtype=torch.float32)[:2]
    res = span_newton(k, z, y, PointCurvature("categorical"), 1.0, 3)
    assert res.coef.dtype == res.factor.dtype == res.probs.dtype == torch.float32
    assert res.coef.shape == (2, 3) and res.steps >= 1


def test_logit_step_in_place_equals_the_fresh_result():
    x, y, xn, yn = _problem(seed=6)
    post = LastLayerLaplace(exact_until=0, prior_precision=1.0, gamma=1.0).fit(x, y)
    step = post.logit_step(xn[0], torch.nn.functional.one_hot(yn[0], 3).double())
    z, var = post.logits(x), post.logit_variance(x)
    want_z, want_var, want_prod = step.apply_with_products(x, z, var)
    got_z, got_var, got_prod = step.apply_with_products(x, z, var, inplace=True)
    assert got_z is z and got_var is var  # the caches themselves were updated
    assert torch.equal(got_z, want_z) and torch.equal(got_var, want_var) and torch.equal(got_prod, want_prod)


@pytest.mark.parametrize("curvature,steps", [("categorical", 4), ("gaussian", 1), ("categorical", 1)])
def test_absorbing_a_logit_step_equals_the_update_with_its_point(curvature, steps):
    x, y, xn, yn = _problem(seed=7)
    post = LastLayerLaplace(exact_until=0, prior_precision=1.0, curvature=curvature, gamma=1.0, steps=steps).fit(x, y)
    target = torch.nn.functional.one_hot(yn[0], 3).double()
    want = post.update(xn[:1], yn[:1], method="rank1")
    got = post.copy()
    assert got.absorb(got.logit_step(xn[0], target)) is got
    torch.testing.assert_close(got.mean, want.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.covariance, want.covariance, rtol=0, atol=1e-12)
    assert got.n_updates_ == want.n_updates_ == post.n_updates_ + 1
    torch.testing.assert_close(post.mean, LastLayerLaplace.from_state_dict(post.state_dict()).mean)  # untouched


@pytest.mark.parametrize("curvature,hessian", [("categorical", "shared"), ("gaussian", "shared"), ("gaussian", "full")])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("m", [7, 60])
def test_a_batch_larger_than_d_gives_the_span_iterations_result(monkeypatch, curvature, hessian, steps, m):
    # past M = D the update runs in the weight space; it must be the same computation as the span's
    x, y, _, _ = _problem(seed=2, n=40, m=0, d=6, c=3)
    _, _, xn, yn = _problem(seed=3, n=0, m=m, d=6, c=3)
    post = LastLayerLaplace(exact_until=0, prior_precision=0.7, curvature=curvature, hessian=hessian, gamma=1.0,
                            steps=steps).fit(x, y)
    post = post.update(xn[:2], yn[:2])  # a pending downdate too
    weight_space = post.update(xn, yn)
    monkeypatch.setattr(type(post), "_weight_space_update", lambda self, *args: None)
    span = post.update(xn, yn)
    torch.testing.assert_close(weight_space.mean, span.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weight_space.covariance, span.covariance, rtol=1e-10, atol=1e-13)
    if steps == 1 and hessian == "shared" and curvature == "gaussian":  # the closed form, densely
        p = torch.softmax(xn @ post.mean.T + post.bias, 1)
        cov = torch.linalg.inv(torch.linalg.inv(post.covariance) + xn.T @ xn)
        onehot = torch.nn.functional.one_hot(yn, 3).double()
        torch.testing.assert_close(weight_space.mean, post.mean + (onehot - p).T @ xn @ cov)
        torch.testing.assert_close(weight_space.covariance, cov)


def test_a_ten_thousand_row_update_costs_about_a_retrain():
    import time

    g = torch.Generator().manual_seed(0)
    d, c = 64, 5
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    x = torch.randn(10_300, d, generator=g, dtype=torch.float64)
    y = (x @ w.T).argmax(1)
    post = LastLayerLaplace(prior_precision=1.0).fit(x[:300], y[:300])
    t0 = time.perf_counter()
    new = post.update(x[300:], y[300:])
    update_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    LastLayerLaplace(prior_precision=1.0).fit(x, y)
    retrain_s = time.perf_counter() - t0
    assert update_s < max(2.0 * retrain_s, 5.0), (update_s, retrain_s)  # the span iteration took minutes
    assert float((new.predict(x[300:]) == y[300:]).double().mean()) > 0.9
