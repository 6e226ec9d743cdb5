"""The Bayesian update against exact dense computations (docs/method.md §4)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesal import LastLayerLaplace
from bayesal.exceptions import InvalidInputError
from bayesal.laplace.linalg import is_spd, spd_inverse
from bayesal.laplace.update import PAPER_OPTIONS, full_ggn_factor, rank1_downdate, woodbury_downdate


def _fitted(toy, **kw):
    x, y, w, b = toy
    return LastLayerLaplace(**{**PAPER_OPTIONS, **kw}).fit(x[:30], y[:30], weight=w, bias=b)  # the closed form


def _dense_precision_update(post, x_new):
    """Σ⁻¹ + Σ_j m_j φ_j φ_jᵀ formed explicitly."""
    probs = torch.softmax(x_new @ post.mean_.T + post.bias_, dim=1)
    if post.curvature == "gaussian":
        m = torch.ones(x_new.shape[0], dtype=x_new.dtype)
    else:
        pmax = probs.max(1).values
        m = pmax * (1 - pmax)
    return torch.linalg.inv(post.covariance_) + (x_new * m[:, None]).T @ x_new, probs


@pytest.mark.parametrize("curvature", ["gaussian", "categorical"])
@pytest.mark.parametrize("method", ["woodbury", "rank1"])
def test_covariance_equals_dense_inverse(toy, curvature, method):
    x, y, *_ = toy
    post = _fitted(toy, curvature=curvature)
    new = post.update(x[30:40], y[30:40], method=method)
    dense_prec, _ = _dense_precision_update(post, x[30:40])
    torch.testing.assert_close(new.covariance_, torch.linalg.inv(dense_prec), atol=1e-8, rtol=0)


def test_fit_covariance_is_inverse_precision(toy):
    x, y, w, b = toy
    post = LastLayerLaplace(prior_precision=2.0, curvature="gaussian").fit(x, y, weight=w, bias=b)
    prec = 2.0 * torch.eye(x.shape[1], dtype=torch.float64) + x.T @ x
    torch.testing.assert_close(post.covariance_, torch.linalg.inv(prec), atol=1e-10, rtol=0)
    torch.testing.assert_close(post.precision(), prec, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("hessian", ["shared", "full"])
def test_chained_equals_batched(toy, hessian):
    x, y, *_ = toy
    post = _fitted(toy, hessian=hessian)
    a = post.update(x[30:45], y[30:45], method="woodbury")
    b = post.update(x[30:45], y[30:45], method="rank1")
    torch.testing.assert_close(a.covariance_, b.covariance_, atol=1e-10, rtol=0)
    torch.testing.assert_close(a.mean_, b.mean_, atol=1e-10, rtol=0)


def test_sequential_single_point_covariance_equals_batch(toy):
    """Gaussian curvature: the covariance does not depend on the order or grouping of points."""
    x, y, *_ = toy
    post = _fitted(toy)
    seq = post
    for j in range(30, 40):
        seq = seq.update(x[j : j + 1], y[j : j + 1])
    batch = post.update(x[30:40], y[30:40])
    torch.testing.assert_close(seq.covariance_, batch.covariance_, atol=1e-10, rtol=0)


def test_gaussian_covariance_is_label_independent(toy):
    x, y, *_ = toy
    post = _fitted(toy)
    a = post.update(x[30:40], y[30:40])
    b = post.update(x[30:40], (y[30:40] + 1) % 3)
    torch.testing.assert_close(a.covariance_, b.covariance_, atol=0, rtol=0)
    assert not torch.allclose(a.mean_, b.mean_)


@pytest.mark.parametrize("gamma", [1.0, 10.0])
def test_mean_step_equals_dense_newton_step(toy, gamma):
    x, y, *_ = toy
    post = _fitted(toy)
    xn, yn = x[30:40], y[30:40]
    new = post.update(xn, yn, gamma=gamma)
    dense_prec, probs = _dense_precision_update(post, xn)
    onehot = torch.nn.functional.one_hot(yn, 3).double()
    grad_nll = -(onehot - probs).T @ xn  # (C, D): gradient of the new data's NLL at μ
    expected = post.mean_ - gamma * torch.linalg.solve(dense_prec, grad_nll.T).T
    torch.testing.assert_close(new.mean_, expected, atol=1e-9, rtol=0)


def test_full_ggn_matches_dense_kron(toy):
    x, y, w, b = toy
    post = LastLayerLaplace(hessian="full", **PAPER_OPTIONS).fit(x[:30], y[:30], weight=w, bias=b)
    c, d = 3, x.shape[1]
    prec = torch.eye(c * d, dtype=torch.float64)
    for i in range(30):
        p = torch.softmax(w @ x[i] + b, 0)
        prec += torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(x[i], x[i]))
    torch.testing.assert_close(post.covariance_, torch.linalg.inv(prec), atol=1e-10, rtol=0)
    new = post.update(x[30:35], y[30:35])
    for i in range(30, 35):
        p = torch.softmax(w @ x[i] + b, 0)
        prec += torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(x[i], x[i]))
    torch.testing.assert_close(new.covariance_, torch.linalg.inv(prec), atol=1e-10, rtol=0)


@pytest.mark.parametrize("gamma", [1.0, 10.0])
def test_full_ggn_mean_step_equals_dense_newton_step(toy, gamma):
    """μ' = μ − γ H'⁻¹ ∇NLL with H' the dense (CD, CD) precision and row-major vec W."""
    x, y, w, b = toy
    post = LastLayerLaplace(hessian="full", **PAPER_OPTIONS).fit(x[:30], y[:30], weight=w, bias=b)
    xn, yn = x[30:36], y[30:36]
    prec = torch.linalg.inv(post.covariance_)
    grad = torch.zeros(3, x.shape[1], dtype=torch.float64)
    for i in range(len(yn)):
        p = torch.softmax(w @ xn[i] + b, 0)
        prec += torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(xn[i], xn[i]))
        grad -= torch.outer(torch.nn.functional.one_hot(yn[i], 3).double() - p, xn[i])  # ∇NLL (C, D)
    expected = w - gamma * torch.linalg.solve(prec, grad.reshape(-1)).reshape(3, -1)
    torch.testing.assert_close(post.update(xn, yn, gamma=gamma).mean_, expected, atol=1e-9, rtol=0)


