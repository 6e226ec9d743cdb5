"""The likelihood's temperature T of the predictive: chosen with the spread on held-out folds (once the
labels are enough), read by every predictive and strategy, kept by updates and persistence, and never
touching the mean or the update."""

from __future__ import annotations

import math

import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.data import load_dataset
from bayesal.exceptions import InvalidInputError
from bayesal.laplace.evidence import HeldOutFold, cross_validate_prior, heldout_logit_variance
from bayesal.laplace.predictive import mean_field_probs
from bayesal.laplace.spread import (
    MIN_ROWS_PER_CLASS_FOR_TEMPERATURE,
    SPREAD_GRID,
    TEMPERATURE_GRID,
    select_spread,
)
from bayesal.strategies import BALD, EntropySampling, LabeledSet, MarginSampling, Sequential
from bayesal.strategies.lookahead import ExpectedLogLossReduction
from bayesal.utils.rng import as_generator


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    x = torch.tensor(ds.train_features, dtype=torch.float64)
    y = torch.tensor(ds.train_labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order], y[order], torch.tensor(ds.test_features, dtype=torch.float64)


def test_the_temperature_is_the_argmax_at_the_chosen_spread() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(40) % 3, 3).double()
    held = torch.arange(40) < 20
    folds = tuple(HeldOutFold(train, 4 * torch.randn(20, 3, generator=gen, dtype=torch.float64),
                              torch.rand(20, generator=gen, dtype=torch.float64)) for train in (~held, held))
    plain = select_spread(x, y, folds, 0.5)
    fit = select_spread(x, y, folds, 0.5, temperatures=TEMPERATURE_GRID)
    assert fit.spread == plain.spread and fit.scores == plain.scores  # the spread is chosen as before
    lam = math.pi / 8

    def score(t: float) -> float:
        total = 0.0
        for f in folds:
            var = heldout_logit_variance(x[f.train], x[~f.train], f.curvature, 0.5)
            p = mean_field_probs(f.logits, fit.spread * var, lam, t)
            total += float((y[~f.train] * torch.log(p)).sum())
        return total

    brute = [score(t) for t in TEMPERATURE_GRID]
    assert fit.temperature == TEMPERATURE_GRID[max(range(len(brute)), key=brute.__getitem__)]
    assert plain.temperature == 1.0
    assert select_spread(x, y, (), 0.5, temperatures=TEMPERATURE_GRID).temperature == 1.0
    for bad in ((), (0.0,), (float("inf"),)):
        with pytest.raises(InvalidInputError, match="temperatures"):
            select_spread(x, y, folds, 0.5, temperatures=bad)


