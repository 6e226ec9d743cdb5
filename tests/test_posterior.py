"""Fitting, predictive and persistence of the last-layer Laplace posterior (SPEC §2–3)."""

import math

import pytest
import torch

from bayesal import HeadConfig, LastLayerLaplace
from bayesal.baselines import MCReweighting, finetune_head, first_order_update


def test_fit_trains_head_when_no_weight_given(toy):
    x, y, *_ = toy
    post = LastLayerLaplace(head_config=HeadConfig(epochs=50), random_state=0).fit(x, y)
    acc = (post.predict(x) == y).double().mean()
    assert acc > 0.9
    again = LastLayerLaplace(head_config=HeadConfig(epochs=50), random_state=0).fit(x, y)
    torch.testing.assert_close(post.mean_, again.mean_)  # seeded → reproducible


def test_from_linear(toy):
    x, y, w, b = toy
    lin = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    post = LastLayerLaplace.from_linear(lin, x, y)
    torch.testing.assert_close(post.mean_, w)
    torch.testing.assert_close(post.logits(x), lin(x).detach())


def test_mean_field_matches_formula(toy):
    x, y, w, b = toy
    post = LastLayerLaplace(lambda_mf=0.4).fit(x, y, weight=w, bias=b)
    var = torch.einsum("nd,de,ne->n", x, post.covariance_, x)
    expected = torch.softmax((x @ w.T + b) / torch.sqrt(1 + 0.4 * var)[:, None], 1)
    torch.testing.assert_close(post.predict_proba(x), expected)
    torch.testing.assert_close(post.logit_variance(x), var)


@pytest.mark.parametrize("hessian", ["shared", "full"])
def test_mc_converges_to_exact_expectation(toy, hessian):
    """MC predictive converges as K grows; with λ_mf=π/8 it is close to mean-field (probit approx.)."""
    x, y, w, b = toy
    post = LastLayerLaplace(prior_precision=0.5, hessian=hessian).fit(x[:30], y[:30], weight=w, bias=b)
    g = torch.Generator().manual_seed(0)
    ref = post.predict_proba(x[:10], method="mc", n_samples=200_000, generator=g)
    errs = [
        (post.predict_proba(x[:10], method="mc", n_samples=k, generator=g) - ref).abs().max().item()
        for k in (10, 100, 10_000)
    ]
    assert errs[2] < errs[0] and errs[2] < 0.02
    mf = post.predict_proba(x[:10])
    assert (mf - ref).abs().max() < 0.1


def test_chunked_predictive_equals_unchunked(toy):
    x, y, w, b = toy
    big = LastLayerLaplace().fit(x, y, weight=w, bias=b)
    small = LastLayerLaplace(chunk_size=7).fit(x, y, weight=w, bias=b)
    torch.testing.assert_close(big.predict_proba(x), small.predict_proba(x))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert big.predict_proba(x, method="mc", n_samples=50, generator=g1).shape == (60, 3)
    assert small.predict_proba(x, method="mc", n_samples=50, generator=g2).shape == (60, 3)


def test_large_pool_float32_features_scores_in_chunks():
    d, c = 384, 10
    g = torch.Generator().manual_seed(0)
    post = LastLayerLaplace(chunk_size=4096).fit(
        torch.randn(50, d, generator=g), torch.arange(50) % c, weight=torch.randn(c, d, generator=g) * 0.01
    )
    pool = torch.randn(20_000, d, generator=g)  # float32 pool, converted per chunk
    probs = post.predict_proba(pool)
    assert probs.shape == (20_000, c) and probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(1), torch.ones(20_000, dtype=torch.float64))


def test_categorical_curvature_uses_pmax(toy):
    x, y, w, b = toy
    post = LastLayerLaplace(curvature="categorical").fit(x, y, weight=w, bias=b)
    p = torch.softmax(x @ w.T + b, 1).max(1).values
    prec = torch.eye(5, dtype=torch.float64) + (x * (p * (1 - p))[:, None]).T @ x
    torch.testing.assert_close(post.covariance_, torch.linalg.inv(prec), atol=1e-10, rtol=0)


def test_state_dict_roundtrip(toy, tmp_path):
    x, y, w, b = toy
    post = LastLayerLaplace(hessian="full", lambda_mf=1.0).fit(x, y, weight=w, bias=b).update(x[:3], y[:3])
    torch.save(post.state_dict(), tmp_path / "p.pt")
    back = LastLayerLaplace.from_state_dict(torch.load(tmp_path / "p.pt"))
    torch.testing.assert_close(back.predict_proba(x), post.predict_proba(x))
    assert back.n_updates_ == 3
    with pytest.raises(ValueError, match="malformed"):
        LastLayerLaplace.from_state_dict({"config": {}})


def test_sample_weights_have_posterior_moments(toy):
    x, y, w, b = toy
    post = LastLayerLaplace(prior_precision=1.0).fit(x[:5], y[:5], weight=w, bias=b)
    s = post.sample_weights(40_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.mean(0), w, atol=0.03, rtol=0)
    emp = torch.cov(s[:, 0, :].T)
    torch.testing.assert_close(emp, post.covariance_, atol=0.03, rtol=0)


def test_bad_construction_and_input(toy):
    x, y, w, b = toy
    with pytest.raises(ValueError, match="prior_precision"):
        LastLayerLaplace(prior_precision=0)
    with pytest.raises(ValueError, match="curvature"):
        LastLayerLaplace(curvature="laplace")
    with pytest.raises(RuntimeError, match="not fitted"):
        LastLayerLaplace().predict_proba(x)
    with pytest.raises(ValueError, match="shape"):
        LastLayerLaplace().fit(x, y, weight=w[:, :2])
    with pytest.raises(ValueError, match="at least 2 classes"):
        LastLayerLaplace().fit(x, torch.zeros(60, dtype=torch.long))
    bad = x.clone()
    bad[4, 1] = math.inf
    with pytest.raises(ValueError, match="row 4"):
        LastLayerLaplace().fit(bad, y, weight=w)


def test_baselines_move_towards_labels(toy):
    x, y, w, b = toy
    post = LastLayerLaplace().fit(x[:30], y[:30], weight=w, bias=b)
    xn, yn = x[30:], y[30:]

    def nll(probs):
        return -torch.log(probs[torch.arange(len(yn)), yn]).mean()

    base = nll(post.predict_proba(xn))
    assert nll(first_order_update(post, xn, yn, gamma=1e-2).predict_proba(xn)) < base
    assert nll(post.update(xn, yn, gamma=1.0).predict_proba(xn)) < base
    mc = MCReweighting(post, n_samples=500, gamma=1e-1, generator=torch.Generator().manual_seed(0))
    before = nll(mc.predict_proba(xn))
    mc.update(xn, yn)
    assert nll(mc.predict_proba(xn)) < before
    assert torch.isclose(mc.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    wf, bf = finetune_head(post, xn, yn, epochs=5, generator=torch.Generator().manual_seed(0))
    assert nll(torch.softmax(xn @ wf.T + bf, 1)) < nll(torch.softmax(xn @ w.T + b, 1))
