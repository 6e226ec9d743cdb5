"""Leave-one-out predictives: the vectorised downdate against the dense computation it stands for, and
its measured error against an exact refit without the point."""

import numpy as np
import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.exceptions import InvalidInputError
from bayesal.laplace import leave_one_out, predictive_from_logits
from bayesal.laplace.update import fisher_factor


def _noisy_blobs(n=90, d=4, c=3, flip=0.15, seed=0):
    """Gaussian blobs with a share ``flip`` of labels moved to another class; returns x, noisy y, flipped mask."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g, dtype=torch.float64) * 2.0
    y = torch.arange(n) % c
    x = centers[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    flipped = torch.rand(n, generator=g) < flip
    noisy = torch.where(flipped, (y + 1 + torch.randint(0, c - 1, (n,), generator=g)) % c, y)
    return x, noisy, flipped


def _fit(x, y, hessian, **kw):
    return LastLayerLaplace(hessian=hessian, prior_precision=0.5, spread=0.7, **kw).fit(x, y, num_classes=3)


def _dense_loo(post, x, y, i):
    """The posterior without point ``i`` formed explicitly: the precision minus the point's GGN term,
    inverted, and the mean moved by one Newton step of the objective without the point (its gradient
    at the mean is minus the point's, ``−(p − y) φᵀ``)."""
    c, d = post.num_classes, post.num_features
    phi = x[i : i + 1]
    z = post.logits(phi)[0]
    p = torch.softmax(z, 0)
    target = torch.nn.functional.one_hot(y[i], c).to(x)
    if post.hessian == "shared":
        pmax = p.max()
        h = pmax * (1 - pmax) * phi.T @ phi  # the categorical curvature of the shared covariance
        prec = torch.linalg.inv(post.covariance) - h
        cov = torch.linalg.inv(prec)
        mean = post.mean + torch.outer(p - target, cov @ phi[0])  # μ − Σ₋ ∇, ∇ = −(p − y) φᵀ
        var = (phi @ cov @ phi.T).reshape(1)
    else:
        a = fisher_factor(p.unsqueeze(0))[0]  # A Aᵀ = diag p − ppᵀ
        u = torch.einsum("ck,d->kcd", a, phi[0]).reshape(c, c * d)
        cov = torch.linalg.inv(torch.linalg.inv(post.covariance) - u.T @ u)
        grad = torch.outer(p - target, phi[0]).reshape(-1)
        mean = post.mean + (cov @ grad).view(c, d)
        jac = torch.kron(torch.eye(c, dtype=x.dtype), phi)  # (C, C·D)
        var = (jac @ cov @ jac.T).unsqueeze(0)
    z_loo = phi @ mean.T + post.bias
    return predictive_from_logits(z_loo, post.fitted_spread * var, post.lambda_mf)[0]


@pytest.mark.parametrize("hessian", ["shared", "full"])
def test_downdate_equals_the_dense_computation(hessian):
    x, y, _ = _noisy_blobs()
    post = _fit(x, y, hessian)
    loo = leave_one_out(post, x, y)
    assert loo.probs.shape == (90, 3) and loo.given.shape == (90,)
    for i in (0, 7, 31, 64):
        torch.testing.assert_close(loo.probs[i], _dense_loo(post, x, y, i), atol=1e-9, rtol=0)
    torch.testing.assert_close(loo.given, loo.probs[torch.arange(90), y])
    for i in range(90):  # the doubt: the likeliest other class against the given one, a / (a + g)
        a = max(float(loo.probs[i, k]) for k in range(3) if k != int(y[i]))
        assert float(loo.alternative[i]) == pytest.approx(a, abs=1e-15)
        assert float(loo.doubt[i]) == pytest.approx(a / (a + float(loo.given[i])), abs=1e-12)


@pytest.mark.parametrize("hessian, tolerance", [("shared", 0.03), ("full", 0.02)])
def test_error_against_an_exact_refit_without_the_point(hessian, tolerance):
    x, y, flipped = _noisy_blobs(seed=1)
    post = _fit(x, y, hessian)
    loo = leave_one_out(post, x, y)
    picks = list(range(0, 90, 9)) + torch.nonzero(flipped).flatten()[:6].tolist()
    refit, in_sample = [], []
    for i in picks:
        keep = torch.ones(90, dtype=torch.bool)
        keep[i] = False
        without = _fit(x[keep], y[keep], hessian)
        refit.append(float(without.predict_proba(x[i : i + 1])[0, y[i]]))
        in_sample.append(float(post.predict_proba(x[i : i + 1])[0, y[i]]))
    refit_ = np.array(refit)
    err = np.abs(loo.given[picks].numpy() - refit_)
    # measured here: mean error 0.011 (shared), 0.008 (full); the in-sample predictive is 0.039 away (digits,
    # 300 labels: 0.04-0.05 shared, 0.003 full)
    assert err.mean() < tolerance
    assert err.mean() < 0.5 * np.abs(np.array(in_sample) - refit_).mean()


def test_doubt_against_an_exact_refit_without_the_point():
    """The label doubt of the downdate against the doubt of an exact refit without the point (same λ₀
    and spread; small N), and its ranking of the flipped labels against the refit's."""
    from sklearn.metrics import roc_auc_score

    from bayesal.laplace.loo import pairwise_doubt

    x, y, flipped = _noisy_blobs(n=60, seed=5)
    post = _fit(x, y, "shared")
    doubt = leave_one_out(post, x, y).doubt
    refit = torch.empty(60, dtype=torch.float64)
    for i in range(60):
        keep = torch.ones(60, dtype=torch.bool)
        keep[i] = False
        refit[i] = pairwise_doubt(_fit(x[keep], y[keep], "shared").predict_proba(x[i : i + 1]), y[i : i + 1])[0]
    err = (doubt - refit).abs()
    # measured here: mean 0.009, largest 0.12 (a point near the boundary between two classes)
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.2
    assert roc_auc_score(flipped, doubt) == pytest.approx(roc_auc_score(flipped, refit), abs=0.02)


def test_pairwise_doubt():
    from bayesal.laplace.loo import pairwise_doubt

    p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.5, 0.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(pairwise_doubt(p, [0, 0, 1]), torch.tensor([0.2 / 0.9, 0.5 / 0.7, 0.5], dtype=p.dtype))
    soft = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=p.dtype)
    # soft labels: the given mass Σ y_c p_c against the likeliest class with y_c = 0 (none left: no doubt)
    torch.testing.assert_close(pairwise_doubt(p, soft), torch.tensor([0.1 / 0.55, 0.5 / 0.7, 0.0], dtype=p.dtype))
    torch.testing.assert_close(pairwise_doubt(p, torch.full((3, 3), 1 / 3, dtype=p.dtype)), torch.zeros(3, dtype=p.dtype))
    two = torch.tensor([[0.3, 0.7], [0.9, 0.1]], dtype=p.dtype)  # two classes: 1 − the given label's probability
    torch.testing.assert_close(pairwise_doubt(two, [0, 0]), torch.tensor([0.7, 0.1], dtype=p.dtype))
    with pytest.raises(InvalidInputError):
        pairwise_doubt(p[0], [0])