def test_mean_field_with_a_temperature_is_the_tempered_likelihood() -> None:
    """softmax(z / sqrt(T² + λσ²)) is the mean field of softmax(z/T) under z ~ N(μ, σ²): the plain mean
    field of the logits μ/T with variances σ²/T²; T = 1 gives the plain formula bit for bit."""
    gen = torch.Generator().manual_seed(0)
    z, v = 3 * torch.randn(50, 4, generator=gen, dtype=torch.float64), torch.rand(50, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(mean_field_probs(z, v, 0.4, 2.5), mean_field_probs(z / 2.5, v / 2.5**2, 0.4))
    assert torch.equal(mean_field_probs(z, v, 0.4, 1.0), torch.softmax(z / torch.sqrt(1.0 + 0.4 * v.unsqueeze(1)), 1))


def test_fit_chooses_the_temperature_on_the_folds_only_with_enough_labels(digits) -> None:
    x, y, _ = digits
    n = MIN_ROWS_PER_CLASS_FOR_TEMPERATURE * 10
    few = LastLayerLaplace(random_state=0).fit(x[: n - 1], y[: n - 1], num_classes=10)
    assert few.fitted_temperature == 1.0
    post = LastLayerLaplace(random_state=0).fit(x[:n], y[:n], num_classes=10)
    t = torch.nn.functional.one_hot(y[:n], 10).double()
    sel = cross_validate_prior(x[:n], t, generator=as_generator(0), keep_folds=True)  # the folds that chose λ₀
    assert sel.prior_precision == post.fitted_prior_precision
    ref = select_spread(x[:n], t, sel.folds, sel.prior_precision, temperatures=TEMPERATURE_GRID)
    assert (post.fitted_spread, post.fitted_temperature) == (ref.spread, ref.temperature)
    assert post.fitted_temperature in TEMPERATURE_GRID
    assert "T=" in repr(post)
    fixed = LastLayerLaplace(random_state=0, spread=0.5).fit(x[:n], y[:n], num_classes=10)
    assert fixed.fitted_temperature == 1.0  # a spread given as a number: no temperature


def test_the_temperature_enters_every_predictive_but_not_the_update(digits) -> None:
    x, y, xt = digits
    base = LastLayerLaplace(prior_precision=1.0, spread=0.3).fit(x[:60], y[:60], num_classes=10)
    post = base.with_spread(0.3, temperature=1.7)
    assert post.fitted_temperature == 1.7 and base.fitted_temperature == 1.0
    z, var = post.logits(xt), post.logit_variance(xt)
    torch.testing.assert_close(post.predict_proba(xt), mean_field_probs(z, var, post.lambda_mf, 1.7))
    mc = post.predict_proba(xt[:20], method="mc", n_samples=20000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mc, mean_field_probs(z[:20], var[:20], post.lambda_mf, 1.7), atol=0.05, rtol=0)
    samples = post.sample_logits(xt[:5], 10, generator=torch.Generator().manual_seed(2))
    raw = base.sample_logits(xt[:5], 10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(samples, raw / 1.7)
    a, b = post.update(x[60:70], y[60:70]), base.update(x[60:70], y[60:70])
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    torch.testing.assert_close(a.covariance, b.covariance, rtol=0, atol=0)
    assert a.fitted_temperature == 1.7
    with pytest.raises(InvalidInputError, match="temperature"):
        base.with_spread(0.3, temperature=0.0)


def test_strategies_score_the_tempered_predictive(digits) -> None:
    """Margin, entropy and BALD read the same probabilities predict_proba gives; sequential selection and
    the look-ahead equal the same strategy on a twin whose logits carry the temperature (z/T, σ²/T²)."""
    x, y, xt = digits
    post = LastLayerLaplace(prior_precision=1.0, spread=0.5).fit(x[:40], y[:40], num_classes=10).with_spread(0.5, 0.6)
    cand = xt[:150]
    p = post.predict_proba(cand)
    top2 = p.topk(2, dim=1).values
    torch.testing.assert_close(MarginSampling().scores(post, cand, None), 1 - (top2[:, 0] - top2[:, 1]))
    torch.testing.assert_close(EntropySampling().scores(post, cand, None), -(p * p.log()).sum(1))
    gen = torch.Generator().manual_seed(0)
    bald = BALD(n_samples=64).scores(post, cand[:10], gen)
    s = post.sample_logits(cand[:10], 64, generator=torch.Generator().manual_seed(0))
    q = torch.softmax(s, -1)
    ent = lambda r: -(r * r.clamp_min(1e-300).log()).sum(-1)  # noqa: E731
    torch.testing.assert_close(bald, (ent(q.mean(0)) - ent(q).mean(0)).clamp_min(0))
    labeled = LabeledSet(x[:40], y[:40])
    for strategy in (Sequential(MarginSampling(), prune=True), Sequential(MarginSampling(), prune=False),
                     ExpectedLogLossReduction(n_reference=50)):
        a = strategy.query(post, cand, labeled, 4, torch.Generator().manual_seed(0))
        b = strategy.query(post.with_spread(0.5), cand, labeled, 4, torch.Generator().manual_seed(0))
        assert len(set(a.indices.tolist())) == 4
        assert not torch.equal(a.utilities, b.utilities)  # the temperature changes what is scored


def test_the_temperature_is_saved_and_old_states_load_without_one(digits) -> None:
    x, y, xt = digits
    post = LastLayerLaplace(prior_precision=1.0, spread=0.4).fit(x[:50], y[:50], num_classes=10).with_spread(0.4, 0.8)
    state = post.state_dict()
    back = LastLayerLaplace.from_state_dict(state)
    assert back.fitted_temperature == 0.8
    torch.testing.assert_close(back.predict_proba(xt), post.predict_proba(xt), rtol=0, atol=0)
    old = {k: v for k, v in state.items() if k != "temperature"}
    assert LastLayerLaplace.from_state_dict(old).fitted_temperature == 1.0
    assert SPREAD_GRID[0] == 0.0 and 1.0 in TEMPERATURE_GRID
