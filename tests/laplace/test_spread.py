"""The spread τ of the predictive: chosen on held-out folds, applied wherever the predictive is read, kept by
updates and persistence, and never touching the mean or the update."""

from __future__ import annotations

import math

import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.data import load_dataset
from bayesal.exceptions import InvalidInputError
from bayesal.laplace.evidence import HeldOutFold, heldout_logit_variance
from bayesal.laplace.predictive import mean_field_probs
from bayesal.laplace.spread import SPREAD_GRID, heldout_folds, select_spread
from bayesal.strategies import ExpectedLogLossReduction, make_strategy
from bayesal.strategies.base import LabeledSet


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    x = torch.tensor(ds.train_features, dtype=torch.float64)
    y = torch.tensor(ds.train_labels)
    xt = torch.tensor(ds.test_features, dtype=torch.float64)
    yt = torch.tensor(ds.test_labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order], y[order], xt, yt


def _nll(probs: torch.Tensor, y: torch.Tensor) -> float:
    return float(-torch.log(probs[torch.arange(len(y)), y]).mean())


def test_select_spread_is_the_argmax_of_the_heldout_likelihood() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(30) % 3, 3).double()
    train = torch.arange(30) >= 10
    folds = (HeldOutFold(train, 3 * torch.randn(10, 3, generator=gen, dtype=torch.float64),
                         torch.rand(20, generator=gen, dtype=torch.float64)),)
    fit = select_spread(x, y, folds, 0.5, lambda_mf=math.pi / 8, standard_errors=0.0)
    var = heldout_logit_variance(x[train], x[~train], folds[0].curvature, 0.5)
    brute = [float((y[~train] * torch.log(mean_field_probs(folds[0].logits, t * var))).sum()) / 30 for t in SPREAD_GRID]
    assert fit.spread == SPREAD_GRID[max(range(len(brute)), key=lambda i: (brute[i], -i))]
    torch.testing.assert_close(torch.tensor(fit.scores), torch.tensor(brute))
    assert select_spread(x, y, (), 0.5).spread == 1.0  # nothing to validate on: the plain Laplace predictive
    with pytest.raises(InvalidInputError, match="spread grid"):
        select_spread(x, y, folds, 0.5, grid=(-1.0,))


def test_the_default_spread_is_the_smallest_within_one_standard_error_of_the_best() -> None:
    """The one-standard-error rule, recomputed by brute force from the per-point held-out scores (rows
    outside the held-out fold score nothing, as in a fold that holds them out elsewhere)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(40) % 3, 3).double()
    held = torch.arange(40) < 20
    folds = (HeldOutFold(~held, 2 * torch.randn(20, 3, generator=gen, dtype=torch.float64),
                         torch.rand(20, generator=gen, dtype=torch.float64)),
             HeldOutFold(held, 2 * torch.randn(20, 3, generator=gen, dtype=torch.float64),
                         torch.rand(20, generator=gen, dtype=torch.float64)))
    fit = select_spread(x, y, folds, 0.5, lambda_mf=math.pi / 8)
    per_point = torch.zeros(len(SPREAD_GRID), 40, dtype=torch.float64)
    for f in folds:
        var = heldout_logit_variance(x[f.train], x[~f.train], f.curvature, 0.5)
        for i, t in enumerate(SPREAD_GRID):
            per_point[i, ~f.train] = (y[~f.train] * torch.log(mean_field_probs(f.logits, t * var))).sum(1)
    mean = per_point.mean(1)
    best = int(torch.argmax(mean))
    se = (per_point[best] - per_point).std(1) / math.sqrt(40)
    expected = min(i for i in range(len(SPREAD_GRID)) if mean[best] - mean[i] <= se[i])
    assert fit.spread == SPREAD_GRID[expected] <= SPREAD_GRID[best]
    torch.testing.assert_close(torch.tensor(fit.errors, dtype=torch.float64), se)
    assert select_spread(x, y, folds, 0.5, lambda_mf=math.pi / 8, standard_errors=0.0).spread == SPREAD_GRID[best]
    with pytest.raises(InvalidInputError, match="increasing"):
        select_spread(x, y, folds, 0.5, grid=(1.0, 0.0))
    with pytest.raises(InvalidInputError, match="standard_errors"):
        select_spread(x, y, folds, 0.5, standard_errors=-1.0)


def test_the_default_predictive_is_calibrated_where_the_plain_laplace_one_is_not(digits) -> None:
    """100 labels of digits: λ₀ from cross-validation is small, the plain Laplace predictive nearly uniform;
    the spread chosen on the same folds brings the held-out NLL to (or below) the MAP softmax's."""
    x, y, xt, yt = digits
    post = LastLayerLaplace(random_state=0).fit(x[:100], y[:100], num_classes=10)
    assert post.fitted_spread in SPREAD_GRID and post.fitted_spread < 1.0
    default = _nll(post.predict_proba(xt), yt)
    plain = _nll(post.with_spread(1.0).predict_proba(xt), yt)
    map_softmax = _nll(torch.softmax(post.logits(xt), 1), yt)
    assert default < 0.5 * plain
    assert default <= map_softmax * 1.05
    # the mean is the MAP of the head objective whatever the spread
    torch.testing.assert_close(post.predict(xt, method="mean_field"), post.logits(xt).argmax(1))