def test_flipped_labels_are_doubted_most():
    from sklearn.metrics import roc_auc_score

    x, y, flipped = _noisy_blobs(n=150, seed=2)
    post = LastLayerLaplace(random_state=0).fit(x, y, num_classes=3)
    doubt = leave_one_out(post, x, y).doubt
    assert roc_auc_score(flipped.numpy(), doubt.numpy()) > 0.9


def test_after_updates_and_with_soft_labels():
    x, y, _ = _noisy_blobs()
    post = _fit(x[:60], y[:60], "shared").update(x[60:], y[60:])
    loo = leave_one_out(post, x, y)
    assert torch.isfinite(loo.probs).all()
    torch.testing.assert_close(loo.probs.sum(1), torch.ones(90, dtype=torch.float64))
    soft = torch.nn.functional.one_hot(y, 3).to(x)
    torch.testing.assert_close(leave_one_out(post, x, soft).given, loo.given)


def test_input_checks():
    x, y, _ = _noisy_blobs()
    post = _fit(x, y, "shared")
    with pytest.raises(InvalidInputError):
        leave_one_out(post, x[:, :2], y)
    with pytest.raises(InvalidInputError):
        leave_one_out(post, x, y[:10])


def test_cache_follows_updates_as_the_full_computation():
    from bayesal.laplace import LeaveOneOutCache

    x, y, _ = _noisy_blobs(n=120, seed=3)
    post = _fit(x[:80], y[:80], "shared", exact_until=0)
    cache = LeaveOneOutCache(post, x[:80], y[:80])
    for i in range(80, 90):
        new = cache.add(x[i], int(y[i]))
        post = post.update(x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(new.mean, post.mean, atol=1e-9, rtol=0)
    assert len(cache) == 90 and cache.posterior is new
    want = leave_one_out(post, x[:90], y[:90])
    got = cache.result()
    torch.testing.assert_close(got.probs, want.probs, atol=1e-9, rtol=0)
    torch.testing.assert_close(got.variance, want.variance, atol=1e-9, rtol=0)
    # the re-ranking after the answers: the same doubts, so the same order, as the ranking from scratch
    torch.testing.assert_close(got.doubt, want.doubt, atol=1e-9, rtol=0)
    gaps = want.doubt.sort().values.diff().abs().min()
    assert gaps > 1e-8 and torch.equal(torch.argsort(got.doubt), torch.argsort(want.doubt))
    soft = torch.nn.functional.one_hot(y[90], 3).to(x)
    cache.add(x[90], soft)
    assert len(cache) == 91
    with pytest.raises(InvalidInputError):
        LeaveOneOutCache(_fit(x, y, "full"), x, y)
    with pytest.raises(InvalidInputError):
        cache.add(x[91:93], 0)
