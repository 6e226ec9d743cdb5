"""The early phase: with few labels an update refits the head exactly, so it is the exact retrain of the
head objective; past ``exact_until`` points the Newton update takes over."""

from __future__ import annotations

import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.laplace.head import fit_map_head


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(5)
    c, d = 4, 12
    centers = 2.0 * torch.randn(c, d, generator=gen, dtype=torch.float64)
    y = torch.arange(200) % c
    x = centers[y] + torch.randn(200, d, generator=gen, dtype=torch.float64)
    return x, y, c


def _close(a, b):
    """Equal up to the head solver's tolerance (a relative gradient of 1e-5)."""
    assert float((a - b).abs().max()) <= 2e-3 * float(b.abs().max())


def _exact(x, y, c, lam, init):
    fit = fit_map_head(x, torch.nn.functional.one_hot(y, c).double(), lam, init=init)
    return fit.weight, fit.bias


def test_an_early_update_is_the_exact_retrain(data):
    x, y, c = data
    post = LastLayerLaplace(prior_precision=0.5, random_state=0).fit(x[:10], y[:10], num_classes=c)
    upd = post.update(x[10:20], y[10:20])
    w, b = _exact(x[:20], y[:20], c, 0.5, (post.mean, post.bias))
    _close(upd.mean, w)
    _close(upd.bias, b)
    newton = post.with_update_options(exact_until=0).update(x[10:20], y[10:20])
    assert float((newton.mean - w).abs().max()) > 10 * float((upd.mean - w).abs().max())
    # the covariance is the update's either way
    torch.testing.assert_close(upd.covariance, newton.covariance, rtol=0, atol=0)


def test_the_phase_ends_past_exact_until_and_stays_over(data):
    x, y, c = data
    post = LastLayerLaplace(prior_precision=0.5, exact_until=30).fit(x[:20], y[:20], num_classes=c)
    plain = post.with_update_options(exact_until=0)
    a = post.update(x[20:40], y[20:40])  # 40 > 30: Newton
    torch.testing.assert_close(a.mean, plain.update(x[20:40], y[20:40]).mean, rtol=0, atol=0)
    b = a.update(x[40:41], y[40:41])
    torch.testing.assert_close(b.mean, plain.update(x[20:40], y[20:40]).update(x[40:41], y[40:41]).mean, rtol=0, atol=0)
    assert LastLayerLaplace(prior_precision=0.5, exact_until=10).fit(x[:20], y[:20]).state_dict()["retained"] is None


def test_chained_early_updates_and_a_correction_stay_exact(data):
    x, y, c = data
    post = LastLayerLaplace(prior_precision=0.5).fit(x[:8], y[:8], num_classes=c)
    for j in range(8, 16):
        post = post.update(x[j : j + 1], y[j : j + 1])
    labels = y[:16].clone()
    w, _ = _exact(x[:16], labels, c, 0.5, None)
    _close(post.mean, w)
    new = (int(labels[3]) + 1) % c
    fixed = post.relabel(x[3], int(labels[3]), new)
    labels[3] = new
    w2, _ = _exact(x[:16], labels, c, 0.5, None)
    _close(fixed.mean, w2)


def test_the_rows_are_saved_and_a_simulated_step_ends_the_phase(data):
    x, y, c = data
    post = LastLayerLaplace(prior_precision=0.5).fit(x[:10], y[:10], num_classes=c).update(x[10:12], y[10:12])
    back = LastLayerLaplace.from_state_dict(post.state_dict())
    torch.testing.assert_close(back.update(x[12:15], y[12:15]).mean, post.update(x[12:15], y[12:15]).mean,
                               rtol=0, atol=0)
    stepped = post.copy().absorb(post.logit_step(post.check_features(x[20])[0], torch.eye(c, dtype=x.dtype)[1]))
    assert stepped.state_dict()["retained"] is None


def test_the_papers_update_and_other_step_sizes_have_no_early_phase(data):
    x, y, c = data
    post = LastLayerLaplace(prior_precision=0.5).fit(x[:10], y[:10], num_classes=c)
    plain = post.with_update_options(exact_until=0)
    torch.testing.assert_close(post.update(x[10:20], y[10:20], gamma=2.0).mean,
                               plain.update(x[10:20], y[10:20], gamma=2.0).mean, rtol=0, atol=0)
    from bayesal.laplace import PAPER_OPTIONS
    assert PAPER_OPTIONS["exact_until"] == 0
