"""The posterior's public fast paths and its ownership of the update options, against dense references."""

import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.exceptions import InvalidInputError, NotFittedError
from bayesal.laplace import FullLaplace, SharedLaplace


def _fitted(toy, **kw):
    x, y, w, b = toy
    return LastLayerLaplace(**kw).fit(x[:30], y[:30], weight=w, bias=b)


def test_gamma_is_validated_stored_and_used(toy):
    x, y, *_ = toy
    for bad in (-1.0, float("nan"), float("inf"), "10", True):
        with pytest.raises(InvalidInputError, match="gamma"):
            LastLayerLaplace(gamma=bad)
    post = _fitted(toy, gamma=3.0)
    assert post.gamma == 3.0
    # update(gamma=None) is update(gamma=posterior.gamma); an explicit gamma overrides it
    torch.testing.assert_close(post.update(x[30:33], y[30:33]).mean_, post.update(x[30:33], y[30:33], gamma=3.0).mean_,
                               rtol=0, atol=0)
    assert not torch.allclose(post.update(x[30:33], y[30:33]).mean_, post.update(x[30:33], y[30:33], gamma=10.0).mean_)
    with pytest.raises(InvalidInputError, match="gamma"):
        post.update(x[30:33], y[30:33], gamma=-2.0)
    again = LastLayerLaplace.from_state_dict(post.state_dict())
    assert again.gamma == 3.0
    assert post.with_update_options(gamma=1.0).gamma == 1.0 and post.gamma == 3.0
    assert post.with_update_options().gamma == 3.0


def test_state_without_gamma_loads_with_default(toy):
    state = _fitted(toy).state_dict()
    del state["config"]["gamma"]
    assert LastLayerLaplace.from_state_dict(state).gamma == LastLayerLaplace().gamma


def test_public_views(toy):
    post = _fitted(toy)
    assert (post.num_classes, post.num_features) == (3, 5)
    assert post.is_fitted and not LastLayerLaplace().is_fitted
    assert post.covariance is post.covariance_ and isinstance(post, SharedLaplace)
    assert isinstance(_fitted(toy, hessian="full"), FullLaplace)
    with pytest.raises(NotFittedError, match="not fitted"):
        _ = LastLayerLaplace().num_classes


def test_checked_fast_paths_equal_checked_public_ones(toy):
    x, *_ = toy
    for hessian in ("shared", "full"):
        post = _fitted(toy, hessian=hessian)
        xc = post.check_features(x.float())
        assert xc.dtype == torch.float64
        torch.testing.assert_close(post.logits(xc, checked=True), post.logits(x.float()), rtol=0, atol=0)
        torch.testing.assert_close(post.logit_variance(xc, checked=True), post.logit_variance(x.float()), rtol=0, atol=0)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        post.check_features(bad)


def test_covariance_product(toy):
    x, *_ = toy
    post = _fitted(toy)
    torch.testing.assert_close(post.covariance_product(x), x @ post.covariance_, rtol=0, atol=1e-14)
    torch.testing.assert_close(post.covariance_product(x[0]), post.covariance_ @ x[0], rtol=0, atol=1e-14)
    with pytest.raises(InvalidInputError, match="hessian='shared'"):
        _fitted(toy, hessian="full").covariance_product(x)


@pytest.mark.parametrize("curvature", ["gaussian", "categorical"])
def test_logit_step_equals_reinference(toy, curvature):
    x, *_ = toy
    post = _fitted(toy, curvature=curvature, gamma=4.0)
    pool, ref = x[30:], x[:10]
    z, v = post.logits(pool), post.logit_variance(pool)
    k = post.covariance_product(ref) @ pool.T
    target = torch.tensor([0.1, 0.7, 0.2], dtype=torch.float64)
    step = post.logit_step(pool[3], target)
    z2, v2 = step.apply(pool, z, v)
    new = post.update(pool[3:4], target[None])
    torch.testing.assert_close(z2, new.logits(pool), atol=1e-10, rtol=0)
    torch.testing.assert_close(v2, new.logit_variance(pool), atol=1e-10, rtol=0)
    torch.testing.assert_close(step.downdate_kernel(k, ref, pool), ref @ new.covariance_ @ pool.T, atol=1e-10, rtol=0)
    assert step.gamma == 4.0


@pytest.mark.parametrize("hessian", ["shared", "full"])
def test_relabel_is_the_swapped_likelihood_newton_step(toy, hessian):
    x, *_ = toy
    post = _fitted(toy, hessian=hessian, gamma=2.0)
    out = post.relabel(x[40], 0, 2)
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    cov = post.covariance_ if hessian == "shared" else None
    if hessian == "shared":
        expected = post.mean_ + 2.0 * torch.outer(diff, cov @ x[40])
    else:
        expected = post.mean_ + 2.0 * (post.covariance_ @ torch.outer(diff, x[40]).reshape(-1)).reshape(3, -1)
    torch.testing.assert_close(out.mean_, expected, atol=1e-12, rtol=0)
    assert out.covariance_ is post.covariance_ and torch.equal(post.mean_, _fitted(toy, hessian=hessian).mean_)
    # swapping back restores the mean
    torch.testing.assert_close(out.relabel(x[40], 2, 0).mean_, post.mean_, atol=1e-12, rtol=0)
    with pytest.raises(InvalidInputError, match="class index"):
        post.relabel(x[40], 0, 3)