def test_mean_step_paths_agree(toy):
    """The mean step's two evaluation orders (fewer points than classes, or not) agree."""
    x, y, *_ = toy
    post = _fitted(toy)
    one = post.update(x[30:32], y[30:32], method="rank1")  # M = 2 < C = 3
    dense_prec, probs = _dense_precision_update(post, x[30:32])
    grad = -(torch.nn.functional.one_hot(y[30:32], 3).double() - probs).T @ x[30:32]
    torch.testing.assert_close(one.mean_, post.mean_ - 10 * torch.linalg.solve(dense_prec, grad.T).T, atol=1e-9, rtol=0)


def test_full_ggn_factor_reproduces_hessian():
    g = torch.Generator().manual_seed(1)
    phi = torch.randn(4, 3, generator=g, dtype=torch.float64)
    probs = torch.softmax(torch.randn(4, 5, generator=g, dtype=torch.float64), 1)
    u = full_ggn_factor(phi, probs)
    h = sum(torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(f, f)) for f, p in zip(phi, probs))
    torch.testing.assert_close(u.T @ u, h, atol=1e-12, rtol=0)


def test_update_is_not_inplace_by_default(toy):
    x, y, *_ = toy
    post = _fitted(toy)
    cov, mean = post.covariance_.clone(), post.mean_.clone()
    new = post.update(x[30:31], y[30:31])
    assert torch.equal(post.covariance_, cov) and torch.equal(post.mean_, mean)
    assert new.n_updates_ == 1 and post.n_updates_ == 0
    same = post.update(x[30:31], y[30:31], inplace=True)
    assert same is post and post.n_updates_ == 1


def test_soft_labels_average_the_mean_step(toy):
    x, y, *_ = toy
    post = _fitted(toy)
    soft = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    expected = sum(soft[0, k] * post.update(x[30:31], [k]).mean_ for k in range(3))
    torch.testing.assert_close(post.update(x[30:31], soft).mean_, expected, atol=1e-12, rtol=0)


def test_update_rejects_bad_input(toy):
    x, y, *_ = toy
    post = _fitted(toy)
    with pytest.raises(InvalidInputError, match="NaN"):
        post.update(torch.full((1, 5), math.nan), [0])
    with pytest.raises(InvalidInputError, match="D=5"):
        post.update(torch.zeros(1, 4), [0])
    with pytest.raises(InvalidInputError, match="outside"):
        post.update(x[:1], [3])
    with pytest.raises(InvalidInputError, match="rows"):
        post.update(x[:2], [0])
    with pytest.raises(InvalidInputError, match="method"):
        post.update(x[:1], [0], method="nope")


def test_spd_after_10000_rank1_updates():
    g = torch.Generator().manual_seed(0)
    d = 384
    phi = torch.randn(10_000, d, generator=g, dtype=torch.float64)
    phi[5000:] *= 10.0  # widely varying scales stress the downdate
    cov = spd_inverse(torch.eye(d, dtype=torch.float64) + phi[:100].T @ phi[:100])
    out = rank1_downdate(cov, phi)
    assert is_spd(out)
    exact = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + phi[:100].T @ phi[:100] + phi.T @ phi)
    rel = (out - exact).abs().max() / exact.abs().max()
    assert rel < 1e-6


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 6),  # D
    st.integers(1, 8),  # new points
    st.floats(0.01, 100.0),  # prior precision
    st.integers(0, 2**31 - 1),
)
def test_woodbury_property(d, m, lam, seed):
    """For any SPD prior and any data, Woodbury = dense inverse and stays SPD."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = spd_inverse(a @ a.T + lam * torch.eye(d, dtype=torch.float64))
    u = torch.randn(m, d, generator=g, dtype=torch.float64) * 3
    out = woodbury_downdate(cov, u)
    exact = torch.linalg.inv(torch.linalg.inv(cov) + u.T @ u)
    torch.testing.assert_close(out, exact, atol=1e-8 * float(exact.abs().max().clamp_min(1)), rtol=1e-6)
    assert is_spd(out)