def test_spread_scales_every_predictive_quantity(digits) -> None:
    x, y, xt, _ = digits
    post = LastLayerLaplace(prior_precision=1.0, spread=0.3, random_state=0).fit(x[:60], y[:60], num_classes=10)
    plain = post.with_spread(1.0)
    assert post.fitted_spread == 0.3 and plain.fitted_spread == 1.0
    torch.testing.assert_close(post.logit_variance(xt), 0.3 * plain.logit_variance(xt))
    z, var = post.logit_moments(xt)
    torch.testing.assert_close(var, 0.3 * plain.logit_variance(xt))
    torch.testing.assert_close(post.predict_proba(xt), mean_field_probs(z, 0.3 * plain.logit_variance(xt)))
    gen = torch.Generator().manual_seed(3)
    w = post.sample_weights(4000, generator=gen) - post.mean
    emp = torch.einsum("kcd,kce->de", w, w) / (4000 * 10)
    torch.testing.assert_close(emp, 0.3 * post.covariance, atol=0.05 * float(post.covariance.diagonal().max()), rtol=0)
    # the update does not depend on the spread
    a, b = post.update(x[60:70], y[60:70]), plain.update(x[60:70], y[60:70])
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    torch.testing.assert_close(a.covariance, b.covariance, rtol=0, atol=0)
    assert a.fitted_spread == 0.3


def test_cached_logit_steps_downdate_the_predictive_variance(digits) -> None:
    x, y, xt, _ = digits
    post = LastLayerLaplace(prior_precision=1.0, spread=0.05).fit(x[:50], y[:50], num_classes=10)
    pool = post.check_features(xt)
    z, var = post.logits(pool, checked=True), post.logit_variance(pool, checked=True)
    target = torch.nn.functional.one_hot(torch.tensor(3), 10).double()
    step = post.logit_step(pool[0], target)
    z2, var2 = step.apply(pool, z, var)
    after = post.copy().absorb(step)
    torch.testing.assert_close(var2, after.logit_variance(pool, checked=True))
    torch.testing.assert_close(z2, after.logits(pool, checked=True))


def test_lookahead_reads_the_spread_through_the_mean_field_constant(digits) -> None:
    """Expected log-loss reduction on a posterior with spread τ equals the same strategy on the plain
    posterior whose mean-field constant is λ_mf·τ: the tempered predictive is softmax(z / sqrt(1 + λ_mf τ σ²))."""
    x, y, xt, _ = digits
    post = LastLayerLaplace(prior_precision=1.0, spread=0.2).fit(x[:40], y[:40], num_classes=10)
    twin = LastLayerLaplace(prior_precision=1.0, spread=1.0, lambda_mf=post.lambda_mf * 0.2).fit(
        x[:40], y[:40], num_classes=10)
    cand = xt[:120]
    labeled = LabeledSet(x[:40], y[:40])
    a = ExpectedLogLossReduction(n_reference=60).query(post, cand, labeled, 3, torch.Generator().manual_seed(0))
    b = ExpectedLogLossReduction(n_reference=60).query(twin, cand, labeled, 3, torch.Generator().manual_seed(0))
    assert a.indices.tolist() == b.indices.tolist()
    torch.testing.assert_close(a.utilities, b.utilities)
    seq = make_strategy("seq-margin@expected")
    s1 = seq.query(post, cand, labeled, 4, torch.Generator().manual_seed(0))
    assert len(set(s1.indices.tolist())) == 4


def test_spread_is_saved_and_old_states_load_with_the_plain_predictive(digits) -> None:
    x, y, xt, _ = digits
    post = LastLayerLaplace(random_state=0).fit(x[:80], y[:80], num_classes=10).update(x[80:90], y[80:90])
    state = post.state_dict()
    back = LastLayerLaplace.from_state_dict(state)
    assert back.fitted_spread == post.fitted_spread and back.spread == "cv"
    torch.testing.assert_close(back.predict_proba(xt), post.predict_proba(xt), rtol=0, atol=0)
    assert f"spread={post.spread}" in repr(post)
    old = {**state, "config": {k: v for k, v in state["config"].items() if k != "spread"}}
    del old["spread"]
    legacy = LastLayerLaplace.from_state_dict(old)
    assert legacy.fitted_spread == 1.0 and legacy.spread == 1.0


def test_given_heads_and_tiny_sets_keep_the_plain_laplace_predictive(digits) -> None:
    x, y, _, _ = digits
    head = LastLayerLaplace(prior_precision=1.0, spread=1.0).fit(x[:50], y[:50], num_classes=10)
    given = LastLayerLaplace().fit(x[:50], y[:50], weight=head.mean, bias=head.bias)
    assert given.fitted_spread == 1.0
    one = LastLayerLaplace(prior_precision=1.0).fit(x[:1], y[:1], num_classes=10)
    assert one.fitted_spread == 1.0
    assert heldout_folds(x[:1], torch.eye(10, dtype=torch.float64)[y[:1]], 1.0) == ()
    for bad in (-0.1, float("nan"), "mc"):
        with pytest.raises(InvalidInputError, match="spread"):
            LastLayerLaplace(spread=bad)
